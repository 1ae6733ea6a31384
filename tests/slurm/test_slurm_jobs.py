"""Launchers in real Slurm jobs, submitted with `balsam-mpi submit --scheduler slurm`:
a multi-node MPI task through srun, and the ways a job ends early — `scancel`, the job's
time limit, Slurm's warning signal — checked in the database afterwards (ranks that die:
test_slurm_deaths.py). Nothing here asserts how long anything took."""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from balsam_mpi.base.project import Project
from balsam_mpi.batch.jobdir import qsubmit_dir
from tests.e2e.test_launcher import no_strays
from tests.slurm.cluster import LocalSlurm
from tests.slurm.jobkit import (
    BIN,
    add_app,
    add_tasks,
    assert_nothing_lost,
    batch_job,
    count_state,
    job_output,
    job_state,
    past_the_revocation,
    running_events,
    submit,
    task_rows,
    wait_for,
    wait_job_end,
)
from tests.unit.test_safe_path import plant

pytestmark = pytest.mark.timeout(420)

HELLO = textwrap.dedent("""\
    import os, sys
    from mpi4py import MPI
    c = MPI.COMM_WORLD
    sys.stdout.write(f"HELLO rank={c.Get_rank()} size={c.Get_size()} "
                     f"node={os.environ.get('SLURMD_NODENAME')} "
                     f"step={os.environ.get('SLURM_STEP_ID')}\\n")
""")



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
    # The job starts in qsubmit/, which members may write: modules planted there (under
    # names its Pythons import) must never be imported (base/safepath.py).
    marks = tmp_path / "marks"
    marks.mkdir()
    plant(qsubmit_dir(pg_project), marks)
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
    assert sorted(p.name for p in marks.iterdir()) == [], job_output(sub)
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


def test_a_link_planted_at_the_jobs_output_name_is_never_written_through(
        slurm_env: LocalSlurm, conn: Any, pg_project: Project, dbname: str,
        tmp_path: Path) -> None:
    """sbatch ran in qsubmit/, where members may add names, and the job's output file
    (`balsam-<job id>.out`, ids come in order) was opened by Slurm as the submitter,
    following links: a member's links at the next ids made the owner's job truncate and
    write whatever file they pointed to. Each submission now has a directory of its own
    that only its submitter can write, and the job starts there."""
    add_app(conn, "echo", "echo small")
    add_tasks(conn, "echo", 2)
    add_app(conn, "mask", "sh -c umask")
    [masked] = add_tasks(conn, "mask", 1)
    victim = tmp_path / "victim"
    victim.write_text("the owner's file\n")
    qdir = qsubmit_dir(pg_project)
    probe = submit("-n", "1", "-t", "5", "--workflow", f"{dbname}-none", "--idle-timeout",
                   "0")
    wait_job_end(slurm_env, probe)
    first = int(probe["scheduler_job_id"]) + 1
    planted = [qdir / f"balsam-{job}.out" for job in range(first, first + 20)]
    for link in planted:
        link.symlink_to(victim)
    old = os.umask(0o002)  # a submitter whose files the group may write by default
    try:
        try:
            sub = submit("-n", "1", "-t", "5", "--workflow", dbname)
        finally:
            os.umask(old)
        assert first <= int(sub["scheduler_job_id"]) < first + 20, sub
        wait_job_end(slurm_env, sub)
        assert victim.read_text() == "the owner's file\n"
        assert count_state(conn, "JOB_FINISHED") == 3, job_output(sub)
        # the job runs with the submitter's umask, group write opened (templates/*.sh)
        mask = (pg_project.task_dir(dbname, masked, "t") / "task.out").read_text()
        assert mask.strip() == "0002", mask
        out = Path(sub["script"]).parent / f"balsam-{sub['scheduler_job_id']}.out"
        assert out.is_file() and not out.is_symlink(), job_output(sub)
        # nobody else writes lines into it either (as the launcher's own logs, 0640)
        assert out.stat().st_mode & 0o022 == 0, oct(out.stat().st_mode)
        assert Path(sub["script"]).parent != qdir
    finally:
        for link in planted:
            link.unlink(missing_ok=True)


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


