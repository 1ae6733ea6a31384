"""Launchers in real Slurm jobs, submitted with `balsam-mpi submit --scheduler slurm`:
a multi-node MPI task through srun, and every way a job ends early — `scancel`, the
job's time limit, Slurm's warning signal, a launcher killed with -9, one node of three
lost — checked in the database afterwards. Nothing here asserts how long anything took."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from balsam_mpi.base.project import Project
from tests.e2e.test_launcher import no_strays
from tests.slurm.cluster import LocalSlurm

pytestmark = pytest.mark.timeout(420)
BIN = Path(sys.executable).parent
DONE_STATES = ("COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
               "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE")

HELLO = textwrap.dedent("""\
    import os, sys
    from mpi4py import MPI
    c = MPI.COMM_WORLD
    sys.stdout.write(f"HELLO rank={c.Get_rank()} size={c.Get_size()} "
                     f"node={os.environ.get('SLURMD_NODENAME')} "
                     f"step={os.environ.get('SLURM_STEP_ID')}\\n")
""")


# -- helpers ---------------------------------------------------------------------------------
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


def wait_job_end(slurm: LocalSlurm, sub: dict[str, Any], timeout: float = 300) -> str:
    job = sub["scheduler_job_id"]
    wait_for(f"Slurm job {job} to end", lambda: job_state(slurm, job) in DONE_STATES + ("GONE",),
             timeout, lambda: job_output(sub))
    return job_state(slurm, job)


def job_output(sub: dict[str, Any]) -> str:
    """The job's own output file (sbatch writes it into qsubmit/) and the launcher logs."""
    qdir = Path(sub["script"]).parent
    text = []
    for path in sorted(qdir.glob(f"*-{sub['scheduler_job_id']}.out")):
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


def write_hello(tmp_path: Path) -> Path:
    hello = tmp_path / "hello.py"
    hello.write_text(HELLO)
    os.chmod(tmp_path, 0o755)
    return hello


# -- (a) MPI tasks through srun --------------------------------------------------------------
def test_short_tasks_and_a_two_node_mpi_task(slurm_env: LocalSlurm, conn: Any,
                                            pg_project: Project, dbname: str,
                                            tmp_path: Path) -> None:
    add_app(conn, "echo", "echo small")
    add_app(conn, "hello", f"{sys.executable} {write_hello(tmp_path)}")
    small = add_tasks(conn, "echo", 8, packing=2)
    # The wheel's MPICH across nodes under srun: the advice of docs/mpi-tasks.md for a
    # task's own ranks (the launcher's choose it themselves: launcher/netmod.py).
    big = add_tasks(conn, "hello", 1, num_nodes=2, ranks_per_node=2,
                    env={"MPIR_CVAR_CH4_NETMOD": "ofi"})
    # Three ranks: multi-node tasks run on worker nodes only (the leader's node keeps
    # running small ones), so a 2-node task needs two workers.
    sub = submit("-n", "3", "-t", "5", "--workflow", dbname)
    wait_job_end(slurm_env, sub)
    # The launcher's ranks (3 nodes, srun, Slurm's PMI) asked for OFI before MPI_Init.
    logs = [p.read_text(errors="replace") for p in
            pg_project.log_dir.glob(f"launcher_{sub['scheduler_job_id']}_r*.log")]
    assert len(logs) == 3 and all("MPICH network module ofi" in text for text in logs), (
        job_output(sub))
    states = dict(conn.execute("SELECT id, state::text FROM tasks").fetchall())
    out_path = pg_project.task_dir(dbname, big[0], "t") / "task.out"
    err_path = out_path.with_name("task.err")
    message = conn.execute("SELECT state_message FROM tasks WHERE id = %s", big).fetchone()
    detail = (f"{states}\n{message}\n"
              f"{err_path.read_text() if err_path.exists() else ''}\n{job_output(sub)}")
    assert set(states.values()) == {"JOB_FINISHED"} and len(states) == 9, detail
    lines = [line.split() for line in out_path.read_text().splitlines()
             if line.startswith("HELLO")]
    fields = [dict(item.split("=", 1) for item in line[1:]) for line in lines]
    assert sorted(int(f["rank"]) for f in fields) == [0, 1, 2, 3], fields
    assert {f["size"] for f in fields} == {"4"}, fields
    # Two ranks on each of two Slurm nodes (named as Slurm knows them), all in one step
    # of their own: srun started them, not the launcher's step.
    nodes = sorted(f["node"] for f in fields)
    assert nodes[0] == nodes[1] != nodes[2] == nodes[3], fields
    assert set(nodes) <= {"n1", "n2", "n3"}, fields
    steps = {f["step"] for f in fields}
    assert len(steps) == 1 and steps != {"0"} and steps != {"None"}, fields
    assert running_events(conn) == {t: 1 for t in small + big}
    assert batch_job(conn, sub["batch_job_id"])[0] == "FINISHED", job_output(sub)
    no_strays(dbname)


