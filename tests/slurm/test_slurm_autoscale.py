"""`balsam-mpi autoscale` and `balsam-mpi job sync` on a real Slurm: a look submits a job
sized to the backlog, whose launcher runs it and ends when idle; the next look sees no
work; a pending job cancelled with `scancel` is closed by `job sync`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from balsam_mpi.base.project import Project
from tests.db.test_autoscale import _as_superuser
from tests.e2e.test_launcher import no_strays
from tests.slurm.cluster import LocalSlurm
from tests.slurm.jobkit import (
    BIN,
    add_app,
    add_tasks,
    batch_job,
    count_state,
    job_output,
    job_state,
    submit,
    wait_job_end,
)

pytestmark = pytest.mark.timeout(420)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(BIN / "balsam-mpi"), *args], capture_output=True, text=True,
                          timeout=180, check=False)
    assert done.returncode == 0, (done.stdout, done.stderr)
    return done


def test_autoscale_submits_for_the_backlog_and_stops_when_it_is_gone(
        slurm_env: LocalSlurm, conn: Any, pg_project: Project, dbname: str) -> None:
    add_app(conn, "echo", "echo scaled")
    tasks = add_tasks(conn, "echo", 6)  # 6 nodes of work, 1 node each
    flags = ["--scheduler", "slurm", "-n", "2", "-t", "5", "--workflow", dbname,
             "--idle-timeout", "3", "--max-total-nodes", "2"]
    look = _cli("autoscale", *flags, "--once").stdout
    found = re.search(r"submitting 2 node\(s\): batch job (\d+) \(slurm job (\d+)\)", look)
    assert found, look
    row, job = int(found.group(1)), found.group(2)
    assert conn.execute("SELECT nodes, filters FROM batch_jobs WHERE id = %s",
                        (row,)).fetchone() == (2, {"workflows": [dbname]})
    # While it waits or runs, a second look submits nothing more: its 2 nodes are all
    # --max-total-nodes allows.
    second = _cli("autoscale", *flags, "--once").stdout
    assert "submitting" not in second and ("--max-total-nodes" in second or "--max-queued"
                                           in second or "no runnable" in second), second
    script = next((pg_project.root / "qsubmit").glob(f"slurm-{row}-*/job.sh"))
    sub = {"scheduler_job_id": job, "script": str(script), "batch_job_id": row}
    wait_job_end(slurm_env, sub)
    assert count_state(conn, "JOB_FINISHED") == len(tasks), job_output(sub)
    assert batch_job(conn, row)[0] == "FINISHED", job_output(sub)
    last = _cli("autoscale", *flags, "--once").stdout
    assert "no runnable work" in last and "submitting" not in last, last
    assert conn.execute("SELECT count(*) FROM batch_jobs").fetchone() == (1,)
    no_strays(dbname)


def test_job_sync_closes_a_job_cancelled_while_pending(slurm_env: LocalSlurm, conn: Any,
                                                       dbname: str) -> None:
    sub = submit("-n", "1", "-t", "5", "--workflow", dbname, "--directive",
                 "--begin=now+3600")
    job = sub["scheduler_job_id"]
    assert job_state(slurm_env, job) == "PENDING"
    kept = _cli("job", "sync").stdout
    assert "0 closed, 1 still queued" in kept, kept
    slurm_env.run("scancel", job)
    wait_job_end(slurm_env, sub, timeout=60)
    said = _cli("job", "sync").stdout
    assert f"closed batch job {sub['batch_job_id']} (slurm job {job})" in said, said
    state, reason = batch_job(conn, sub["batch_job_id"])
    assert state == "FAILED" and "CANCELLED" in str(reason), (state, reason)


def test_another_login_node_of_the_cluster_closes_a_job_slurm_forgot(
        slurm_env: LocalSlurm, conn: Any, pg_project: Project, dbname: str) -> None:
    """The row records `scontrol show config`'s ClusterName and controller; a sync on a
    host of another name but the same cluster closes a row whose job squeue does not
    know (before, only the submitting host could: the row stayed QUEUED for ever)."""
    from balsam_mpi.batch import clusterid

    here = clusterid.identity("slurm")
    assert here == f"balsamtest@{slurm_env.host}", here
    sub = submit("-n", "1", "-t", "5", "--workflow", dbname, "--directive",
                 "--begin=now+3600")
    row = sub["batch_job_id"]
    assert conn.execute("SELECT sched_cluster FROM batch_jobs WHERE id = %s",
                        (row,)).fetchone() == (here,)
    # A job this cluster never had (ids start at FirstJobId, past 1000), submitted from
    # another login node of the same cluster.
    _as_superuser(pg_project, "UPDATE batch_jobs SET scheduler_job_id = '7', host = "
                              "'login-other' WHERE id = %s", row)
    said = _cli("job", "sync").stdout
    assert f"closed batch job {row} (slurm job 7)" in said, said
    assert batch_job(conn, row)[0] == "FAILED"
    slurm_env.run("scancel", sub["scheduler_job_id"])


def test_an_sbatch_whose_answer_is_lost_is_found_by_its_comment(
        slurm_env: LocalSlurm, conn: Any, pg_project: Project, dbname: str,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """sbatch queues the job but its answer never comes (a wrapper that hangs after the
    real sbatch): the row stays QUEUED, the next look finds the job by the comment the
    submission carried (squeue %k) and records its id, and submits no second job."""
    from balsam_mpi.batch import elastic
    from balsam_mpi.batch import submit as submitting
    from balsam_mpi.batch.jobscript import JobRequest

    add_app(conn, "echo", "echo lost")
    add_tasks(conn, "echo", 1)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    wrapper = bindir / "sbatch"
    wrapper.write_text(f"#!/bin/bash\n{shutil.which('sbatch')} \"$@\" > {tmp_path}/said\n"
                       "exec sleep 120\n")
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setattr(submitting, "SUBMIT_TIMEOUT_SEC", 10)
    req = JobRequest("slurm", 1, 5, workflows=(dbname,), directives=("--begin=now+3600",))
    scaling = elastic.Scaling(max_nodes=1)
    with pytest.raises(submitting.SubmitUncertain):
        elastic.tick(pg_project, req, scaling)
    job = (tmp_path / "said").read_text().strip()  # what the real sbatch printed
    assert job.isdigit(), job
    monkeypatch.setenv("PATH", os.environ["PATH"].split(":", 1)[1])  # the real sbatch
    look = elastic.tick(pg_project, req, scaling)
    assert look.submitted is None, look
    assert [(j.scheduler_job_id) for j, _ in look.synced.found] == [job], look.synced
    assert conn.execute("SELECT state::text, scheduler_job_id FROM batch_jobs "
                        "WHERE filters = %s::jsonb", (f'{{"workflows": ["{dbname}"]}}',)
                        ).fetchall() == [("QUEUED", job)]
    slurm_env.run("scancel", job)
