"""MPICH's start-up segment left in /dev/shm by killed jobs (``node/shmleft.py``).

Its name comes from the job's PMI name, which under gforker and hydra is mpiexec's pid: a
job whose mpiexec gets the pid of killed ones finds their file and fails or hangs in
MPI_Init. Here the pid is chosen through ``/proc/sys/kernel/ns_last_pid`` (root only), so
the collision that took the test suite's local starts down at random happens on purpose.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from balsam_mpi.node import shmleft
from tests.conftest import needs_mpiexec

pytestmark = [pytest.mark.timeout(240), needs_mpiexec]

LAST_PID = "/proc/sys/kernel/ns_last_pid"
GFORKER = Path(sys.executable).parent / "mpiexec.gforker"
SHM = Path(shmleft.SHM_DIR)


def _needs_pid_choice() -> None:
    if not GFORKER.exists():
        pytest.skip("no mpiexec.gforker beside this Python (the mpich wheel has one)")
    if not os.access(LAST_PID, os.W_OK):
        pytest.skip(f"choosing a pid needs a writable {LAST_PID} (root)")


def _at_pid(pid: int | None, argv: list[str], **kw: object) -> subprocess.Popen[str]:
    """Start argv, with that pid when one is given (tried until it is free)."""
    for _ in range(50):
        if pid is not None:
            with open(LAST_PID, "w") as f:
                f.write(str(pid - 1))
        proc: subprocess.Popen[str] = subprocess.Popen(argv, start_new_session=True,
                                                       text=True, **kw)  # type: ignore[call-overload]
        if pid is None or proc.pid == pid:
            return proc
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        time.sleep(0.2)  # the pid is still someone's (a rank of a killed job being reaped)
    pytest.skip(f"pid {pid} never came free")


def _kill_ranks(pids_dir: Path) -> None:
    """SIGKILL the ranks that wrote their pids there, and wait for them to be gone."""
    ranks = [int(p.name) for p in pids_dir.glob("*")]
    for rank in ranks:
        try:
            os.kill(rank, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while any(os.path.exists(f"/proc/{r}/maps") and Path(f"/proc/{r}/maps").read_text()
              for r in ranks) and time.monotonic() < deadline:
        time.sleep(0.05)


def _kill_a_job(pid: int | None, pids_dir: Path) -> tuple[int, str]:
    """A two-rank job under gforker (at ``pid``), SIGKILLed once its ranks are past
    MPI_Init (as a launcher kills a task), or ended by its own MPI_Init failing (a job at
    the pid of a killed one may): its mpiexec's pid and the segment it left."""
    before = set(os.listdir(SHM))
    for old in pids_dir.glob("*"):
        old.unlink()
    code = ("import os, sys, time; from mpi4py import MPI; MPI.COMM_WORLD.Barrier(); "
            f"open(os.path.join({str(pids_dir)!r}, str(os.getpid())), 'w').close(); "
            "time.sleep(120)")
    job = _at_pid(pid, [str(GFORKER), "-n", "2", sys.executable, "-c", code],
                  stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(list(pids_dir.glob("*"))) < 2 and job.poll() is None:
        assert time.monotonic() < deadline, "the job neither started nor failed"
        time.sleep(0.1)
    if job.poll() is None:
        os.killpg(job.pid, signal.SIGKILL)
    _kill_ranks(pids_dir)
    job.wait()
    left = [n for n in set(os.listdir(SHM)) - before if n.startswith(shmleft.PREFIX)]
    if pid is not None and not left:  # the same name as the first time: no new one
        left = [n for n in os.listdir(SHM) if n.startswith(shmleft.PREFIX)
                and (SHM / n).stat().st_mtime >= time.time() - 60]
    assert left, "the killed job left no segment: MPICH's behaviour changed"
    return job.pid, left[0]


def test_a_launcher_whose_starter_gets_a_killed_jobs_pid_still_starts(tmp_path: Path) -> None:
    _needs_pid_choice()
    pids_dir = tmp_path / "pids"
    pids_dir.mkdir()
    pid, name = _kill_a_job(None, pids_dir)
    # One more at that pid (which may itself fail in MPI_Init): measured, the file two
    # jobs left breaks every later one's MPI_Init; what one left breaks some.
    again, name2 = _kill_a_job(pid, pids_dir)
    assert (again, name2) == (pid, name)
    old = time.time() - 60
    os.utime(SHM / name, (old, old))  # as if killed a minute ago
    env = dict(os.environ, BALSAM_MPI_INIT_TIMEOUT_S="30")
    missing = tmp_path / "no-such-project"
    start = _at_pid(pid, [sys.executable, "-m", "balsam_mpi.batch.localstart", "-n", "2",
                          "--", "--project", str(missing)],
                    env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = start.communicate(timeout=120)
    finally:
        if start.poll() is None:
            os.killpg(start.pid, signal.SIGKILL)
        shmleft.sweep(min_age_s=0.0)  # what this test's jobs left
    # Past MPI_Init, the launcher reads its settings and refuses the missing project.
    assert "balsam_mpi launcher: error:" in out and str(missing) in out, out
    assert "MPI_Init" not in out and "Init_thread" not in out, out


def test_sweep_leaves_a_running_jobs_segment(tmp_path: Path) -> None:
    """A live job's segment is held (mapped) by its ranks: never removed, however old."""
    _needs_pid_choice()
    pids_dir = tmp_path / "pids"
    pids_dir.mkdir()
    code = ("import os, time; from mpi4py import MPI; MPI.COMM_WORLD.Barrier(); "
            f"open(os.path.join({str(pids_dir)!r}, str(os.getpid())), 'w').close(); "
            "time.sleep(120)")
    before = set(os.listdir(SHM))
    job = _at_pid(None, [str(GFORKER), "-n", "2", sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 60
        while len(list(pids_dir.glob("*"))) < 2:
            assert job.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        mine = [n for n in set(os.listdir(SHM)) - before if n.startswith(shmleft.PREFIX)]
        assert mine
        old = time.time() - 3600
        for n in mine:
            os.utime(SHM / n, (old, old))
        removed = shmleft.sweep()
        assert not set(mine) & set(removed)
        assert all((SHM / n).exists() for n in mine)
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        _kill_ranks(pids_dir)
        job.wait()
        shmleft.sweep(min_age_s=0.0)