def test_a_running_job_requeued_runs_its_cut_tasks_in_its_next_run(
        slurm_env: LocalSlurm, conn: Any, dbname: str) -> None:
    """`scontrol requeue` of a running job: Slurm ends it as scancel does (TERM to every
    step), then the same job id runs again. The first run cuts its tasks (requeued, no
    retry spent) and closes the row; the second adopts that closed row under a new epoch
    and runs what is left, each task once more at most."""
    add_app(conn, "nap", "sleep 8")
    ids = add_tasks(conn, "nap", 6, packing=2)
    sub = submit("-n", "2", "-t", "5", "--workflow", dbname)
    job = sub["scheduler_job_id"]
    wait_for("four tasks running", lambda: count_state(conn, "RUNNING") == 4, 120,
             lambda: f"{task_rows(conn)}\n{job_output(sub)}")
    slurm_env.run("scontrol", "requeue", job)
    wait_for("the requeued job pending", lambda: job_state(slurm_env, job) == "PENDING",
             120, lambda: job_output(sub))
    assert_nothing_lost(conn, sub)  # the first run's end: cut, closed, nothing counted
    past_the_revocation(slurm_env)
    slurm_env.run("scontrol", "update", f"JobId={job}", "StartTime=now")
    wait_for("the job's second run", lambda: conn.execute(
        "SELECT lease_epoch FROM batch_jobs WHERE id = %s",
        (sub["batch_job_id"],)).fetchone()[0] == 2, 120, lambda: job_output(sub))
    wait_job_end(slurm_env, sub)
    rows = task_rows(conn)
    detail = f"{rows}\n{job_output(sub)}"
    assert {state for _id, state, *_ in rows} == {"JOB_FINISHED"}, detail
    assert all(tuple(row[2:]) == (0, 0, 0) for row in rows), detail
    # Each task once, and once more for each cut by the requeue (none counted).
    cut = {r[0]: r[1] for r in conn.execute(
        "SELECT task_id, count(*) FROM task_events WHERE to_state = 'RESTART_READY' "
        "GROUP BY 1")}
    assert cut and running_events(conn) == {t: 1 + cut.get(t, 0) for t in ids}, detail
    assert batch_job(conn, sub["batch_job_id"]) == ("FINISHED", "idle"), detail
    assert conn.execute("SELECT count(*) FROM batch_jobs").fetchone()[0] == 1, detail
    no_strays(dbname)


def test_a_job_suspended_for_a_few_seconds_runs_all_its_tasks(
        slurm_env: LocalSlurm, conn: Any, dbname: str) -> None:
    """`scontrol suspend` stops every process of the job (SIGSTOP), `resume` goes on
    (SIGCONT). A few seconds is short of the lease, long enough for the worker to hear
    nothing from its leader: it cuts its tasks and leaves, and the leader runs on alone.
    The tasks the leader had sent it ahead, which it never started, were held by the
    leader until the end: the job went idle with them still READY."""
    add_app(conn, "nap", "sleep 10")
    ids = add_tasks(conn, "nap", 8, packing=2)  # 2 nodes x 2 slots, 4 more waiting
    sub = submit("-n", "2", "-t", "5", "--workflow", dbname)
    job = sub["scheduler_job_id"]
    wait_for("four tasks running", lambda: count_state(conn, "RUNNING") == 4, 120,
             lambda: f"{task_rows(conn)}\n{job_output(sub)}")
    slurm_env.run("scontrol", "suspend", job)
    time.sleep(4)  # past the worker's leader-silence bound with this tier's lease (20 s)
    slurm_env.run("scontrol", "resume", job)
    wait_job_end(slurm_env, sub)
    rows = task_rows(conn)
    detail = f"{rows}\n{job_output(sub)}"
    assert {state for _id, state, *_ in rows} == {"JOB_FINISHED"}, detail
    assert all(tuple(row[2:]) == (0, 0, 0) for row in rows), detail  # cut, not counted
    assert set(running_events(conn)) == set(ids), detail
    assert batch_job(conn, sub["batch_job_id"]) == ("FINISHED", "idle"), detail
    no_strays(dbname)


# -- (c) the job's time limit ----------------------------------------------------------------
def test_one_minute_job_over_five_minute_tasks(slurm_env: LocalSlurm, conn: Any,
                                               dbname: str) -> None:
    """The shortest job Slurm takes: the default margin leaves the launcher half of it
    (30 s), from which it drains this tier's drain grace early."""
    add_app(conn, "long", "sleep 300")
    add_tasks(conn, "long", 4, packing=2)
    sub = submit("-n", "2", "-t", "1", "--workflow", dbname)
    final = wait_job_end(slurm_env, sub)
    assert_nothing_lost(conn, sub)
    # Drained and closed before Slurm's own end of the job: Slurm saw it complete.
    assert final == "COMPLETED", job_output(sub)
    assert running_events(conn), "no task ever ran\n" + job_output(sub)
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
