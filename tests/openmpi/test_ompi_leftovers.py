"""What an Open MPI job killed with SIGKILL leaves (its ranks' ``vader_segment.*`` in
/dev/shm, its mpirun's session directory), and that a node's sweep removes it
(``node/shmleft.py``, ``node/ompileft.py``) but never a running job's. Run by
tests/openmpi/run.sh; anywhere else it skips."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from balsam_mpi.node import ompileft, shmleft
from tests.conftest import FOUND_MPI

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(FOUND_MPI is None or FOUND_MPI.kind != "openmpi",
                       reason="the Open MPI tier: bash tests/openmpi/run.sh (as root)"),
]

SHM = Path(shmleft.SHM_DIR)


def _start(pids_dir: Path) -> subprocess.Popen[bytes]:
    """A two-rank job whose ranks, past MPI_Init, write their pids and sleep."""
    assert FOUND_MPI is not None
    code = ("import os, time; from mpi4py import MPI; MPI.COMM_WORLD.Barrier(); "
            f"open(os.path.join({str(pids_dir)!r}, str(os.getpid())), 'w').close(); "
            "time.sleep(120)")
    job = subprocess.Popen([*FOUND_MPI.run(2), sys.executable, "-c", code],
                           start_new_session=True, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(pids_dir.glob("*"))) < 2:
        assert job.poll() is None, "the job ended before its ranks were up"
        assert time.monotonic() < deadline, "the job's ranks never came up"
        time.sleep(0.1)
    return job


def _mine(before: set[str]) -> list[str]:
    return sorted(n for n in set(os.listdir(SHM)) - before if n.startswith("vader_segment."))


def _session_dirs(pid: int) -> list[Path]:
    return [Path(top) / f"pid.{pid}" for base in ompileft.bases()
            for top in Path(base).glob(f"ompi.*.{os.getuid()}")
            if (Path(top) / f"pid.{pid}").is_dir()]


def _age(paths: list[Path]) -> None:
    old = time.time() - 3600
    for path in paths:
        for sub in [*path.rglob("*"), path] if path.is_dir() else [path]:
            os.utime(sub, (old, old), follow_symlinks=False)


def test_a_sigkilled_jobs_segments_and_session_are_swept(tmp_path: Path) -> None:
    before = set(os.listdir(SHM))
    job = _start(tmp_path)
    ranks = [int(p.name) for p in tmp_path.glob("*")]
    os.killpg(job.pid, signal.SIGKILL)  # mpirun and its ranks at once: nobody cleans up
    job.wait()
    for rank in ranks:  # gone (not zombies holding their mappings)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{rank}/maps").exists() and Path(f"/proc/{rank}/maps").read_text():
            assert time.monotonic() < deadline
            time.sleep(0.05)
    segments = _mine(before)
    sessions = _session_dirs(job.pid)
    assert len(segments) == 2, f"{segments}: Open MPI's behaviour changed"
    assert sessions, f"no session directory pid.{job.pid} under {ompileft.bases()}"
    _age([SHM / n for n in segments] + sessions)  # as if killed an hour ago
    removed = shmleft.Sweeper().tick(time.monotonic())
    assert set(segments) <= set(removed)
    assert {str(s) for s in sessions} <= set(removed)
    assert not any((SHM / n).exists() for n in segments)
    assert not any(s.exists() for s in sessions)


def test_a_running_jobs_segments_and_session_stay(tmp_path: Path) -> None:
    before = set(os.listdir(SHM))
    job = _start(tmp_path)
    try:
        segments = _mine(before)
        sessions = _session_dirs(job.pid)
        assert segments and sessions
        _age([SHM / n for n in segments] + sessions)
        removed = shmleft.sweep_all()
        assert not set(segments) & set(removed)
        assert not {str(s) for s in sessions} & set(removed)
        assert all((SHM / n).exists() for n in segments) and all(s.is_dir() for s in sessions)
    finally:
        os.killpg(job.pid, signal.SIGTERM)  # mpirun cleans up after SIGTERM
        job.wait(timeout=60)
