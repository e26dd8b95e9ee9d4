"""Real files from public projects, in ``../shared/realfiles/`` next to the repository (its README
lists each file, its source and its quirks). Tests that need them are skipped when it is absent."""

from pathlib import Path

import pytest

REALFILES = Path(__file__).resolve().parents[3] / "shared" / "realfiles"


@pytest.fixture(scope="session")
def realfiles() -> Path:
    """The real-files folder, or a skip naming where it was looked for."""
    if not REALFILES.is_dir():
        pytest.skip(f"the real files are not here ({REALFILES}); see the brief's shared/ folder")
    return REALFILES