def test_two_ranks_per_node_without_whole_nodes(slurm_env: LocalSlurm, conn: Any,
                                                pg_project: Project, dbname: str,
                                                tmp_path: Path) -> None:
    """With --shared-nodes the job holds one CPU per node; a 2-rank task still starts."""
    add_app(conn, "hello", f"{sys.executable} {write_hello(tmp_path)}")
    big = add_tasks(conn, "hello", 1, num_nodes=1, ranks_per_node=2)
    sub = submit("-n", "1", "-t", "5", "--shared-nodes", "--workflow", dbname)
    script = Path(sub["script"]).read_text()
    assert "#SBATCH --exclusive" not in script
    wait_job_end(slurm_env, sub)
    state = conn.execute("SELECT state::text, state_message FROM tasks").fetchone()
    assert state[0] == "JOB_FINISHED", (state, job_output(sub))
    out = (pg_project.task_dir(dbname, big[0], "t") / "task.out").read_text()
    assert out.count("size=2") == 2, out


# -- (b) scancel, (e) Slurm's warning signal -------------------------------------------------
def _start_sleepers(slurm: LocalSlurm, conn: Any, dbname: str, seconds: int, *,
                    minutes: int = 5) -> tuple[dict[str, Any], list[int]]:
    add_app(conn, "sleep", f"sleep {seconds}")
    ids = add_tasks(conn, "sleep", 6, packing=2)  # 2 nodes x 2 slots running, 2 waiting
    sub = submit("-n", "2", "-t", str(minutes), "--workflow", dbname)
    wait_for("four tasks running", lambda: count_state(conn, "RUNNING") == 4, 120,
             lambda: f"{task_rows(conn)}\n{job_output(sub)}")
    return sub, ids


def test_scancel_mid_run_loses_nothing(slurm_env: LocalSlurm, conn: Any,
                                       dbname: str) -> None:
    sub, _ids = _start_sleepers(slurm_env, conn, dbname, 30)
    slurm_env.run("scancel", sub["scheduler_job_id"])
    wait_job_end(slurm_env, sub)
    assert_nothing_lost(conn, sub)
    # Nothing started after the cancel: the waiting tasks never ran.
    assert sorted(running_events(conn).values()) == [1, 1, 1, 1], job_output(sub)
    no_strays(dbname)


def test_slurm_warning_signal_drains(slurm_env: LocalSlurm, conn: Any, dbname: str) -> None:
    """`scancel --batch --signal=USR1` is what `#SBATCH --signal=B:USR1@N` delivers: the
    batch shell alone gets USR1 and the template must pass it on to the launcher."""
    sub, _ids = _start_sleepers(slurm_env, conn, dbname, 30)
    slurm_env.run("scancel", "--batch", "--signal=USR1", sub["scheduler_job_id"])
    final = wait_job_end(slurm_env, sub)
    assert_nothing_lost(conn, sub)
    assert final == "COMPLETED", job_output(sub)  # the launcher ended the job itself
    assert sorted(running_events(conn).values()) == [1, 1, 1, 1], job_output(sub)
    reason = batch_job(conn, sub["batch_job_id"])[1] or ""
    assert "USR1" in reason, reason
    no_strays(dbname)


# -- (c) the job's time limit ----------------------------------------------------------------
def test_two_minute_job_over_five_minute_tasks(slurm_env: LocalSlurm, conn: Any,
                                               dbname: str) -> None:
    add_app(conn, "long", "sleep 300")
    add_tasks(conn, "long", 4, packing=2)
    sub = submit("-n", "2", "-t", "2", "--workflow", dbname)
    final = wait_job_end(slurm_env, sub)
    assert_nothing_lost(conn, sub)
    # Drained and closed before Slurm's own end of the job: Slurm saw it complete.
    assert final == "COMPLETED", job_output(sub)
    assert running_events(conn), "no task ever ran\n" + job_output(sub)
    no_strays(dbname)


