"""`balsam-mpi job sync` and `balsam-mpi autoscale` against a real database, with a fake
scheduler (the answers of squeue, and sbatch on PATH as tests/db/test_submit.py fakes it).
The real Slurm runs them in tests/slurm/test_slurm_autoscale.py."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result
from psycopg import sql as pgsql

from balsam_mpi.base import db
from balsam_mpi.base.project import Project
from balsam_mpi.batch import elastic, jobsync, submit
from balsam_mpi.batch.jobscript import JobRequest
from balsam_mpi.cli import cli
from balsam_mpi.dbctl import lifecycle

from .fakesched import fake as _fake
from .test_checked_writes import as_role, roles, su  # noqa: F401  (fixtures)


def _run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False, prog_name="balsam-mpi")


def _as_superuser(project: Project, statement: str, *args: Any) -> None:
    """What only the launcher's functions write (a job's host, a task's holder), written
    by the cluster's superuser to stand in for them."""
    with db.connect(project) as c:
        name = c.info.dbname
    with lifecycle.admin_connect(project, project.read_server_info(), name) as admin:
        admin.execute(statement, args)


def _queued(project: Project, sched_id: str, nodes: int = 1, host: str | None = None,
            **req: Any) -> int:
    """A QUEUED row of the caller's, as `submit` leaves it once the scheduler took it."""
    job = submit._insert(project, JobRequest("slurm", nodes, 10, **req))
    submit._set_scheduler_id(project, job, sched_id)
    if host is not None:
        _as_superuser(project, "UPDATE batch_jobs SET host = %s WHERE id = %s", host, job)
    return job


def _state(conn: Any, job: int) -> tuple[str, str | None]:
    row = conn.execute("SELECT state::text, end_reason FROM batch_jobs WHERE id = %s",
                       (job,)).fetchone()
    return row[0], row[1]


def _ask(answers: dict[str, tuple[str, str]]) -> jobsync.Ask:
    def ask(scheduler: str, ids: Sequence[str]) -> dict[str, Any]:
        assert scheduler == "slurm"
        return {i: answers.get(i, ("unknown", "not listed")) for i in ids}
    return ask


def test_sync_closes_what_the_scheduler_ended_or_forgot(pg_project: Project, conn: Any,
                                                        dbname: str) -> None:
    waiting = _queued(pg_project, "11")
    cancelled = _queued(pg_project, "12")
    forgotten = _queued(pg_project, "13")
    elsewhere = _queued(pg_project, "14", host="login.other-machine")
    odd = _queued(pg_project, "--me")  # not a job id: never put on squeue's command line
    answers = {"11": ("waiting", "PENDING"), "12": ("ended", "CANCELLED")}
    dry = jobsync.sync(conn, _ask(answers), dry_run=True)
    assert sorted(j.id for j, _ in dry.closed) == [cancelled, forgotten]
    assert _state(conn, cancelled) == ("QUEUED", None)  # a dry run changes nothing
    done = jobsync.sync(conn, _ask(answers))
    assert sorted(j.id for j, _ in done.closed) == [cancelled, forgotten]
    assert [j.id for j in done.queued] == [waiting]
    assert sorted(j.id for j, _ in done.unasked) == [elsewhere, odd]
    why = dict((j.id, w) for j, w in done.unasked)
    assert "login.other-machine" in why[elsewhere]
    assert "'--me' is not a slurm job id" in why[odd]
    state, reason = _state(conn, cancelled)
    assert state == "FAILED" and "CANCELLED" in str(reason) and "before its launcher" in \
        str(reason)
    assert _state(conn, forgotten)[0] == "FAILED"
    assert _state(conn, waiting) == ("QUEUED", None)
    assert _state(conn, elsewhere) == ("QUEUED", None)
    assert _state(conn, odd) == ("QUEUED", None)


def test_a_launcher_adopting_the_row_meanwhile_wins(pg_project: Project, conn: Any,
                                                    dbname: str) -> None:
    job = _queued(pg_project, "21")

    def adopted_then_ended(scheduler: str, ids: Sequence[str]) -> dict[str, Any]:
        _as_superuser(pg_project, "UPDATE batch_jobs SET state = 'RUNNING', started_at = "
                                  "now() WHERE id = %s", job)
        return {"21": ("ended", "COMPLETED")}

    done = jobsync.sync(conn, adopted_then_ended)
    assert done.closed == [] and _state(conn, job) == ("RUNNING", None)


def _tasks(conn: Any, n: int, *, workflow: str = "w", num_nodes: int = 1, packing: int = 1,
           tags: dict[str, str] | None = None, state: str = "READY",
           wall_time_min: float = 0.0) -> None:
    conn.execute(
        "INSERT INTO tasks (workflow, app_id, state, num_nodes, node_packing_count, tags, "
        "wall_time_min) SELECT %s, (SELECT id FROM apps WHERE name = 'hello'), %s, %s, %s, "
        "%s::jsonb, %s FROM generate_series(1, %s)",
        (workflow, state, num_nodes, packing, json.dumps(tags or {}), wall_time_min, n))


