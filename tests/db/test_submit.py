"""`balsam-mpi submit` against a real database, with fake qsub / sbatch on PATH."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from balsam_mpi.base.errors import UsageError
from balsam_mpi.base.project import Project
from balsam_mpi.batch import submit
from balsam_mpi.batch.jobscript import JobRequest
from balsam_mpi.cli import cli

from .fakesched import fake as _fake


def _count(conn: Any) -> int:
    return int(conn.execute("SELECT count(*) FROM batch_jobs").fetchone()[0])


def _scripts(project: Project) -> set[str]:
    qdir = project.root / "qsubmit"
    return {p.name for p in qdir.iterdir()} if qdir.is_dir() else set()


def test_pbs_submission_is_recorded(pg_project: Project, conn: Any, dbname: str,
                                    fakebin: Path) -> None:
    _fake(fakebin, "qsub", "echo 4242.pbs01.example")
    done = submit.submit(pg_project, JobRequest("pbs", 8, 90, queue="prod", account="proj",
                                                workflows=("wf",)))
    argv = (fakebin / "qsub.argv").read_text().splitlines()
    row = submit.get(pg_project, done.batch_job_id)
    assert row is not None and row["submit_token"]
    # The variable a lost answer's job is found by (batch/uncertain.py).
    # qsub ran in the submission's own directory, the job's output lands there
    assert done.script.parent.parent == pg_project.root / "qsubmit"
    assert argv == [str(done.script.parent), "-v",
                    f"BALSAM_SUBMIT=balsam:{done.batch_job_id}:{row['submit_token']}",
                    str(done.script)]
    assert (row["scheduler"], row["scheduler_job_id"], row["state"]) == (
        "pbs", "4242.pbs01.example", "QUEUED")
    assert (row["nodes"], row["ranks"], row["wall_time_min"]) == (8, 8, 90.0)
    assert row["filters"] == {"workflows": ["wf"]}
    assert row["submitted_at"] is not None and row["started_at"] is None
    text = done.script.read_text()
    assert f"export BALSAM_BATCH_JOB_ID={done.batch_job_id}\n" in text
    assert f"export BALSAM_DB_NAME={dbname}\n" in text
    assert "#PBS -l walltime=01:30:00" in text
    assert stat.S_IMODE(done.script.stat().st_mode) == 0o750
    assert stat.S_IMODE((pg_project.root / "qsubmit").stat().st_mode) == 0o3770
    assert stat.S_IMODE(done.script.parent.stat().st_mode) == 0o2750


def test_a_pbs_directives_variables_travel_with_the_mark(
        pg_project: Project, conn: Any, dbname: str, fakebin: Path) -> None:
    """qsub's -v on the command line replaces the script's #PBS -v: the mark carries the
    variables a --directive (or a template) passes."""
    _fake(fakebin, "qsub", "echo 4243.pbs01")
    done = submit.submit(pg_project, JobRequest("pbs", 1, 10,
                                                directives=("-v MODEL=big,STEPS=4",)))
    row = submit.get(pg_project, done.batch_job_id)
    assert row is not None
    assert "#PBS -v MODEL=big,STEPS=4" in done.script.read_text()
    argv = (fakebin / "qsub.argv").read_text().splitlines()
    assert argv[1:3] == ["-v", "MODEL=big,STEPS=4,BALSAM_SUBMIT=balsam:"
                         f"{done.batch_job_id}:{row['submit_token']}"]


def test_slurm_and_cobalt_ids(pg_project: Project, conn: Any, dbname: str,
                              fakebin: Path) -> None:
    _fake(fakebin, "sbatch", "echo '77;perlmutter'")
    done = submit.submit(pg_project, JobRequest("slurm", 2, 30))
    row = submit.get(pg_project, done.batch_job_id)
    assert row is not None and row["submit_token"]
    # The comment a lost answer's job is found by (batch/uncertain.py).
    assert (fakebin / "sbatch.argv").read_text().splitlines()[1:] == [
        "--parsable", f"--comment=balsam:{done.batch_job_id}:{row['submit_token']}",
        str(done.script)]
    assert done.scheduler_job_id == "77;perlmutter"
    _fake(fakebin, "qsub", "echo 'Job routed to queue \"default\".'; echo 31337")
    done = submit.submit(pg_project, JobRequest("cobalt", 2, 30))
    row = submit.get(pg_project, done.batch_job_id)
    assert row is not None and (row["scheduler"], row["scheduler_job_id"]) == ("cobalt",
                                                                                "31337")


@pytest.mark.parametrize(("scheduler", "body", "says"), [
    ("pbs", "echo 'qsub: Unknown queue' >&2; exit 38", "Unknown queue"),
    ("cobalt", "echo 'all is well'", "cannot find a job id"),  # Cobalt: no mark
])
def test_failed_submission_leaves_a_failed_row(pg_project: Project, conn: Any, dbname: str,
                                               fakebin: Path, scheduler: str, body: str,
                                               says: str) -> None:
    _fake(fakebin, "qsub", body)
    with pytest.raises(submit.SubmitError, match=says):
        submit.submit(pg_project, JobRequest(scheduler, 1, 10))
    rows = conn.execute("SELECT state::text, end_reason, ended_at, scheduler_job_id, "
                        "uncertain_at FROM batch_jobs").fetchall()
    assert len(rows) == 1
    state, reason, ended_at, scheduler_job_id, uncertain_at = rows[0]
    assert state == "FAILED" and says in reason and ended_at is not None
    assert scheduler_job_id is None and uncertain_at is None


def test_a_pbs_qsub_that_exits_0_without_an_id_leaves_the_row_uncertain(
        pg_project: Project, conn: Any, dbname: str, fakebin: Path) -> None:
    """qsub said it worked but printed no id of PBS's form: the job is most likely
    queued, so the row is held (QUEUED, uncertain), not closed, and `submit` says so."""
    _fake(fakebin, "qsub", "echo 'all is well'")
    with pytest.raises(submit.SubmitUncertain, match="may be queued or not"):
        submit.submit(pg_project, JobRequest("pbs", 1, 10))
    rows = conn.execute("SELECT state::text, scheduler_job_id, uncertain_at IS NOT NULL "
                        "FROM batch_jobs").fetchall()
    assert rows == [("QUEUED", None, True)]


def test_bad_input_and_dry_run_write_nothing(pg_project: Project, conn: Any, dbname: str,
                                             fakebin: Path) -> None:
    _fake(fakebin, "qsub", "echo 1")
    before = _scripts(pg_project)
    with pytest.raises(UsageError):
        submit.submit(pg_project, JobRequest("pbs", 1, 10, queue="a;b"))
    result = CliRunner().invoke(cli, ["submit", "--scheduler", "pbs", "-n", "128", "-t", "90",
                                      "-q", "prod", "-A", "myproj", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "#PBS -l walltime=01:30:00" in result.output
    assert "umask g=rwx" in result.output and "balsamactivate" in result.output
    assert "mpiexec -n 128 --ppn 1" in result.output
    result = CliRunner().invoke(cli, ["submit", "--scheduler", "slurm", "-n", "2"])
    assert result.exit_code == 2 and "-t MINUTES" in result.output
    assert _count(conn) == 0
    assert _scripts(pg_project) == before
    assert not (fakebin / "qsub.argv").exists()


def test_missing_scheduler_command_writes_nothing(pg_project: Project, conn: Any,
                                                  dbname: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(submit.SubmitError, match="`sbatch` is not on PATH"):
        submit.submit(pg_project, JobRequest("slurm", 1, 10))
    assert _count(conn) == 0


def test_cli_json(pg_project: Project, conn: Any, dbname: str, fakebin: Path) -> None:
    _fake(fakebin, "sbatch", "echo 991")
    result = CliRunner().invoke(cli, ["submit", "--scheduler", "slurm", "-n", "2", "-t", "5",
                                      "--workflow", "a", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["scheduler_job_id"] == "991" and Path(out["script"]).is_file()
    row = submit.get(pg_project, out["batch_job_id"])
    assert row is not None and row["filters"] == {"workflows": ["a"]}



def test_cli_json_of_a_dry_run_is_json(pg_project: Project, conn: Any, dbname: str) -> None:
    """`--dry-run --json` printed the bare script, which no JSON reader takes."""
    result = CliRunner().invoke(cli, ["submit", "--scheduler", "pbs", "-n", "2", "-t", "30",
                                      "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["dry_run"] is True and out["scheduler"] == "pbs"
    assert out["batch_job_id"] is None and "#PBS -l select=2" in out["script_text"]
    assert _count(conn) == 0

@pytest.mark.parametrize(("scheduler", "shows"), [
    ("slurm", ["#SBATCH --exclusive", "#SBATCH --signal=B:USR1@120",
               "trap 'kill -USR1 \"$launcher\" 2>/dev/null' USR1 INT", "trap ':' TERM",
               "# How this job ends (balsam-mpi submit):", "Slurm's warning: USR1"]),
    ("pbs", ["trap ':' TERM USR1 INT", "kill_delay"]),
    ("cobalt", ["trap 'kill -TERM \"$launcher\" 2>/dev/null' TERM USR1 INT",
                "passes it to aprun"]),
])
def test_dry_run_shows_how_the_end_of_the_job_is_forwarded(
        pg_project: Project, conn: Any, dbname: str, scheduler: str,
        shows: list[str]) -> None:
    result = CliRunner().invoke(cli, ["submit", "--scheduler", scheduler, "-n", "4", "-t",
                                      "60", "--dry-run"])
    assert result.exit_code == 0, result.output
    for part in shows:
        assert part in result.output, (part, result.output)
    assert _count(conn) == 0


def test_dry_run_warning_follows_the_launchers_drain_grace(
        pg_project: Project, conn: Any, dbname: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The warning time comes from the drain grace the job's launcher will use."""
    monkeypatch.setenv("BALSAM_DRAIN_GRACE_S", "150")
    result = CliRunner().invoke(cli, ["submit", "--scheduler", "slurm", "-n", "4", "-t", "60",
                                      "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "#SBATCH --signal" not in result.output
    assert "no Slurm warning signal" in result.output
    for bad in ("soon", "nan", "-5", "inf"):
        monkeypatch.setenv("BALSAM_DRAIN_GRACE_S", bad)
        result = CliRunner().invoke(cli, ["submit", "--scheduler", "slurm", "-n", "4", "-t",
                                          "60", "--dry-run"])
        assert result.exit_code == 2 and "BALSAM_DRAIN_GRACE_S" in result.output, bad
        assert len(result.output.strip().splitlines()) == 1, result.output


def test_shared_nodes_is_for_slurm_only(pg_project: Project, conn: Any, dbname: str) -> None:
    result = CliRunner().invoke(cli, ["submit", "--scheduler", "slurm", "-n", "2", "-t", "30",
                                      "--shared-nodes", "--dry-run"])
    assert result.exit_code == 0 and "--exclusive" not in result.output
    result = CliRunner().invoke(cli, ["submit", "--scheduler", "pbs", "-n", "2", "-t", "30",
                                      "--shared-nodes"])
    assert result.exit_code == 2 and "--shared-nodes is for Slurm" in result.output
    assert _count(conn) == 0


def test_the_launchers_own_flags_reach_the_script_and_the_record(
        pg_project: Project, conn: Any, dbname: str, fakebin: Path) -> None:
    """A job for one member's tagged GPU tasks, from `submit` alone."""
    _fake(fakebin, "sbatch", "echo 992")
    me = pg_project.read_server_info().owner_name  # a member: --owner names a real role
    result = CliRunner().invoke(cli, [
        "submit", "--scheduler", "slurm", "-n", "2", "-t", "30", "--workflow", "a",
        "--tag", "site=polaris", "--owner", me, "--gpus-per-node", "4",
        "--idle-timeout", "60", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    row = submit.get(pg_project, out["batch_job_id"])
    assert row is not None and row["filters"] == {
        "workflows": ["a"], "tags": {"site": "polaris"}, "owners": [me]}
    line = next(x for x in Path(out["script"]).read_text().splitlines()
                if "-m balsam_mpi" in x)
    assert line.endswith(f" -m balsam_mpi --workflow=a --tag=site=polaris --owner={me} "
                         "--gpus-per-node=4 --idle-timeout=60 --time-limit-min 28 &")
    before = _scripts(pg_project)
    for bad, says in ((["--gpus-per-node", "four"], "--gpus-per-node: must be a whole"),
                      (["--tag", "novalue"], "--tag: tags: write each as key=value"),
                      (["--idle-timeout", "inf"], "--idle-timeout: must be a number"),
                      (["--persistent", "--idle-timeout", "5"], "give one of them")):
        result = CliRunner().invoke(cli, ["submit", "--scheduler", "slurm", "-n", "2",
                                          "-t", "30", *bad])
        assert result.exit_code == 2 and says in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1
    assert _count(conn) == 1 and _scripts(pg_project) == before


def test_sigterm_while_sbatch_runs_waits_for_its_answer(pg_project: Project, conn: Any,
                                                        dbname: str, fakebin: Path) -> None:
    """SIGTERM while sbatch runs (a workflow script's `timeout`) must not kill `submit`
    between its row and the id sbatch printed: the job is queued either way, and a row
    without its id could not be asked about or adopted by that id. It ends after saying
    what it submitted, with the signal's exit status."""
    import subprocess
    import sys

    _fake(fakebin, "sbatch", "kill -TERM $PPID; echo 9301")
    cli_path = str(Path(sys.executable).with_name("balsam-mpi"))
    done = subprocess.run([cli_path, "--project", str(pg_project.root), "submit",
                           "--scheduler", "slurm", "-n", "1", "-t", "10"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert conn.execute("SELECT state::text, scheduler_job_id FROM batch_jobs"
                        ).fetchall() == [("QUEUED", "9301")], (done.returncode, done.stderr)
    assert "9301" in done.stdout, done
    assert done.returncode == 128 + 15 and "SIGTERM" in done.stderr, done


def test_an_owner_no_task_can_have_is_refused_before_a_job_is_queued(
        pg_project: Project, conn: Any, dbname: str, fakebin: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`submit --owner alcie` (for alice) queued a job that claimed nothing for its whole
    allocation. Now: one line naming --owner and the value, exit 2, nothing written; a
    dry run too while the server answers, and without it the dry run still works."""
    from balsam_mpi.base import db
    from balsam_mpi.base.errors import ServerNotRunning

    _fake(fakebin, "sbatch", "echo 993")
    me = pg_project.read_server_info().owner_name
    base = ["submit", "--scheduler", "slurm", "-n", "1", "-t", "30"]
    before = _scripts(pg_project)
    for extra in ([], ["--dry-run"], ["--dry-run", "--json"]):
        result = CliRunner().invoke(cli, [*base, "--owner", me, "--owner", "alcie", *extra])
        lines = result.output.strip().splitlines()
        assert (result.exit_code, len(lines)) == (2, 1), result.output
        assert "--owner 'alcie': no member of this project has that role" in lines[0]
    assert _count(conn) == 0 and _scripts(pg_project) == before
    # A role that owns tasks counts (a dropped member's tasks stay), members do too.
    result = CliRunner().invoke(cli, [*base, "--owner", me, "--dry-run"])
    assert result.exit_code == 0, result.output

    def away(*_a: Any, **_k: Any) -> Any:
        raise ServerNotRunning("the server of this project is not running")

    monkeypatch.setattr(db, "connect", away)
    result = CliRunner().invoke(cli, [*base, "--owner", "alcie", "--dry-run"])
    assert result.exit_code == 0 and "--owner=alcie" in result.output, result.output


def test_a_role_counts_as_an_owner_when_it_is_a_member_or_owns_a_task(
        pg_project: Project, conn: Any, su: Any) -> None:
    """A member may add tasks at any time; a dropped member's tasks stay and may be
    drained by name; anything else can own no task (tasks/owners.py)."""
    from balsam_mpi.tasks.owners import unknown_owners

    app = su.execute("INSERT INTO apps (name, command) VALUES ('a', 'true') RETURNING id"
                     ).fetchone()[0]
    su.execute("INSERT INTO tasks (workflow, name, app_id, state, owner) "
               "VALUES ('w', 't', %s, 'READY', 'ghost')", (app,))
    me = pg_project.read_server_info().owner_name
    names = ["nobody", "ghost", me, "balsam_objects", "nobody"]
    assert unknown_owners(conn, names) == ["nobody", "balsam_objects", "nobody"]
    assert unknown_owners(conn, []) == []


def test_a_submission_builds_the_task_trampoline_for_the_batch_nodes(
        pg_project: Project, conn: Any, fakebin: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Batch nodes often have no compiler on PATH (or a home they cannot write): the
    launcher there started every task without its trampoline (slower, uncontained, no
    output cap). The submitting host builds it into the cache they share."""
    from balsam_mpi.node import trampoline

    if trampoline.trampoline() is None:
        pytest.skip("no C compiler here")
    cache = tmp_path / "cache"
    monkeypatch.setenv("BALSAM_CACHE_DIR", str(cache))
    trampoline.trampoline.cache_clear()
    try:
        _fake(fakebin, "sbatch", "echo 5150")
        submit.submit(pg_project, JobRequest("slurm", 2, 30))
        built = [p.name for p in cache.iterdir()]
    finally:
        trampoline.trampoline.cache_clear()
    assert len(built) == 1 and built[0].startswith("pdeath-"), built
