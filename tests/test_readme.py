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
    """Every config a command of the README or of docs/ names exists."""
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for path in re.findall(r"--config (\S+\.yaml)", page.read_text()):
            assert (ROOT / path).exists(), f"{page.name}: {path}"


def test_readme_is_short_and_lists_every_objective():
    """Under 300 lines, with every objective class of ``lightning_pref.objectives`` in its table."""
    import lightning_pref.objectives as objectives
    from lightning_pref.objectives.base import PreferenceObjective

    assert len(README.splitlines()) < 300
    classes = [
        name
        for name in objectives.__all__
        if isinstance(getattr(objectives, name), type)
        and getattr(objectives, name).__module__ != "lightning_pref.objectives.base"
    ]
    assert len(classes) >= 13  # TailorPO-G is TailorPO with a guided sampler
    table = README[README.index("## Objectives") :]
    missing = [name for name in classes if f"| `{name}`" not in table]
    assert not missing, missing
    assert PreferenceObjective  # the base classes are not methods
