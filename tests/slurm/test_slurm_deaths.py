"""Launcher ranks that die in real Slurm jobs, and what it costs: a launcher killed with -9
then the next job (each task once), one node of three lost mid-run (only its tasks lost),
a job requeued after its launcher died (its tasks run by the job's next run). Nothing
here asserts how long anything took."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest

from tests.e2e.test_launcher import no_strays
from tests.slurm.cluster import LocalSlurm
from tests.slurm.jobkit import (
    DONE_STATES,
    add_app,
    add_tasks,
    batch_job,
    count_state,
    job_output,
    job_state,
    launcher_ranks,
    past_the_revocation,
    rank_of,
    running_events,
    submit,
    task_rows,
    wait_for,
    wait_job_end,
)

pytestmark = pytest.mark.timeout(420)


def test_job_after_a_killed_one_finishes_its_tasks_once(slurm_env: LocalSlurm, conn: Any,
                                                        dbname: str) -> None:
    add_app(conn, "nap", "sleep 8")  # still running when killed, just after they start
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


def test_a_node_lost_mid_run_costs_its_own_tasks_only(slurm_env: LocalSlurm, conn: Any,
                                                      dbname: str) -> None:
    """A worker rank killed with -9 (its node died, the kernel's OOM killer) in a
    three-node job: srun lets the other ranks run on, and the leader's sends to the dead
    rank fail (MPICH over OFI). The dead rank's running tasks are written as lost
    (counted) and run again; everything else runs once and the job ends by itself."""
    add_app(conn, "nap", "sleep 8")  # still running when rank 2 is killed, at once
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
    # the lease; a site's requeue need not), once Slurm may start the job id again.
    past_the_revocation(slurm_env)
    slurm_env.run("scontrol", "requeue", job)

    def second_run() -> bool:
        # Made eligible again for as long as it waits. With one update right after the
        # requeue, a loaded run once saw no second run within 120 s; what Slurm said of
        # the job then was not kept, so a failure now shows it (scontrol show job).
        if job_state(slurm_env, job) == "PENDING":
            slurm_env.run("scontrol", "update", f"JobId={job}", "StartTime=now", check=False)
        return bool(conn.execute("SELECT lease_epoch FROM batch_jobs WHERE id = %s",
                                 (sub["batch_job_id"],)).fetchone()[0] == 2)

    wait_for("the job's second run", second_run, 120, lambda: "{}\n{}".format(
        slurm_env.run("scontrol", "show", "job", job, check=False).stdout, job_output(sub)))
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
