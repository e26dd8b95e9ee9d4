"""docker/Dockerfile.{cpu,cuda}: install lines, ENV and CMD checked against the repo (no daemon).

The images are not built in CI (no Docker daemon there), so these tests check what would drift:
the torch pin of every ``pip install`` against the README's install command, that the package is
installed with its ``[dev]`` extra (so setup.cfg's pins are what gets installed), that the CMD
runs commands the README shows, and that the ENV variable is the one ``lightning_pref`` reads.
"""

import configparser
import json
import re
import shlex
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from lightning_pref.minipick.store import default_data_dir

ROOT = Path(__file__).parents[1]
DOCKERFILES = [ROOT / "docker" / "Dockerfile.cpu", ROOT / "docker" / "Dockerfile.cuda"]
README = (ROOT / "README.md").read_text()
OPTIONS_WITH_VALUE = {
    "-i",
    "--index-url",
    "--extra-index-url",
    "-f",
    "--find-links",
    "-c",
    "--constraint",
    "-r",
    "--requirement",
    "--target",
    "--prefix",
}
TOOLING = {"pip", "setuptools", "wheel"}  # may be upgraded by hand, pinned or not


def instructions(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of a Dockerfile, continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue  # Docker drops comment lines, also inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, args = (pending + stripped).partition(" ")
        result.append((keyword.upper(), args.strip()))
        pending = ""
    return result


def pip_installs(text: str) -> list[list[str]]:
    """The arguments after ``pip install`` of every pip call in the RUN instructions."""
    calls = []
    for keyword, args in instructions(text):
        if keyword != "RUN":
            continue
        for command in re.split(r"&&|\|\||;", args):
            words = shlex.split(command)
            for i in range(len(words) - 1):
                if words[i].endswith("pip") and words[i + 1] == "install":
                    calls.append(words[i + 2 :])
    return calls


def split_install(words: list[str]) -> tuple[list[str], list[str]]:
    """``(requirements, local targets)`` of one ``pip install`` call (``.[dev]`` is a target)."""
    requirements, targets = [], []
    skip = False
    for word in words:
        if skip:
            skip = False
        elif word in OPTIONS_WITH_VALUE:
            skip = True
        elif word.startswith("-"):
            continue  # -e, --upgrade, ...: -e's value is a target, caught below
        elif word.startswith((".", "/")):
            targets.append(word)
        else:
            requirements.append(word)
    return requirements, targets


def readme_torch_pin() -> str:
    match = re.search(r'pip install "torch==([^"]+)" -e "\.\[dev\]"', README)
    assert match, "README.md lost its install command"
    return match.group(1)


def setup_pins() -> dict[str, str]:
    """``name -> version`` of every ``==`` pin in install_requires and the dev extra."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = cfg["options"]["install_requires"].splitlines()
    lines += cfg["options.extras_require"]["dev"].splitlines()
    pins = {}
    for line in filter(None, (x.strip() for x in lines)):
        requirement = Requirement(line)
        exact = [s.version for s in requirement.specifier if s.operator == "=="]
        if exact:
            pins[requirement.name.lower()] = exact[0]
    return pins


def install_problems(text: str, torch_pin: str, pins: dict[str, str]) -> list[str]:
    """Everything that would make a Dockerfile install other versions than the repo pins."""
    problems = []
    calls = pip_installs(text)
    if not calls:
        return ["no pip install"]
    dev_target = False
    for call in calls:
        requirements, targets = split_install(call)
        dev_target |= any(re.fullmatch(r"\.\[(.*,)?dev(,.*)?\]", t) for t in targets)
        for line in requirements:
            requirement = Requirement(line)
            name = requirement.name.lower()
            if name in TOOLING:
                continue
            if name == "torch" and str(requirement.specifier) != f"=={torch_pin}":
                problems.append(f"{line}: the README installs torch=={torch_pin}")
            elif name not in pins:
                problems.append(f"{line}: not pinned in setup.cfg (install the package instead)")
            elif str(requirement.specifier) != f"=={pins[name]}":
                problems.append(f"{line}: setup.cfg pins {name}=={pins[name]}")
    if not dev_target:
        problems.append('the package itself is not installed with its dev extra (".[dev]")')
    return problems


def env_of(text: str) -> dict[str, str]:
    env = {}
    for keyword, args in instructions(text):
        if keyword == "ENV":
            env.update(word.split("=", 1) for word in shlex.split(args))
    return env


def last(text: str, keyword: str) -> str:
    return [args for key, args in instructions(text) if key == keyword][-1]


@pytest.fixture(params=DOCKERFILES, ids=lambda p: p.name)
def dockerfile(request) -> str:
    return request.param.read_text()


def test_pip_lines_install_exactly_the_repo_pins(dockerfile):
    assert readme_torch_pin() == setup_pins()["torch"]
    assert install_problems(dockerfile, readme_torch_pin(), setup_pins()) == []
    assert any(
        "torch" in " ".join(call) and "-e" in call and ".[dev]" in call
        for call in pip_installs(dockerfile)
    ), "the README's own install command"


def test_install_check_flags_drift():
    """The helper is not vacuous: wrong, unpinned-in-setup.cfg and missing installs are flagged."""
    pins = {"torch": "2.13.0", "lightning": "2.6.6"}
    good = (
        "FROM x\n# a comment\n"
        'RUN pip install --extra-index-url https://x/cpu \\\n  "torch==2.13.0" -e ".[dev]"\n'
    )
    assert install_problems(good, "2.13.0", pins) == []
    wrong_torch = good.replace("torch==2.13.0", "torch==2.12.0")
    assert install_problems(wrong_torch, "2.13.0", pins) == [
        "torch==2.12.0: the README installs torch==2.13.0"
    ]
    by_hand = "FROM x\nRUN apt-get update && pip install lightning==2.5.0 numpy && pip install .\n"
    assert install_problems(by_hand, "2.13.0", pins) == [
        "lightning==2.5.0: setup.cfg pins lightning==2.6.6",
        "numpy: not pinned in setup.cfg (install the package instead)",
        'the package itself is not installed with its dev extra (".[dev]")',
    ]
    assert install_problems("FROM x\nRUN echo\n", "2.13.0", pins) == ["no pip install"]


def test_cpu_image_takes_torch_from_the_cpu_index():
    calls = pip_installs(DOCKERFILES[0].read_text())
    torch_calls = [c for c in calls if any(w.startswith("torch==") for w in c)]
    assert ["--extra-index-url", "https://download.pytorch.org/whl/cpu"] == torch_calls[0][:2]


def test_cuda_image_has_python_311_and_a_cuda_base():
    text = DOCKERFILES[1].read_text()
    base = re.search(r"ARG CUDA_IMAGE=(\S+)", text)
    assert base and re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-cudnn-runtime-ubuntu22\.04", base[1])
    assert "python3.11 -m venv" in text
    assert re.search(r"ARG TORCH_INDEX=https://download\.pytorch\.org/whl/cu\d+", text)
    assert "FROM python:3.11-slim" in DOCKERFILES[0].read_text()


def test_cmd_runs_the_readme_quickstart(dockerfile):
    shell, flag, script = json.loads(last(dockerfile, "CMD"))
    assert (shell, flag) == ("bash", "-lc")
    commands = [c.strip() for c in script.split("&&")]
    assert len(commands) == 2
    for command in commands:
        assert command in README, f"{command!r} is not a README command"
    assert (ROOT / shlex.split(commands[0])[-1]).is_file()


def test_env_names_the_cache_variable_lightning_pref_reads(dockerfile, monkeypatch):
    env = env_of(dockerfile)
    home = env["LIGHTNING_PREF_HOME"]
    monkeypatch.delenv("LIGHTNING_PREF_HOME", raising=False)
    for name, value in env.items():
        if name not in ("PATH", "VIRTUAL_ENV"):
            monkeypatch.setenv(name, value)
    assert default_data_dir() == Path(home) / "minipick"
    assert json.loads(last(dockerfile, "VOLUME")) == [home]


def test_dockerignore_keeps_environments_runs_and_git_out():
    patterns = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv*", "runs", "results", ".git", "**/__pycache__", "*.egg-info"} <= patterns


def test_docker_readme_says_the_images_are_not_built_in_ci():
    text = (ROOT / "docker" / "README.md").read_text()
    assert "no Docker daemon" in text
    for path in ("docker/Dockerfile.cpu", "docker/Dockerfile.cuda"):
        assert f"-f {path}" in text
    assert re.search(r"srun [^\n]*\n?[^\n]*--container-image=", text)
    assert "apptainer build lightning_pref_cuda.sif docker-daemon://" in text
    assert "apptainer exec --nv" in text
