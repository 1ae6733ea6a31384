"""`task rm` of a running task (issue 15, case 7): it used to leave the process running.
The task is deleted and its launcher, whose kill poll now reports tasks that are gone,
stops the process. A real launcher under `mpiexec`, a watchdog on every wait."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_launcher import add, no_strays
from tests.e2e.test_lifecycle import start, task_pids, wait_end, wait_for

pytestmark = pytest.mark.timeout(240)


def test_rm_of_a_running_task_stops_its_process(conn: Any, dbname: str) -> None:
    [task] = add(conn, 1, command="sleep 600", app="long")
    proc = start(1, "--idle-timeout", "0")
    wait_for("the task to run", lambda: task_pids(f"BALSAM_DB_NAME={dbname}"), proc)
    cli = Path(sys.executable).parent / "balsam-mpi"
    gone = subprocess.run([str(cli), "task", "rm", str(task), "--yes"], capture_output=True,
                          text=True, timeout=60)
    assert gone.returncode == 0, gone.stdout + gone.stderr
    assert gone.stdout.strip() == ("deleted 1 tasks (1 were claimed or running: their "
                                   "launchers stop them)")
    # The kill bound (5 s) as the watchdog: the process is gone by then.
    wait_for("the deleted task's process to stop",
             lambda: not task_pids(f"BALSAM_DB_NAME={dbname}"), timeout=5)
    wait_end(proc)
    assert conn.execute("SELECT count(*) FROM tasks").fetchone() == (0,)
    history = conn.execute("SELECT to_state::text FROM task_events WHERE task_id = %s "
                           "ORDER BY id", (task,)).fetchall()
    assert [h[0] for h in history] == ["READY", "RUNNING"]  # history stays
    no_strays(dbname)
