"""What the Slurm tests share: submitting through `balsam-mpi submit`, waiting on Slurm,
reading a job's output and logs, and the rows a test checks afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.slurm.cluster import LocalSlurm

BIN = Path(sys.executable).parent
DONE_STATES = ("COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
               "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE")



def submit(*args: str) -> dict[str, Any]:
    done = subprocess.run([str(BIN / "balsam-mpi"), "submit", "--scheduler", "slurm",
                           "--json", *args], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    out: dict[str, Any] = json.loads(done.stdout)
    assert out["scheduler_job_id"], out
    return out


def job_state(slurm: LocalSlurm, job_id: str) -> str:
    done = slurm.run("scontrol", "show", "job", "-o", job_id, check=False)
    for word in done.stdout.split():
        if word.startswith("JobState="):
            return word.split("=", 1)[1]
    return "GONE"


def wait_for(what: str, check: Callable[[], bool], timeout: float = 120,
             explain: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}\n{explain()}")
        time.sleep(0.5)


def past_the_revocation(slurm: LocalSlurm) -> None:
    """Wait until a job that just ended may start again under the same id.

    When a job ends, every slurmd revokes its credential, timed to the second; a credential
    made in that same second counts as revoked too, so a job requeued and started again
    within it is killed at launch ("Killing non-startable batch JobId=…: Job credential
    revoked", slurmd: "already killed, do not launch batch job") and ends FAILED at once.
    Slurm's own delay before a requeued job may start (about two minutes) hides this; a
    test that starts it at once waits until no node is still completing a job, then for
    the next whole second."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        states = slurm.run("sinfo", "-h", "-N", "-o", "%T", check=False).stdout.split()
        if not any("completing" in state.lower() for state in states):
            break
        time.sleep(0.2)
    now = time.time()
    time.sleep(int(now) + 1.1 - now)


def wait_job_end(slurm: LocalSlurm, sub: dict[str, Any], timeout: float = 300) -> str:
    job = sub["scheduler_job_id"]
    wait_for(f"Slurm job {job} to end", lambda: job_state(slurm, job) in DONE_STATES + ("GONE",),
             timeout, lambda: job_output(sub))
    return job_state(slurm, job)


def job_output(sub: dict[str, Any]) -> str:
    """The job's own output file (Slurm writes it beside the script, in the submission's
    directory under qsubmit/) and the launcher logs."""
    qdir = Path(sub["script"]).parent.parent
    text = []
    for path in sorted(qdir.glob(f"*/*-{sub['scheduler_job_id']}.out")):
        text.append(f"--- {path.name}\n{path.read_text(errors='replace')[-6000:]}")
    logs = qdir.parent / "log"
    for path in sorted(logs.glob(f"launcher_{sub['scheduler_job_id']}_r*.log")):
        text.append(f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}")
    return "\n".join(text)


def add_app(conn: Any, name: str, command: str) -> None:
    conn.execute("INSERT INTO apps (name, command) VALUES (%s, %s)", (name, command))


def add_tasks(conn: Any, app: str, n: int, *, num_nodes: int = 1, ranks_per_node: int = 1,
              packing: int = 1, env: dict[str, str] | None = None) -> list[int]:
    """READY tasks in a workflow named after the test's database (the project is shared)."""
    rows = conn.execute(
        "INSERT INTO tasks (workflow, name, app_id, state, num_nodes, ranks_per_node, "
        "node_packing_count, env) SELECT current_database(), 't', "
        "(SELECT id FROM apps WHERE name = %s), 'READY', %s, %s, %s, %s::jsonb "
        "FROM generate_series(1, %s) RETURNING id",
        (app, num_nodes, ranks_per_node, packing, json.dumps(env or {}), n)).fetchall()
    return [r[0] for r in rows]


def count_state(conn: Any, state: str) -> int:
    row = conn.execute("SELECT count(*) FROM tasks WHERE state = %s", (state,)).fetchone()
    return int(row[0]) if row else 0


def task_rows(conn: Any) -> list[tuple[int, str, int, int, int]]:
    return conn.execute("SELECT id, state::text, error_retries, timeout_retries, "
                        "lost_retries FROM tasks ORDER BY id").fetchall()


def batch_job(conn: Any, row_id: int) -> tuple[str, str | None]:
    row = conn.execute("SELECT state::text, end_reason FROM batch_jobs WHERE id = %s",
                       (row_id,)).fetchone()
    assert row is not None
    return row[0], row[1]


def running_events(conn: Any) -> dict[int, int]:
    return {r[0]: r[1] for r in conn.execute(
        "SELECT task_id, count(*) FROM task_events WHERE to_state = 'RUNNING' GROUP BY 1")}


def assert_nothing_lost(conn: Any, sub: dict[str, Any]) -> None:
    """The acceptance check after an early end: every task runnable or finished, none
    FAILED or RUNNING, no retry counter spent, the batch job closed (not LOST/RUNNING)."""
    rows = task_rows(conn)
    detail = f"tasks {rows}\n{job_output(sub)}"
    assert {state for _id, state, *_ in rows} <= {"READY", "RESTART_READY", "JOB_FINISHED"}, \
        detail
    assert all(tuple(row[2:]) == (0, 0, 0) for row in rows), detail
    state, reason = batch_job(conn, sub["batch_job_id"])
    assert state == "FINISHED", (state, reason, detail)


def launcher_ranks(job_id: str) -> list[int]:
    """PIDs of the launcher ranks of a Slurm job on this host (python -P -m balsam_mpi with
    that SLURM_JOB_ID), read from /proc."""
    want = f"SLURM_JOB_ID={job_id}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        # argv python -P -m balsam_mpi …: the ranks, not srun (whose argv holds the same words)
        if cmd[1:4] == [b"-P", b"-m", b"balsam_mpi"] and want in env:
            found.append(int(entry))
    return found


def rank_of(pid: int) -> int:
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return next(int(e.split(b"=", 1)[1]) for e in env if e.startswith(b"SLURM_PROCID="))
