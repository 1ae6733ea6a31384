"""`balsam-mpi submit --scheduler local -n 3` end to end: the real CLI, the rendered
script, activation, mpiexec and the launcher; the ready tasks of the chosen workflow all
run once, and the batch job submit recorded is the one the launcher adopted and closed,
as `job ls` shows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from balsam_mpi import Client
from balsam_mpi.base.project import Project

BIN = Path(sys.executable).parent
WATCHDOG_SEC = 240


def _cli(*args: str) -> str:
    done = subprocess.run([str(BIN / "balsam-mpi"), *args], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _wait_gone(pid: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.5)
    return False


@pytest.mark.timeout(WATCHDOG_SEC + 60)
def test_local_submission_runs_ready_tasks(pg_project: Project, conn: Any,
                                           dbname: str) -> None:
    with Client() as client:
        client.add_app("greet", "echo hello {who}")
        ids = client.add_tasks([{"app": "greet", "workflow": "e2e", "name": f"t{i}",
                                 "params": {"who": str(i)}, "node_packing_count": 2,
                                 "tags": {"site": "here"}}
                                for i in range(6)])
        others = client.add_tasks([{"app": "greet", "workflow": "other",
                                    "params": {"who": "x"}, "tags": {"site": "here"}},
                                   {"app": "greet", "workflow": "e2e", "params": {"who": "y"},
                                    "tags": {"site": "elsewhere"}}])
    # The launcher's own flags pass through submit (--tag, --idle-timeout).
    out = json.loads(_cli("submit", "--scheduler", "local", "-n", "3", "--workflow", "e2e",
                          "--tag", "site=here", "--idle-timeout", "1", "--json"))
    pid, job_id, log = out["pid"], out["batch_job_id"], Path(out["log"])
    if not _wait_gone(pid, time.monotonic() + WATCHDOG_SEC):
        os.killpg(pid, signal.SIGKILL)  # the script leads its own session (start_new_session)
        pytest.fail(f"the local batch job did not finish; its log:\n{log.read_text()}")
    states = conn.execute("SELECT state::text, count(*) FROM tasks WHERE id = ANY(%s) "
                          "GROUP BY 1", (ids,)).fetchall()
    assert states == [("JOB_FINISHED", 6)], log.read_text()
    other = conn.execute("SELECT array_agg(state::text) FROM tasks WHERE id = ANY(%s)",
                         (others,)).fetchone()
    assert other == (["READY", "READY"],)  # another workflow, another tag: not its own
    filters = conn.execute("SELECT filters FROM batch_jobs WHERE id = %s", (job_id,)).fetchone()
    assert filters is not None
    assert (filters[0]["workflows"], filters[0]["tags"]) == (["e2e"], {"site": "here"})
    runs = conn.execute("SELECT task_id, count(*) FROM task_events WHERE to_state = 'RUNNING' "
                        "GROUP BY 1").fetchall()
    assert sorted(runs) == [(i, 1) for i in ids]
    jobs = conn.execute("SELECT id, scheduler, state::text, nodes, submitted_at IS NOT NULL, "
                        "started_at IS NOT NULL FROM batch_jobs").fetchall()
    assert jobs == [(job_id, "local", "FINISHED", 3, True, True)]  # adopted, not a new row
    listed = json.loads(_cli("job", "ls", "--json"))
    assert [(j["id"], j["state"]) for j in listed] == [(job_id, "FINISHED")]
