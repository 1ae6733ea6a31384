"""The real-Slurm tier: a throwaway Slurm on this host (cluster.py), jobs submitted with
`balsam-mpi submit --scheduler slurm` as a user would, and the database read afterwards.

Needs root (it starts munged, slurmctld and slurmd); otherwise every test here is skipped
with the reason. Leases, drain and kill graces are shortened through the environment,
which sbatch hands on to the job (and submit reads to derive the template's warning
time), so the tier takes a few minutes.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.slurm.cluster import LocalSlurm, SlurmUnavailable, local_slurm, skip_reason

# What every job of this tier runs with (sbatch passes the submitting environment on).
FAST = {
    "BALSAM_LEASE_S": "20",
    "BALSAM_HEARTBEAT_S": "3",
    "BALSAM_EXPIRE_CHECK_S": "2",
    "BALSAM_DRAIN_GRACE_S": "10",
    "BALSAM_KILL_GRACE_S": "5",
    "BALSAM_IDLE_TIMEOUT_S": "3",
    "BALSAM_FLUSH_INTERVAL_S": "0.05",
}


@pytest.fixture(autouse=True)
def _needs_root() -> None:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def slurm() -> Iterator[LocalSlurm]:
    """munged, slurmctld and slurmd for n1-n3, up for the whole session; every daemon is
    stopped by its PID at the end."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    try:
        with local_slurm() as cluster:
            yield cluster
    except SlurmUnavailable as exc:
        pytest.fail(f"could not bring up the test Slurm: {exc}")


@pytest.fixture()
def slurm_env(slurm: LocalSlurm, dbname: str, monkeypatch: pytest.MonkeyPatch) -> LocalSlurm:
    """This test's database, the cluster's SLURM_CONF and the short timings, in the
    environment that `balsam-mpi submit` (and so the job) sees."""
    monkeypatch.setenv("SLURM_CONF", str(slurm.conf))
    for name, value in FAST.items():
        monkeypatch.setenv(name, value)
    return slurm
