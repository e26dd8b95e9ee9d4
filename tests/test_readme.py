"""The README's commands are the ones CI runs, and each of them is exercised by a test."""

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()
CI = (ROOT / ".ci" / "run").read_text()


def bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", README, flags=re.S)


def test_ci_runs_the_readme_install_and_test_commands():
    install = 'pip install "torch==2.13.0" -e ".[dev]"'
    test = (
        "ruff check . && ruff format --check . && python -m pytest && python -m pytest -m minipick"
    )
    blocks = bash_blocks()
    assert any(install in b for b in blocks)
    assert any(b.strip() == test for b in blocks)
    assert install in CI and test in CI


def test_readme_configs_exist():
    for path in re.findall(r"--config (\S+\.yaml)", README):
        assert (ROOT / path).exists(), path
