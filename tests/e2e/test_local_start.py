"""The local start (``python -m balsam_mpi.batch.localstart``, used by the demo and ``submit
--scheduler local``) under the found MPI: the starter's signals reach the ranks, and a
starter killed outright does not leave ranks running tasks behind.

With MPICH the starter is ``mpiexec.gforker``, which does not stop its ranks when it is
killed with SIGKILL (hydra's proxies do); each rank asks the kernel for a SIGTERM when
the starter dies (``localstart.rank_main``), which is the launcher's drain.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.conftest import FOUND_MPI, needs_mpiexec
from tests.e2e.test_launcher import no_strays, states
from tests.e2e.test_mpi_tasks import add_app, add_tasks

pytestmark = [pytest.mark.timeout(240), needs_mpiexec]


def _start(ranks: int) -> subprocess.Popen[str]:
    env = dict(os.environ, BALSAM_FLUSH_INTERVAL_S="0.05", BALSAM_HEARTBEAT_S="2")
    return subprocess.Popen([sys.executable, "-m", "balsam_mpi.batch.localstart", "-n", str(ranks),
                             "--", "--idle-timeout", "0"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _wait_running(conn: Any, proc: subprocess.Popen[str], n: int) -> None:
    deadline = time.monotonic() + 60
    while conn.execute("SELECT count(*) FROM tasks WHERE state = 'RUNNING'").fetchone()[0] < n:
        assert proc.poll() is None, proc.communicate()[0]
        if time.monotonic() > deadline:
            # What the starter and its ranks said is the only clue to a hang: kept.
            os.killpg(proc.pid, signal.SIGKILL)
            said = proc.communicate(timeout=30)[0]
            pytest.fail(f"the tasks never started ({states(conn)}); the starter said:\n"
                        f"{said[-4000:]}")
        time.sleep(0.1)


def _ranks(starter: int) -> list[int]:
    """The starter's direct children: the launcher ranks (gforker and mpirun fork them)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == starter:
                found.append(int(entry))
    return found


def _gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":
                alive.append(pid)
        if not alive:
            return True
        time.sleep(0.2)
    return False


def _after_drain(conn: Any) -> None:
    """Nothing RUNNING, nothing FAILED, no retry spent; the batch job is closed."""
    left = states(conn)
    assert "RUNNING" not in left and "FAILED" not in left, left
    spent = conn.execute("SELECT sum(error_retries + timeout_retries + lost_retries) "
                         "FROM tasks").fetchone()[0]
    assert spent == 0
    jobs = conn.execute("SELECT state::text FROM batch_jobs").fetchall()
    assert jobs and all(state != "RUNNING" for (state,) in jobs), jobs


def _runnable(conn: Any) -> int:
    return int(conn.execute("SELECT count(*) FROM tasks WHERE state IN ('READY', "
                            "'RESTART_READY')").fetchone()[0])


def test_term_to_the_starter_drains(conn: Any, dbname: str) -> None:
    add_app(conn, "long", "sleep 60")
    add_tasks(conn, "long", 3)
    proc = _start(3)
    _wait_running(conn, proc, 3)
    os.kill(proc.pid, signal.SIGTERM)  # what local.sh forwards: the starter is its pid
    try:
        out, _ = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"the launcher did not drain:\n{proc.communicate()[0]}")
    _after_drain(conn)
    assert _runnable(conn) == 3, out
    no_strays(dbname)


@pytest.mark.skipif(FOUND_MPI is None or not FOUND_MPI.fork_program,
                    reason="the local start uses MPICH's gforker only where it is installed")
def test_starter_killed_outright_leaves_no_rank_running(conn: Any, dbname: str) -> None:
    add_app(conn, "long", "sleep 120")
    add_tasks(conn, "long", 3)
    proc = _start(3)
    _wait_running(conn, proc, 3)
    ranks = _ranks(proc.pid)
    assert len(ranks) == 3, ranks
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    try:
        # Drained at once, not left to run their 2-minute tasks to the end.
        assert _gone(ranks, 30), "launcher ranks outlived their starter"
    finally:
        for pid in ranks:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    _after_drain(conn)
    assert _runnable(conn) == 3  # requeued by the drain, not left to finish
    no_strays(dbname)
