"""MiniPick's cached assets (base model and pairs) for the strategy tests.

They are the assets every MiniPick run uses, in the same cache (``$LIGHTNING_PREF_HOME/minipick``
or ``~/.cache/lightning_pref/minipick``): found at once when present, else built once, in a
subprocess that may use both cores (about 4.5 minutes on 2 cores).
"""

import os
import subprocess
import sys

import pytest

BUILD = (
    "from lightning_pref.minipick import MiniPickAssets; a = MiniPickAssets(); "
    "a.base_dir(build=True); a.pairs_dir(build=True)"
)


@pytest.fixture(scope="session")
def minipick_assets() -> None:
    """Ensure MiniPick's base model and pairs are built."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    subprocess.run([sys.executable, "-c", BUILD], env=env, check=True, timeout=1500)