@pytest.fixture()
def hello(conn: Any, dbname: str) -> None:
    conn.execute("INSERT INTO apps (name, command) VALUES ('hello', 'echo hi')")


def test_the_backlog_is_what_a_job_of_these_filters_would_take(pg_project: Project,
                                                               conn: Any,
                                                               hello: None) -> None:
    _tasks(conn, 32, packing=16)                      # 2 nodes
    _tasks(conn, 3, num_nodes=2)                      # 6 nodes, 2 wide
    _tasks(conn, 2, num_nodes=9)                      # wider than any job here
    _tasks(conn, 8, workflow="other", packing=4)      # 2 nodes, another workflow
    _tasks(conn, 4, tags={"site": "x"}, packing=2)    # 2 nodes, tagged
    _tasks(conn, 5, state="AWAITING_PARENTS")         # not runnable yet
    held = _queued(pg_project, "1")
    _as_superuser(pg_project, "UPDATE tasks SET batch_job_id = %s WHERE id IN (SELECT id "
                              "FROM tasks WHERE workflow = 'w' AND node_packing_count = 16 "
                              "ORDER BY id LIMIT 16)", held)  # held by a launcher: 1 node
    everything = elastic.read_backlog(conn, {}, max_nodes=8)
    assert everything == elastic.Backlog(tasks=16 + 3 + 8 + 4, nodes=1 + 6 + 2 + 2,
                                         widest=2, too_wide=2)
    assert elastic.read_backlog(conn, {"workflows": ["other"]}, 8).nodes == 2
    assert elastic.read_backlog(conn, {"tags": {"site": "x"}}, 8) == elastic.Backlog(
        4, 2.0, 1, 0)
    assert elastic.read_backlog(conn, {"owners": ["nobody"]}, 8).tasks == 0
    # Jobs of at most 2 nodes run tasks of 1 (a 2-node task needs two workers and the
    # leader's node): the 2-node tasks are too wide for them.
    small = elastic.read_backlog(conn, {}, elastic.max_claimable_nodes(2))
    assert (small.tasks, small.too_wide) == (16 + 8 + 4, 3 + 2)


class _Recorder:
    """A stand-in for batch/submit.py's submit: the row as submit writes it (QUEUED, the
    request's filters), no scheduler; the requests it was given, in order."""

    def __init__(self) -> None:
        self.made: list[JobRequest] = []

    def __call__(self, project: Project, req: JobRequest) -> submit.Submission:
        self.made.append(req)
        return submit.Submission(submit._insert(project, req), "slurm", None, Path("/x"))


def test_tasks_longer_than_the_jobs_are_no_backlog_for_them(pg_project: Project,
                                                            conn: Any, hello: None) -> None:
    """A claim skips a task whose wall_time_min passes the launcher's time limit: counted
    as backlog, it would have the autoscaler submit job after job that ends idle."""
    _tasks(conn, 4, workflow="long", wall_time_min=120)
    _tasks(conn, 2, workflow="long", wall_time_min=30)
    assert elastic.read_backlog(conn, {}, 8, time_limit_min=57.0) == elastic.Backlog(
        tasks=2, nodes=2.0, widest=1, too_wide=0, too_long=4)
    assert elastic.read_backlog(conn, {}, 8).tasks == 6  # local, no -t: no limit
    recorder = _Recorder()
    scaling = elastic.Scaling(max_nodes=4)
    short_jobs = JobRequest("slurm", 4, 25, workflows=("long",))  # limit 23.75 min
    look = elastic.tick(pg_project, short_jobs, scaling, ask=_ask({}), submit=recorder)
    assert look.decision.nodes == 0 and look.backlog.too_long == 6, look
    long_jobs = JobRequest("slurm", 4, 60, workflows=("long",))  # limit 57 min
    look = elastic.tick(pg_project, long_jobs, scaling, ask=_ask({}), submit=recorder)
    assert look.decision.nodes == 2 and [r.nodes for r in recorder.made] == [2]


def test_ticks_submit_until_queued_jobs_cover_the_backlog(pg_project: Project, conn: Any,
                                                          hello: None) -> None:
    _tasks(conn, 80, packing=16, workflow="sim")  # 5 nodes
    recorder = _Recorder()
    made, fake_submit = recorder.made, recorder

    req = JobRequest("slurm", 3, 10, workflows=("sim",))
    scaling = elastic.Scaling(max_nodes=3, max_queued=3)
    nobody_ended = _ask({})
    first = elastic.tick(pg_project, req, scaling, ask=nobody_ended, submit=fake_submit)
    assert first.decision.nodes == 3 and first.submitted is not None
    second = elastic.tick(pg_project, req, scaling, ask=nobody_ended, submit=fake_submit)
    assert second.decision.nodes == 2  # 5 nodes of work, 3 queued
    third = elastic.tick(pg_project, req, scaling, ask=nobody_ended, submit=fake_submit)
    assert third.decision.nodes == 0 and "cover" in third.decision.why
    assert [r.nodes for r in made] == [3, 2]
    assert all(r.workflows == ("sim",) for r in made)
    # A job of other filters is not one of these: it does not cover this backlog.
    other = JobRequest("slurm", 3, 10, workflows=("other",))
    assert elastic.tick(pg_project, other, scaling, ask=nobody_ended,
                        submit=fake_submit).decision.why.startswith("no runnable work")


