"""Real files from public projects, in ``../shared/realfiles/`` next to the repository (its README
lists each file, its source and its quirks), or where ``$LIGHTNING_PREF_REALFILES`` points. Tests
that need them are skipped, with the reason, when the folder is absent."""

import os
from pathlib import Path

import pytest

DEFAULT = Path(__file__).resolve().parents[3] / "shared" / "realfiles"
REALFILES = Path(os.environ.get("LIGHTNING_PREF_REALFILES", DEFAULT))


@pytest.fixture(scope="session")
def realfiles() -> Path:
    """The real-files folder, or a skip naming where it was looked for."""
    if not REALFILES.is_dir():
        pytest.skip(f"the real files are not here ({REALFILES}); see the brief's shared/ folder")
    return REALFILES