# -- (d) a launcher killed with -9, then the next job ----------------------------------------
def launcher_ranks(job_id: str) -> list[int]:
    """PIDs of the launcher ranks of a Slurm job on this host (python -m balsam_mpi with
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
        # argv python -m balsam_mpi …: the ranks, not srun (whose argv holds the same words)
        if cmd[1:3] == [b"-m", b"balsam_mpi"] and want in env:
            found.append(int(entry))
    return found


def test_job_after_a_killed_one_finishes_its_tasks_once(slurm_env: LocalSlurm, conn: Any,
                                                        dbname: str) -> None:
    add_app(conn, "nap", "sleep 15")
    ids = add_tasks(conn, "nap", 4, packing=2)
    first = submit("-n", "2", "-t", "5", "--workflow", dbname)
    wait_for("tasks running", lambda: count_state(conn, "RUNNING") >= 2, 120,
             lambda: job_output(first))
    ranks = launcher_ranks(first["scheduler_job_id"])
    assert len(ranks) == 2, ranks
    for pid in ranks:
        os.kill(pid, signal.SIGKILL)
    wait_job_end(slurm_env, first)
    second = submit("-n", "2", "-t", "5", "--workflow", dbname)  # at once: lease still fresh
    wait_job_end(slurm_env, second)
    rows = task_rows(conn)
    assert {state for _id, state, *_ in rows} == {"JOB_FINISHED"}, \
        f"{rows}\n{job_output(second)}"
    done = {r[0]: r[1] for r in conn.execute(
        "SELECT task_id, count(*) FROM task_events WHERE to_state = 'RUN_DONE' GROUP BY 1")}
    assert done == {t: 1 for t in ids}  # exactly once each
    assert batch_job(conn, first["batch_job_id"])[0] == "LOST"
    assert batch_job(conn, second["batch_job_id"])[0] == "FINISHED"
    no_strays(dbname)


def rank_of(pid: int) -> int:
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return next(int(e.split(b"=", 1)[1]) for e in env if e.startswith(b"SLURM_PROCID="))


def test_a_node_lost_mid_run_costs_its_own_tasks_only(slurm_env: LocalSlurm, conn: Any,
                                                      dbname: str) -> None:
    """A worker rank killed with -9 (its node died, the kernel's OOM killer) in a
    three-node job: srun lets the other ranks run on, and the leader's sends to the dead
    rank fail (MPICH over OFI). The dead rank's running tasks are written as lost
    (counted) and run again; everything else runs once and the job ends by itself."""
    add_app(conn, "nap", "sleep 12")
    ids = add_tasks(conn, "nap", 6, packing=2)  # 3 nodes x 2 slots: one wave
    sub = submit("-n", "3", "-t", "5", "--workflow", dbname)
    wait_for("six tasks running", lambda: count_state(conn, "RUNNING") == 6, 120,
             lambda: f"{task_rows(conn)}\n{job_output(sub)}")
    ranks = {rank_of(pid): pid for pid in launcher_ranks(sub["scheduler_job_id"])}
    assert sorted(ranks) == [0, 1, 2], ranks
    os.kill(ranks[2], signal.SIGKILL)
    final = wait_job_end(slurm_env, sub)
    detail = f"{task_rows(conn)}\n{job_output(sub)}"
    rows = task_rows(conn)
    assert {state for _id, state, *_ in rows} == {"JOB_FINISHED"}, detail
    lost = sorted(r[0] for r in rows if r[4] == 1)
    assert len(lost) == 2 and all(r[2:4] == (0, 0) for r in rows), detail
    runs = running_events(conn)
    assert {t: runs[t] for t in ids} == {t: 2 if t in lost else 1 for t in ids}, detail
    assert "worker rank 2" in job_output(sub), detail
    assert final in ("COMPLETED", "FAILED"), detail
    no_strays(dbname)


def test_a_job_requeued_after_its_launcher_died_runs_what_it_had_held(
        slurm_env: LocalSlurm, conn: Any, dbname: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Slurm requeues a job whose node failed (or that was preempted, or `scontrol
    requeue`): the same job id starts again, and its launcher adopts the same batch-job
    row under a new epoch while the dead run's lease is still fresh. The dead run's
    RUNNING tasks were stranded: not this epoch's, so neither its claims nor its close
    touched them, and no sweep looks at a live row — RUNNING for ever under a FINISHED
    job (migration 0021)."""
    add_app(conn, "nap", "sleep 8")
    ids = add_tasks(conn, "nap", 4, packing=2)
    monkeypatch.setenv("BALSAM_LEASE_S", "30")  # sbatch passes the environment on
    sub = submit("-n", "2", "-t", "5", "--workflow", dbname)
    job = sub["scheduler_job_id"]
    wait_for("four tasks running", lambda: count_state(conn, "RUNNING") == 4, 120,
             lambda: job_output(sub))
    for pid in launcher_ranks(job):
        os.kill(pid, signal.SIGKILL)
    wait_for(f"Slurm job {job} to end", lambda: job_state(slurm_env, job) in DONE_STATES,
             120, lambda: job_output(sub))
    # Requeued, and eligible at once (Slurm would hold it back about two minutes, past
    # the lease; a site's requeue need not).
    slurm_env.run("scontrol", "requeue", job)
    slurm_env.run("scontrol", "update", f"JobId={job}", "StartTime=now")
    wait_for("the job's second run", lambda: conn.execute(
        "SELECT lease_epoch FROM batch_jobs WHERE id = %s",
        (sub["batch_job_id"],)).fetchone()[0] == 2, 120, lambda: job_output(sub))
    assert count_state(conn, "RUNNING") == 4, task_rows(conn)  # adopted within the lease
    wait_job_end(slurm_env, sub)
    rows = task_rows(conn)
    detail = f"{rows}\n{job_output(sub)}"
    assert {state for _id, state, *_ in rows} == {"JOB_FINISHED"}, detail
    assert all(r[2:] == (0, 0, 1) for r in rows), detail  # each lost once, with the dead run
    done = {r[0]: r[1] for r in conn.execute(
        "SELECT task_id, count(*) FROM task_events WHERE to_state = 'RUN_DONE' GROUP BY 1")}
    assert done == {t: 1 for t in ids}, detail
    assert batch_job(conn, sub["batch_job_id"]) == ("FINISHED", "idle"), detail
    assert "an earlier run of this batch job ended without closing it" in detail, detail
    no_strays(dbname)


# -- the end time, asked of Slurm ------------------------------------------------------------
def test_a_launcher_started_by_hand_learns_the_end_of_its_job(
        slurm_env: LocalSlurm, conn: Any, pg_project: Project, dbname: str,
        tmp_path: Path) -> None:
    """Slurm 22.05 gives the job neither SLURM_JOB_END_TIME nor SLURM_JOB_START_TIME; a
    launcher started without --time-limit-min asks squeue, so it never claims a task
    whose wall time cannot fit in what is left of a 3-minute job."""
    add_app(conn, "quick", "sleep 1")
    add_app(conn, "long", "sleep 20")  # its declared wall time is what matters
    quick = add_tasks(conn, "quick", 1)
    long = add_tasks(conn, "long", 1)
    conn.execute("SELECT * FROM tasks_modify(%s::bigint[], '{\"wall_time_min\": 10}')",
                 (long,))
    script = tmp_path / "by-hand.sh"
    out = tmp_path / "by-hand.out"
    script.write_text(textwrap.dedent(f"""\
        #!/bin/bash
        env > {tmp_path / 'env.txt'}
        export PATH="{BIN}:$PATH"
        source {BIN / 'balsamactivate'} {pg_project.root} || exit 1
        srun -N 1 -n 1 {sys.executable} -m balsam_mpi --workflow={dbname}
        """))
    os.chmod(tmp_path, 0o755)
    done = slurm_env.run("sbatch", "--parsable", "-N", "1", "-t", "3", f"--output={out}",
                         str(script))
    job = done.stdout.strip().split(";")[0]
    sub = {"scheduler_job_id": job, "script": str(script)}
    wait_job_end(slurm_env, sub)
    log = "\n".join(p.read_text() for p in (pg_project.log_dir).glob(f"launcher_{job}_r*.log"))
    detail = f"{out.read_text() if out.exists() else ''}\n{log}"
    inside = (tmp_path / "env.txt").read_text()
    if "SLURM_JOB_END_TIME=" not in inside:  # the case this covers (Slurm 22.05 here)
        assert f"the scheduler says job {job} ends at" in log, detail
    states = dict(conn.execute("SELECT id, state::text FROM tasks").fetchall())
    assert states == {quick[0]: "JOB_FINISHED", long[0]: "READY"}, detail
    row = conn.execute("SELECT wall_time_min FROM batch_jobs WHERE scheduler_job_id = %s",
                       (job,)).fetchone()
    assert row is not None and row[0] is not None and 0 < row[0] <= 3, (row, detail)
