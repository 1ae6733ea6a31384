"""The end of a batch job as a real scheduler does it: every process of the job step — the
launcher's ranks *and* their tasks — gets the signal at once, in any order (slurmstepd,
PBS's MoM). No task may end FAILED or spend a retry, nothing may start after the signal,
and the batch job must close with the reason."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from .test_launcher import add, launcher, no_strays

pytestmark = pytest.mark.timeout(240)


def _processes(dbname: str) -> tuple[list[int], list[int], set[bytes]]:
    """(launcher ranks, task processes, task ids) of this test's launcher, by their
    environment. A task is two processes: its trampoline and the task's own program; the
    scheduler signals both, as it signals every process of the step."""
    marker = f"BALSAM_DB_NAME={dbname}".encode()
    ranks, tasks = [], []
    ids: set[bytes] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker not in env:
            continue
        if os.path.basename(cmd[0]).startswith(b"python") and b"balsam_mpi" in cmd:
            ranks.append(int(entry))
        else:
            found = [e for e in env if e.startswith(b"BALSAM_TASK_ID=")]
            if found:
                tasks.append(int(entry))
                ids.update(found)
    return ranks, tasks, ids


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _wait_running(conn: Any, n: int, proc: Any) -> None:
    deadline = time.monotonic() + 60
    while conn.execute("SELECT count(*) FROM tasks WHERE state = 'RUNNING'").fetchone()[0] < n:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)


def _check_nothing_lost(conn: Any, reason: str) -> None:
    rows = conn.execute("SELECT id, state::text, batch_job_id, error_retries, timeout_retries, "
                        "lost_retries, state_message FROM tasks ORDER BY id").fetchall()
    for row in rows:
        assert row[1] in ("READY", "RESTART_READY"), row
        assert row[2:6] == (None, 0, 0, 0), row
    job = conn.execute("SELECT state::text, end_reason FROM batch_jobs").fetchone()
    assert job == ("FINISHED", reason)
    # Nothing started after the signal: one run at most per task, and only the first wave.
    starts = conn.execute("SELECT count(*) FROM task_events WHERE to_state = 'RUNNING'"
                          ).fetchone()[0]
    assert starts <= 8


@pytest.mark.parametrize("tasks_first", [True, False], ids=["tasks-first", "ranks-first"])
def test_the_step_signalled_whole_cuts_tasks_never_fails_them(
        conn: Any, dbname: str, tasks_first: bool) -> None:
    add(conn, 20, command="sleep 60", packing=4, app="sixty")
    proc = launcher(2, "--idle-timeout", "30")
    _wait_running(conn, 8, proc)
    ranks, tasks, ids = _processes(dbname)
    assert len(ranks) == 2 and len(ids) == 8, (ranks, tasks, ids)
    first, then = (tasks, ranks) if tasks_first else (ranks, tasks)
    _signal_all(first, signal.SIGTERM)
    time.sleep(0.3)  # the order and the gap a busy node may show
    _signal_all(then, signal.SIGTERM)
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, out
    _check_nothing_lost(conn, "SIGTERM")
    no_strays(dbname)


def test_the_schedulers_warning_signal_reaches_the_tasks_too(conn: Any, dbname: str) -> None:
    """Slurm's --signal without B: (and a forwarded USR1) also hits the step's tasks, which
    die of it before their launcher drains: still cut, not failed (exit -10 before)."""
    add(conn, 20, command="sleep 60", packing=4, app="sixty")
    proc = launcher(2, "--idle-timeout", "30")
    _wait_running(conn, 8, proc)
    ranks, tasks, _ids = _processes(dbname)
    _signal_all(tasks, signal.SIGUSR1)
    time.sleep(0.5)
    _signal_all(ranks, signal.SIGUSR1)
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, out
    _check_nothing_lost(conn, "SIGUSR1")
    no_strays(dbname)
