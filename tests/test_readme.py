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


def test_ci_fails_when_any_step_of_the_test_command_fails(tmp_path):
    """The test command is an && list, and `set -e` ignores a failure inside one: .ci/run must
    return the list's status. Run its test section with `ruff` failing and everything else ok."""
    import subprocess

    section = CI[CI.index("# --- README: test ---") :]
    fake = tmp_path / "bin"
    fake.mkdir()
    for name, code in (("ruff", 1), ("python", 0)):
        (fake / name).write_text(f"#!/bin/sh\nexit {code}\n")
        (fake / name).chmod(0o755)
    script = "set -euo pipefail\nstart=$(date +%s)\n" + section
    env = {"PATH": f"{fake}:/usr/bin:/bin"}
    assert subprocess.run(["bash", "-c", script], env=env, capture_output=True).returncode == 1


def test_readme_configs_exist():
    for path in re.findall(r"--config (\S+\.yaml)", README):
        assert (ROOT / path).exists(), path
