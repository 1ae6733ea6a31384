"""A real launcher run (mpiexec, 2 ranks) checked against the test's own wall clock and
against a hand computation from the tasks' event histories."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from balsam_mpi.reports import history
from balsam_mpi.reports.history import Filters

MPIEXEC = Path(sys.executable).parent / "mpiexec"
SLEEP = 1.0
TASKS = 4


@pytest.mark.timeout(240)
def test_launcher_run_matches_wall_clock_and_histories(conn: Any, dbname: str) -> None:
    mpiexec = str(MPIEXEC) if MPIEXEC.exists() else shutil.which("mpiexec")
    if mpiexec is None:
        pytest.skip("no mpiexec (bash setup_env.sh installs the mpich wheel)")
    from balsam_mpi import Client

    with Client() as client:
        client.add_app("nap", "sleep {seconds}")
        ids = client.add_tasks([{"app": "nap", "workflow": "clock", "name": f"n{i}",
                                 "params": {"seconds": SLEEP}} for i in range(TASKS)])
    before = datetime.now(UTC)
    proc = subprocess.Popen([mpiexec, "-n", "2", sys.executable, "-P", "-m", "balsam_mpi",
                             "--idle-timeout", "0"], env=dict(os.environ),
                            start_new_session=True)
    deadline = time.monotonic() + 180
    all_done_at: float | None = None
    while proc.poll() is None and time.monotonic() < deadline:
        done = conn.execute("SELECT count(*) FROM tasks WHERE id = ANY(%s) "
                            "AND state = 'JOB_FINISHED'", (ids,)).fetchone()[0]
        if done == TASKS:
            all_done_at = all_done_at or time.monotonic()
            if time.monotonic() - all_done_at > 15:
                break  # an idle launcher should have left by now
        time.sleep(0.5)
    if proc.poll() is None:  # still there: drain it the way a scheduler would
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    after = datetime.now(UTC)

    states = conn.execute("SELECT state::text, count(*) FROM tasks WHERE id = ANY(%s) "
                          "GROUP BY 1", (ids,)).fetchall()
    assert dict(states) == {"JOB_FINISHED": TASKS}
    h = history.history(conn, Filters())
    (job,) = h.jobs
    # the batch job's life lies inside the test's own wall clock
    assert job.started_at is not None and job.alive_until is not None
    assert before <= job.started_at <= job.alive_until <= after
    # busy node-seconds = the sum of the runs in the histories (`task show`), by hand
    runs = conn.execute(
        "SELECT e.task_id, e.to_state::text, e.at FROM task_events e "
        "WHERE e.task_id = ANY(%s) AND (e.to_state = 'RUNNING' OR e.from_state = 'RUNNING') "
        "ORDER BY e.task_id, e.at, e.id", (ids,)).fetchall()
    busy = 0.0
    for start, end in zip(runs[0::2], runs[1::2], strict=True):
        assert (start[0], start[1]) == (end[0], "RUNNING") and end[1] == "RUN_DONE"
        assert (end[2] - start[2]).total_seconds() >= SLEEP - 0.05
        busy += (end[2] - start[2]).total_seconds()
    assert len(runs) == 2 * TASKS
    assert float(h.busy.sum()) == pytest.approx(busy, abs=1e-3)
    held = job.nodes * (job.alive_until - job.started_at).total_seconds()
    assert h.utilization() == pytest.approx(busy / held, rel=1e-6)
    assert 0 < (h.utilization() or 0) <= 1
    (row,) = h.job_rows()
    assert row["done"] == TASKS and row["failed"] == 0