def test_autoscale_and_sync_from_the_command_line(pg_project: Project, conn: Any,
                                                  hello: None, fakebin: Path) -> None:
    _tasks(conn, 40, packing=16)  # 2.5 nodes
    _fake(fakebin, "sbatch", "echo 9001")
    _fake(fakebin, "squeue", "echo '9001|PENDING'")
    dry = _run("autoscale", "--scheduler", "slurm", "-n", "4", "-t", "10", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "submitting 3 node(s) (dry run: nothing submitted)" in dry.output
    assert conn.execute("SELECT count(*) FROM batch_jobs").fetchone() == (0,)
    once = _run("autoscale", "--scheduler", "slurm", "-n", "4", "-t", "10", "--once",
                "--idle-timeout", "30")
    assert once.exit_code == 0, once.output
    assert "batch job" in once.output and "(slurm job 9001)" in once.output
    row = conn.execute("SELECT nodes, state::text, scheduler_job_id FROM batch_jobs"
                       ).fetchone()
    assert row == (3, "QUEUED", "9001")
    # The newest script: other tests of this module submit into the same project.
    script = max((pg_project.root / "qsubmit").glob("slurm-*/job.sh"),
                 key=lambda p: p.stat().st_mtime_ns).read_text()
    assert "--idle-timeout" in script
    again = _run("autoscale", "--scheduler", "slurm", "-n", "4", "-t", "10", "--once")
    assert "queued at most (--max-queued)" in again.output, again.output
    # The job is cancelled before it starts: sync closes its row, and the next look
    # submits again.
    _fake(fakebin, "squeue", "echo '9001|CANCELLED'")
    synced = _run("job", "sync")
    assert synced.exit_code == 0, synced.output
    assert "closed batch job" in synced.output and "CANCELLED" in synced.output
    assert conn.execute("SELECT state::text FROM batch_jobs").fetchone() == ("FAILED",)
    argv = (fakebin / "squeue.argv").read_text().split()
    assert argv[1:] == ["-h", "-t", "all", "-j", "9001", "-o", "%i|%T"]


@pytest.mark.parametrize(("args", "needle"), [
    (["-n", "0"], "--max-nodes"),
    (["-n", "2", "--min-nodes", "3"], "--min-nodes 3 is more than --max-nodes 2"),
    (["-n", "4", "--min-nodes", "2", "--max-total-nodes", "1"],
     "--max-total-nodes 1 is less than --min-nodes 2"),
    (["-n", "2", "--max-queued", "x"], "--max-queued"),
    (["-n", "2", "--interval", "0"], "--interval"),
    (["-n", "2", "--persistent"], "--persistent"),
    (["-n", "2", "--workflow", "a\nb"], "--workflow"),
])
def test_bad_input_is_one_line_and_writes_nothing(conn: Any, dbname: str, args: list[str],
                                                  needle: str) -> None:
    result = _run("autoscale", "--scheduler", "slurm", "-t", "10", "--once", *args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], lines
    assert conn.execute("SELECT count(*) FROM batch_jobs").fetchone() == (0,)


def test_a_scheduler_that_cannot_be_asked_leaves_rows_queued(pg_project: Project,
                                                             conn: psycopg.Connection[Any],
                                                             fakebin: Path) -> None:
    job = _queued(pg_project, "31")
    _fake(fakebin, "squeue", "echo 'slurm_load_jobs error: Unable to contact slurm "
                             "controller' >&2; exit 1")
    result = _run("job", "sync")
    assert result.exit_code == 0, result.output
    assert "stays QUEUED: squeue failed" in result.output
    assert _state(conn, job) == ("QUEUED", None)


def test_the_loop_looks_again_and_ends_on_sigterm(conn: Any, hello: None,
                                                  fakebin: Path) -> None:
    """Without --once: a look every --interval seconds until SIGTERM, which ends it
    between looks with status 0; a look that decides what the last one did, with the same
    figures, prints nothing."""
    import signal
    import subprocess
    import sys
    import time

    _tasks(conn, 4)
    _fake(fakebin, "sbatch", "echo 9101")
    looks = fakebin / "looks"
    _fake(fakebin, "squeue", f"echo look >> {looks}; echo '9101|PENDING'")
    cli_path = str(Path(sys.executable).with_name("balsam-mpi"))
    proc = subprocess.Popen([cli_path, "autoscale", "--scheduler", "slurm", "-n", "2",
                             "-t", "10", "--interval", "1"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        # The first look submits (no row to ask about yet); each later one asks squeue.
        while (not looks.exists() or len(looks.read_text().split()) < 3) \
                and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 2, lines
    assert "submitting 2 node(s): batch job" in lines[0], lines
    assert "--max-queued" in lines[1], lines
    assert conn.execute("SELECT count(*) FROM batch_jobs").fetchone() == (1,)


def test_two_autoscalers_of_one_user_and_filters_do_not_both_submit(
        pg_project: Project, conn: Any, hello: None) -> None:
    """A look holds a lock of the user and its filters: one made while another look holds
    it is skipped, and submits nothing; other filters are not held up."""
    _tasks(conn, 16, workflow="sim")
    recorder = _Recorder()
    made, fake_submit = recorder.made, recorder

    req = JobRequest("slurm", 2, 10, workflows=("sim",))
    scaling = elastic.Scaling(max_nodes=2, max_queued=5)

    def look_inside_a_look(project: Project, inner_req: JobRequest) -> Any:
        inner = elastic.tick(project, req, scaling, ask=_ask({}), submit=fake_submit)
        assert inner.decision.nodes == 0 and "skipped" in inner.decision.why
        other = JobRequest("slurm", 2, 10, workflows=("other",))
        assert elastic.tick(project, other, scaling, ask=_ask({}), submit=fake_submit
                            ).decision.why.startswith("no runnable work")
        return fake_submit(project, inner_req)

    outer = elastic.tick(pg_project, req, scaling, ask=_ask({}), submit=look_inside_a_look)
    assert outer.decision.nodes == 2 and [r.nodes for r in made] == [2]
    # The lock is given back: the next look goes ahead.
    assert elastic.tick(pg_project, req, scaling, ask=_ask({}),
                        submit=fake_submit).decision.nodes == 2


def test_the_lock_is_the_callers_own_and_one_per_session(
        pg_project: Project, dbname: str, su: Any, roles: dict[str, str]  # noqa: F811
) -> None:
    """Members reach advisory locks only through migration 0024's pair: keyed by their
    own name (alice cannot hold up bob), one at a time (no filling the lock table)."""
    with as_role(su, roles["alice"]) as conn:
        assert conn.execute("SELECT autoscale_try_lock('{\"workflows\": [\"a\"]}')"
                            ).fetchone() == (True,)
        assert conn.execute("SELECT autoscale_try_lock('{\"workflows\": [\"b\"]}')"
                            ).fetchone() == (False,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT pg_try_advisory_lock(1)")
    with lifecycle.admin_connect(pg_project, pg_project.read_server_info(), dbname) as other:
        other.execute(pgsql.SQL("SET SESSION AUTHORIZATION {}").format(
            pgsql.Identifier(roles["bob"])))
        assert other.execute("SELECT autoscale_try_lock('{\"workflows\": [\"a\"]}')"
                             ).fetchone() == (True,)
    with as_role(su, roles["alice"]) as conn:
        assert conn.execute("SELECT autoscale_unlock('{\"workflows\": [\"a\"]}')"
                            ).fetchone() == (True,)


def test_no_member_holds_up_anothers_autoscaler_with_a_colliding_key(
        pg_project: Project, dbname: str, su: Any, roles: dict[str, str]  # noqa: F811
) -> None:
    """0024 keyed the lock by a 32-bit hash of "user filters". A member can search for
    filters of their own whose key is another member's (for a given target about 2**32
    hashes, minutes of CPU; here a birthday pair, found in a second), hold that lock in
    an idle session, and every look of the other's autoscaler with those filters is
    skipped: it never submits. Since 0027 the user is a key of its own, not hashed."""
    alice, bob = roles["alice"], roles["bob"]
    pair = su.execute(
        "WITH a AS (SELECT x.f, hashtext(%s || ' ' || x.f) AS h FROM ("
        "             SELECT jsonb_build_object('workflows', jsonb_build_array('a' || i))::text"
        "                    AS f FROM generate_series(1, 300000) i) x),"
        "     b AS (SELECT y.f, hashtext(%s || ' ' || y.f) AS h FROM ("
        "             SELECT jsonb_build_object('workflows', jsonb_build_array('b' || i))::text"
        "                    AS f FROM generate_series(1, 300000) i) y)"
        " SELECT a.f, b.f FROM a JOIN b ON a.h = b.h",  # no LIMIT: with one, a nested loop
        (alice, bob)).fetchone()
    assert pair is not None  # about 21 pairs are expected; none at all: 1 in 10**9
    alices, bobs = pair
    with lifecycle.admin_connect(pg_project, pg_project.read_server_info(), dbname) as other:
        other.execute(pgsql.SQL("SET SESSION AUTHORIZATION {}").format(
            pgsql.Identifier(bob)))
        assert other.execute("SELECT autoscale_try_lock(%s::jsonb)", (bobs,)
                             ).fetchone() == (True,)
        with as_role(su, alice) as conn:
            assert conn.execute("SELECT autoscale_try_lock(%s::jsonb)", (alices,)
                                ).fetchone() == (True,), "bob's lock holds up alice's looks"
            assert conn.execute("SELECT autoscale_unlock(%s::jsonb)", (alices,)
                                ).fetchone() == (True,)
        assert other.execute("SELECT autoscale_unlock(%s::jsonb)", (bobs,)
                             ).fetchone() == (True,)


def test_running_jobs_adopted_by_their_launchers_count_against_the_limits(
        pg_project: Project, conn: Any, hello: None, store: Any) -> None:
    """A launcher records all its filters when it adopts its row, the empty ones too
    ({"workflows": ["sim"], "tags": {}, "owners": []}); `submit` records only those given.
    The autoscaler's running job is still its own: --max-total-nodes counts it."""
    from balsam_mpi.launcher.storeport import ClaimFilter

    _tasks(conn, 16, workflow="sim")
    req = JobRequest("slurm", 2, 10, workflows=("sim",))
    scaling = elastic.Scaling(max_nodes=2, max_queued=1, max_total_nodes=2)
    recorder = _Recorder()
    first = elastic.tick(pg_project, req, scaling, ask=_ask({}), submit=recorder)
    assert first.decision.nodes == 2
    job = first.submitted.batch_job_id
    store.open_job(job_id=job, scheduler="slurm", scheduler_job_id="51", host="n1",
                   nodes=2, ranks=2, filters=ClaimFilter(("sim",)), wall_time_min=10,
                   lease_sec=60)
    assert _state(conn, job) == ("RUNNING", None)
    assert [j.id for j in elastic.active_jobs(conn, {"workflows": ["sim"]})] == [job]
    second = elastic.tick(pg_project, req, scaling, ask=_ask({}), submit=recorder)
    assert second.decision.nodes == 0 and "--max-total-nodes" in second.decision.why, \
        second.decision
    assert [r.nodes for r in recorder.made] == [2]


def test_a_job_sbatch_sent_to_another_cluster_is_asked_about_there(
        pg_project: Project, conn: Any, hello: None, fakebin: Path) -> None:
    """`sbatch -M other` (a --directive, or SLURM_CLUSTERS) prints ``77;other``: the job
    waits on cluster "other", which a plain squeue does not ask ("Invalid job id"). The
    row must stay QUEUED, not be closed as forgotten (and the next look submit again)."""
    _tasks(conn, 4)
    _fake(fakebin, "sbatch", "echo '77;other'")
    _fake(fakebin, "squeue", 'if [[ " $* " == *" --clusters=other "* ]]; then '
                             "echo 'CLUSTER: other'; echo '77|PENDING'; else "
                             "echo 'slurm_load_jobs error: Invalid job id specified' >&2; "
                             "exit 1; fi")
    flags = ["--scheduler", "slurm", "-n", "1", "-t", "10", "--once", "--directive",
             "--clusters=other"]
    first = _run("autoscale", *flags)
    assert first.exit_code == 0 and "submitting 1 node(s)" in first.output, first.output
    synced = _run("job", "sync")
    assert "0 closed, 1 still queued" in synced.output, synced.output
    assert conn.execute("SELECT state::text, scheduler_job_id FROM batch_jobs"
                        ).fetchall() == [("QUEUED", "77;other")]
    assert (fakebin / "squeue.argv").read_text().split()[1:] == [
        "-h", "-t", "all", "--clusters=other", "-j", "77", "-o", "%i|%T"]
    again = _run("autoscale", *flags)
    assert "--max-queued" in again.output, again.output
    assert conn.execute("SELECT count(*) FROM batch_jobs").fetchone() == (1,)


def test_sigterm_during_a_once_submission_lets_it_finish(conn: Any, hello: None,
                                                         fakebin: Path) -> None:
    """SIGTERM (a cron line's `timeout`, a batch system ending a workflow job) that
    arrives while sbatch runs must not kill `autoscale --once` between the row and the
    id sbatch printed: a QUEUED row without a scheduler id is never asked about by
    `job sync`, and counts as a queued job of these filters for ever (--max-queued)."""
    import subprocess
    import sys

    _tasks(conn, 4)
    _fake(fakebin, "sbatch", "kill -TERM $PPID; echo 9201")
    cli_path = str(Path(sys.executable).with_name("balsam-mpi"))
    done = subprocess.run([cli_path, "autoscale", "--scheduler", "slurm", "-n", "1",
                           "-t", "10", "--once"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert conn.execute("SELECT state::text, scheduler_job_id FROM batch_jobs"
                        ).fetchall() == [("QUEUED", "9201")], (done.returncode, done.stderr)
    assert done.returncode == 0 and "(slurm job 9201)" in done.stdout, done


def test_a_squeue_that_cannot_be_run_is_one_line(pg_project: Project, conn: Any,
                                                 fakebin: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A site's squeue that cannot be executed (a wrapper without a #! line, or without
    the execute bit for this user) is a scheduler that cannot be asked: its rows stay
    QUEUED, and the loop looks again, instead of a traceback."""
    job = _queued(pg_project, "61")
    squeue = _fake(fakebin, "squeue", "echo '61|PENDING'")
    squeue.write_text("echo '61|PENDING'\n")  # no #!: exec fails with ENOEXEC
    monkeypatch.setenv("PATH", str(fakebin))  # the only squeue
    result = _run("job", "sync")
    assert result.exit_code == 0, result.output
    assert "stays QUEUED: squeue could not be run" in result.output, result.output
    assert _state(conn, job) == ("QUEUED", None)


def test_an_sbatch_that_cannot_be_run_is_a_failed_submission(
        conn: Any, hello: None, fakebin: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """sbatch on PATH that exec refuses (a site wrapper without a #! line): one error
    line and a FAILED row, as for any refused submission; no traceback, which would end
    the loop of `autoscale` instead of its look."""
    _tasks(conn, 2)
    sbatch = _fake(fakebin, "sbatch", "echo 9301")
    sbatch.write_text("echo 9301\n")  # no #!: exec fails with ENOEXEC
    monkeypatch.setenv("PATH", str(fakebin))  # the only sbatch
    result = CliRunner().invoke(cli, ["autoscale", "--scheduler", "slurm", "-n", "1", "-t",
                                      "10", "--once"], prog_name="balsam-mpi")
    assert not isinstance(result.exception, OSError), result.exception
    assert result.exit_code != 0 and "sbatch` could not be run" in result.output, \
        result.output
    assert conn.execute("SELECT state::text FROM batch_jobs").fetchall() == [("FAILED",)]


def test_a_submission_that_never_recorded_its_id_is_closed_once_stale(
        pg_project: Project, conn: Any, dbname: str) -> None:
    """A submitter killed between its row and sbatch's answer leaves a QUEUED row with
    no scheduler id, which no scheduler can be asked about and every autoscaler counts
    as a queued job for ever. Past the submission's own timeout it cannot still get an
    id, so sync closes it; a younger one, a local run's (no id ever) and another user's
    stay."""
    stale = submit._insert(pg_project, JobRequest("slurm", 1, 10))
    young = submit._insert(pg_project, JobRequest("slurm", 1, 10))
    local = submit._insert(pg_project, JobRequest("local", 1, 10))
    other = submit._insert(pg_project, JobRequest("slurm", 1, 10))
    age = jobsync.UNSUBMITTED_AFTER_S + 60
    _as_superuser(pg_project, "UPDATE batch_jobs SET submitted_at = now() - "
                              "make_interval(secs => %s) WHERE id = ANY(%s)",
                  age, [stale, local, other])
    with db.connect(pg_project) as c:
        name = c.info.dbname
    with lifecycle.admin_connect(pg_project, pg_project.read_server_info(), name) as admin:
        # Another member's row (a row's user cannot change: triggers off for the plant).
        admin.execute("SET session_replication_role = replica")
        admin.execute("UPDATE batch_jobs SET \"user\" = 'someone_else' WHERE id = %s",
                      (other,))

    def never(scheduler: str, ids: Sequence[str]) -> dict[str, Any]:
        raise AssertionError(f"asked {scheduler} about {list(ids)}: there is no id to ask")

    said = _run("--project", str(pg_project.root), "job", "sync", "--dry-run")
    assert f"would close batch job {stale} (slurm, no job id)" in said.output
    dry = jobsync.sync(conn, never, dry_run=True)
    assert [j.id for j, _ in dry.closed] == [stale]
    assert _state(conn, stale) == ("QUEUED", None)
    done = jobsync.sync(conn, never)
    assert [j.id for j, _ in done.closed] == [stale]
    state, reason = _state(conn, stale)
    assert state == "FAILED" and "no scheduler job id" in str(reason)
    for job in (young, local, other):
        assert _state(conn, job) == ("QUEUED", None)
    out = _run("--project", str(pg_project.root), "job", "sync")
    assert out.exit_code == 0 and "0 closed" in out.output


# -- another login node of the same cluster; a submission whose answer was lost ------------
_CONFIG = ("Configuration data as of 2024-01-01T00:00:00\nAccountingStorageType = "
           "accounting_storage/none\nClusterName = {name}\nSlurmctldHost[0] = {ctl}(10.0.0.1)\n")


def test_another_login_node_of_the_same_cluster_closes_a_forgotten_job(
        pg_project: Project, conn: Any, hello: None, fakebin: Path) -> None:
    """A row records the scheduler cluster it was submitted to (scontrol's ClusterName
    and controller). An autoscaler restarted on another login node of that cluster, whose
    host name differs, closes the row once squeue forgets its job (before: it stayed
    QUEUED for ever, "submitted from login1"); a row of another cluster, or one without
    an identity from another host, stays (the host rule)."""
    _tasks(conn, 2)
    _fake(fakebin, "scontrol", f"printf '{_CONFIG.format(name='polaris', ctl='ctl1')}'")
    _fake(fakebin, "sbatch", "echo 9501")
    done = submit.submit(pg_project, JobRequest("slurm", 1, 10))
    row = submit.get(pg_project, done.batch_job_id)
    assert row is not None and row["sched_cluster"] == "polaris@ctl1", row
    other_cluster = _queued(pg_project, "9502")
    unknown = _queued(pg_project, "9503")
    _as_superuser(pg_project, "UPDATE batch_jobs SET host = 'login1'")
    _as_superuser(pg_project, "UPDATE batch_jobs SET sched_cluster = 'theta@ctl9' "
                              "WHERE id = %s", other_cluster)
    _fake(fakebin, "squeue", "echo 'slurm_load_jobs error: Invalid job id specified' >&2; "
                             "exit 1")
    synced = jobsync.sync(conn, host="login2")
    assert [j.id for j, _ in synced.closed] == [done.batch_job_id], synced
    assert sorted(j.id for j, _ in synced.unasked) == [other_cluster, unknown]
    assert "login1 to theta@ctl9" in dict((j.id, w) for j, w in synced.unasked)[
        other_cluster]
    assert _state(conn, done.batch_job_id)[0] == "FAILED"
    assert _state(conn, other_cluster) == ("QUEUED", None)
    assert _state(conn, unknown) == ("QUEUED", None)
    # A host whose scheduler cannot say who it is keeps the host rule, even for a row
    # that has an identity.
    again = _queued(pg_project, "9504")
    _as_superuser(pg_project, "UPDATE batch_jobs SET host = 'login1', sched_cluster = "
                              "'polaris@ctl1' WHERE id = %s", again)
    _fake(fakebin, "scontrol", "echo 'slurm_load_ctl_conf error' >&2; exit 1")
    assert again in [j.id for j, _ in jobsync.sync(conn, host="login2").unasked]
    assert _state(conn, again) == ("QUEUED", None)


def _lost_sbatch(fakebin: Path, queued: bool) -> None:
    """sbatch that hands the job to the controller (or not) and never answers; squeue
    lists the caller's jobs with the comment sbatch was given."""
    comment = fakebin / "comment"
    keep = f"sed -n 's/^--comment=//p' {fakebin}/sbatch.argv > {comment}; " if queued else ""
    _fake(fakebin, "sbatch", keep + "exec sleep 60")
    _fake(fakebin, "squeue", f'if [ -s {comment} ]; then echo "9601|PENDING|$(id -un)|'
                             f'$(cat {comment})"; echo "9602|PENDING|someone|$(cat {comment})";'
                             ' fi')


def test_a_lost_answer_is_looked_for_only_on_the_same_cluster(
        pg_project: Project, conn: Any, dbname: str, fakebin: Path) -> None:
    """"No job with this comment" means something only where the same scheduler is
    asked: from another host of another (or an unknown) cluster the row stays."""
    job = submit._insert(pg_project, JobRequest("slurm", 1, 10), "polaris@ctl1",
                         "0123456789abcdef")
    _as_superuser(pg_project, "UPDATE batch_jobs SET host = 'login1', uncertain_at = "
                              "now(), submitted_at = now() - interval '1 hour'")

    def never(scheduler: str, comments: Sequence[str]) -> dict[str, Any]:
        raise AssertionError(f"looked for {list(comments)} on another cluster")

    synced = jobsync.sync(conn, host="login2", find=never, identity=lambda _s: "theta@ctl9")
    assert [j.id for j, _ in synced.unasked] == [job] and synced.closed == []
    synced = jobsync.sync(conn, host="login2", find=never, identity=lambda _s: None)
    assert [j.id for j, _ in synced.unasked] == [job]
    assert _state(conn, job) == ("QUEUED", None)
    synced = jobsync.sync(conn, host="login2", find=lambda _s, _c: {},
                          identity=lambda _s: "polaris@ctl1")
    assert [j.id for j, _ in synced.closed] == [job]


def test_only_the_callers_own_row_is_marked_uncertain(
        pg_project: Project, dbname: str, su: Any, roles: dict[str, str]  # noqa: F811
) -> None:
    """The marking function is the caller's, on a QUEUED row without an id; the new
    columns take only their shapes."""
    with as_role(su, roles["alice"]) as conn:
        job = conn.execute("SELECT batch_job_submit('slurm', 'h', 1, '{}', NULL, "
                           "'c@x', '00112233445566778899')").fetchone()[0]
        for bad in (("c x", None), ("c@x", "NOTHEX0123456789"), ("c;rm", None)):
            with pytest.raises(psycopg.errors.CheckViolation):
                conn.execute("SELECT batch_job_submit('slurm', 'h', 1, '{}', NULL, %s, %s)",
                             bad)
    with as_role(su, roles["bob"]) as conn:
        assert conn.execute("SELECT batch_job_submit_uncertain(%s)", (job,)
                            ).fetchone() == (None,)
    with as_role(su, roles["alice"]) as conn:
        assert conn.execute("SELECT batch_job_submit_uncertain(%s)", (job,)
                            ).fetchone() == (job,)


def _lost_qsub(fakebin: Path, queued: bool) -> None:
    """PBS's qsub that hands the job to the server (or not) and never answers; qstat
    names its server (-B -f), lists the jobs with their Variable_List, wrapped as PBS
    wraps it (-f), one of the caller's and one of someone else's with a copy of the
    mark, and says the caller's job waits (-x -f ID)."""
    mark = fakebin / "mark"
    keep = (f"sed -n 's/^BALSAM_SUBMIT=//p' {fakebin}/qsub.argv > {mark}; " if queued
            else "")
    _fake(fakebin, "qsub", keep + "exec sleep 60")
    _fake(fakebin, "qstat", f"""
case "$*" in
  "-B -f") printf 'Server: pbs01\\n    server_state = Active\\n' ;;
  "-f") if [ -s {mark} ]; then m=$(cat {mark})
          printf 'Job Id: 8802.pbs01\\n    Job_Owner = someone@login1\\n'
          printf '    job_state = Q\\n    Variable_List = BALSAM_SUBMIT=%s\\n' "$m"
          printf 'Job Id: 8801.pbs01\\n    Job_Owner = %s@login1\\n' "$(id -un)"
          printf '    job_state = Q\\n    Variable_List = PBS_O_HOME=/h,BALSAM_SUBMIT=%s\\n' \
                 "${{m:0:12}}"
          printf '\\t%s,PBS_O_WORKDIR=/w\\n' "${{m:12}}"
        fi ;;
  *) printf 'Job Id: 8801.pbs01\\n    job_state = Q\\n' ;;
esac""")


# Per scheduler: its submit command, the fake that loses its answer, the argument that
# carries the mark, the id of the job found by it, and a second submission's id.
_LOST = {
    "slurm": ("sbatch", _lost_sbatch, "--comment=balsam:{job}:{token}", "9601", "9700"),
    "pbs": ("qsub", _lost_qsub, "BALSAM_SUBMIT=balsam:{job}:{token}", "8801.pbs01",
            "8900.pbs01"),
}


@pytest.mark.parametrize("queued", [True, False])
@pytest.mark.parametrize("scheduler", sorted(_LOST))
def test_a_submission_that_never_answered_neither_loses_the_job_nor_submits_twice(
        pg_project: Project, conn: Any, hello: None, fakebin: Path,
        monkeypatch: pytest.MonkeyPatch, scheduler: str, queued: bool) -> None:
    """sbatch (Slurm) or qsub (PBS) times out: the job may be queued. The row stays
    QUEUED (marked uncertain), so the next look submits no second job; the sync finds
    the job by the mark the submission carried (Slurm's comment, PBS's variable in
    `qstat -f`: the caller's jobs only) and records its id. When no job carries it, the
    row is closed once no submission could still appear, and only then does a look
    submit again."""
    tool, lose, mark_arg, found_id, second_id = _LOST[scheduler]
    kind = "comment" if scheduler == "slurm" else "variable"
    _tasks(conn, 4)
    lose(fakebin, queued)
    monkeypatch.setattr(submit, "SUBMIT_TIMEOUT_SEC", 1)
    req = JobRequest(scheduler, 1, 10)
    scaling = elastic.Scaling(max_nodes=1)
    with pytest.raises(submit.SubmitUncertain, match="may be queued or not"):
        elastic.tick(pg_project, req, scaling)
    (job,) = [r[0] for r in conn.execute("SELECT id FROM batch_jobs")]
    row = submit.get(pg_project, job)
    assert row is not None and row["state"] == "QUEUED" and row["uncertain_at"], row
    if scheduler == "pbs":
        assert row["sched_cluster"] == "pbs:pbs01"
    argv = (fakebin / f"{tool}.argv").read_text().splitlines()
    assert mark_arg.format(job=job, token=row["submit_token"]) in argv
    _fake(fakebin, tool, f"echo {second_id}")  # a second submission would now succeed
    look = elastic.tick(pg_project, req, scaling)
    assert look.submitted is None and "--max-queued" in look.decision.why, look
    if queued:
        assert [(j.id, j.scheduler_job_id) for j, _ in look.synced.found] == [
            (job, found_id)]
        assert conn.execute("SELECT state::text, scheduler_job_id FROM batch_jobs"
                            ).fetchall() == [("QUEUED", found_id)]
        return
    assert [j.id for j, _ in look.synced.unasked] == [job]
    assert f"no job with the {kind}" in look.synced.unasked[0][1]
    _as_superuser(pg_project, "UPDATE batch_jobs SET submitted_at = now() - "
                              "make_interval(secs => %s)", jobsync.UNSUBMITTED_AFTER_S + 60)
    later = elastic.tick(pg_project, req, scaling)
    assert [j.id for j, _ in later.synced.closed] == [job], later
    state, reason = _state(conn, job)
    assert state == "FAILED" and f"lists no job with its {kind}" in str(reason)
    assert later.submitted is not None and later.submitted.scheduler_job_id == second_id


def test_a_lost_cobalt_answer_still_closes_the_row(
        pg_project: Project, conn: Any, dbname: str, fakebin: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`job sync` cannot ask Cobalt about jobs, so a Cobalt job found later could never be
    followed: its submission carries no mark and a lost answer closes the row."""
    _fake(fakebin, "qsub", "exec sleep 60")
    monkeypatch.setattr(submit, "SUBMIT_TIMEOUT_SEC", 1)
    with pytest.raises(submit.SubmitError) as info:
        submit.submit(pg_project, JobRequest("cobalt", 1, 10))
    assert not isinstance(info.value, submit.SubmitUncertain)
    assert conn.execute("SELECT state::text, submit_token FROM batch_jobs").fetchall() == [
        ("FAILED", None)]
