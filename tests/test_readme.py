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


DOCS = sorted((ROOT / "docs").glob("*.md"))


def _section(text: str, start: str, end: str | None = None) -> str:
    body = text[text.index(start) :]
    return body[: body.index(end)] if end else body


def test_readme_links_every_docs_page_and_each_links_back():
    """The README's contents name every page of docs/; each page opens with a title and a link
    back to the README; every relative link of the README and the pages resolves."""
    assert len(DOCS) >= 8
    contents = _section(README, "## Contents", "## Set-up")
    for page in DOCS:
        assert f"](docs/{page.name})" in contents, page.name
        head = page.read_text().splitlines()[:3]
        assert head[0].startswith("# "), page.name
        assert "](../README.md)" in "\n".join(head), page.name
    for page in [ROOT / "README.md", *DOCS]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if not target.startswith(("http://", "https://")):
                assert (page.parent / target).exists(), f"{page.name}: {target}"


def _objective_configs() -> dict[str, str]:
    """``experiments/*.yaml`` that train an objective of ``lightning_pref.objectives``: the file
    name -> the class name."""
    import yaml

    found = {}
    for path in sorted((ROOT / "experiments").glob("*.yaml")):
        model = yaml.safe_load(path.read_text()).get("model") or {}
        objective = (model.get("init_args") or {}).get("objective") or {}
        class_path = objective.get("class_path", "") if isinstance(objective, dict) else objective
        if class_path.startswith("lightning_pref.objectives."):
            found[path.name] = class_path.rsplit(".", 1)[-1]
    return found


def test_objectives_table_names_every_config_under_its_class():
    """Each objective config of experiments/ is in the row of the class it trains (TailorPO-G's
    in the TailorPO + reward guidance row), and every config the table names exists."""
    rows = [
        line.split("|")[1:-1]
        for line in _section(README, "## Objectives").splitlines()
        if line.startswith("| `")
    ]
    by_class: dict[str, set[str]] = {}
    for cells in rows:
        name = re.findall(r"`(\w+)`", cells[0])[0]
        configs = set(re.findall(r"`([\w.]+\.yaml)`", cells[-1]))
        by_class.setdefault(name, set()).update(configs)
        for config in configs:
            assert (ROOT / "experiments" / config).exists(), config
    configs = _objective_configs()
    assert len(configs) >= 30
    misplaced = {c: k for c, k in configs.items() if c not in by_class.get(k, set())}
    assert not misplaced, misplaced


def test_leaderboard_table_has_every_minipick_method():
    """The README keeps the v2 leaderboard with a row for each method's MiniPick config, with the
    gold, fidelity, taste and diversity columns."""
    table = _section(README, "### Every method", "### MiniPick-Flow")
    header = next(line for line in table.splitlines() if line.startswith("| method"))
    for column in ("gold win rate", "fidelity", "taste", "diversity"):
        assert column in header, column
    methods = [
        c for c in _objective_configs() if c.endswith("_minipick.yaml") and "_flow_" not in c
    ]
    assert len(methods) == 14
    missing = [c for c in methods if f"(`{c}`)" not in table]
    assert not missing, missing
    assert len([line for line in table.splitlines() if line.startswith("| ") and "`" in line]) == 14


def test_minipick_flow_table_has_every_flow_config():
    """The MiniPick-Flow rows (issue 23): one per ``*_flow_minipick.yaml``, measured columns."""
    table = _section(README, "### MiniPick-Flow", "## Objectives")
    header = next(line for line in table.splitlines() if line.startswith("| method"))
    for column in ("gold win rate", "fidelity", "taste", "diversity", "fit time"):
        assert column in header, column
    configs = [c for c in _objective_configs() if c.endswith("_flow_minipick.yaml")]
    assert len(configs) >= 4
    missing = [c for c in configs if f"(`{c}`)" not in table]
    assert not missing, missing
