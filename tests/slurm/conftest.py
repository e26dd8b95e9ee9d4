"""A one-node SLURM cluster on this machine for the session (tests/slurm/local_cluster.sh).

The fixture starts the cluster if it is not running (installing slurm-wlm with apt-get when
sbatch is missing, which needs root) and stops it at the end only if it started it. Where it
cannot, every test that uses it is skipped with the script's reason.
"""

import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "local_cluster.sh"


def cluster(action: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), action], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="session")
def slurm_cluster():
    """Yields once the node is idle; skips when the cluster cannot be started here."""
    if cluster("status").returncode == 0:
        yield
        return
    try:
        started = cluster("start", timeout=600)
    except subprocess.TimeoutExpired:
        pytest.skip("local SLURM cluster: tests/slurm/local_cluster.sh start timed out")
    if started.returncode != 0:
        lines = (started.stderr or started.stdout).strip().splitlines()
        pytest.skip(f"local SLURM cluster: {lines[-1] if lines else 'start failed'}")
    try:
        yield
    finally:
        cluster("stop")
