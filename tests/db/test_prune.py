"""`balsam-dbctl prune` (issue 15 case 13): finished workflows go with their working
directories, tasks, events and the batch jobs that ran only them; everything that stays
reports exactly as before; planted paths in data/ never lead the removal outside it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result

from balsam_mpi.base.errors import Conflict, PermissionDenied
from balsam_mpi.base.project import Project
from balsam_mpi.dbctl import prune as prune_mod
from balsam_mpi.dbctl.cli import cli as dbctl
from balsam_mpi.dbctl.prune import prune
from balsam_mpi.reports import history

from . import test_analytics_build as build
from .test_analytics_build import Builder

Conn = psycopg.Connection[Any]
admin = build.admin


def _run(*args: str) -> Result:
    return CliRunner().invoke(dbctl, list(args), catch_exceptions=False,
                              prog_name="balsam-dbctl")


def _counts(conn: Conn) -> tuple[int, ...]:
    row = conn.execute("SELECT (SELECT count(*) FROM tasks), (SELECT count(*) FROM task_events),"
                       " (SELECT count(*) FROM batch_jobs), (SELECT count(*) FROM task_deps)"
                       ).fetchone()
    assert row is not None
    return tuple(row)


def _dirs(project: Project, conn: Conn) -> dict[int, Path]:
    """A working directory with output for every task, where the launcher puts it."""
    out = {}
    for tid, wf, name in conn.execute("SELECT id, workflow, name FROM tasks"):
        path = project.task_dir(wf, tid, name)
        path.mkdir(parents=True, exist_ok=True)
        (path / "task.out").write_text("out " * 10)
        out[tid] = path
    return out


@pytest.fixture()
def two_campaigns(admin: Conn, pg_project: Project) -> dict[str, Any]:
    """Workflow old ran in batch job 1 only; workflow new ran in batch job 2 only."""
    b = Builder(admin)
    j1, j2 = b.job(2, 0, 100), b.job(2, 200, 300)
    old = [b.finished_task(j1, 0, 80, workflow="old"), b.finished_task(j1, 10, 90, workflow="old")]
    new = [b.finished_task(j2, 200, 260, workflow="new"),
           b.finished_task(j2, 210, 290, workflow="new")]
    admin.execute("INSERT INTO task_deps (child_id, parent_id) VALUES (%s, %s)", (old[1], old[0]))
    admin.execute("UPDATE tasks SET created_at = %s", (build.at(-10),))  # added back then
    dirs = _dirs(pg_project, admin)
    return {"b": b, "jobs": (j1, j2), "old": old, "new": new, "dirs": dirs}


def _report(conn: Conn, job: int | None = None) -> dict[str, Any]:
    h = history.history(conn, history.Filters(batch_job=job, bin_seconds=10.0))
    return {"jobs": h.job_rows(), "series": [float(v) for v in h.utilization_series()]}


def test_prune_forgets_a_finished_workflow_and_reports_stay_right(
        two_campaigns: dict[str, Any], admin: Conn, pg_project: Project, dbname: str) -> None:
    j1, j2 = two_campaigns["jobs"]
    before_new = _report(admin, j2)
    before = _counts(admin)
    dry = prune(pg_project, workflows=["old"], dry_run=True)
    assert _counts(admin) == before and all(p.exists() for p in two_campaigns["dirs"].values())
    assert (dry.workflows, dry.tasks, dry.batch_jobs) == (["old"], 2, [j1])
    assert dry.events == 2 * 4 and dry.removal.dirs == 2 and dry.removal.files == 2

    done = prune(pg_project, workflows=["old"])
    assert (done.tasks, done.events, done.batch_jobs) == (2, 8, [j1])
    assert _counts(admin) == (2, 8, 1, 0)
    for tid in two_campaigns["old"]:
        assert not two_campaigns["dirs"][tid].exists()
    assert not (pg_project.data_dir / "old").exists()  # empty shards and workflow dir too
    for tid in two_campaigns["new"]:
        assert two_campaigns["dirs"][tid].exists()
    # Batch job 2's figures are exactly what they were; job 1 is gone whole, not halved.
    assert _report(admin, j2) == before_new
    assert [r["id"] for r in _report(admin)["jobs"]] == [j2]


@pytest.mark.parametrize("setup, message", [
    (lambda b, j: b.task(state="READY", workflow="old"), "1 of its 3 tasks may still run"),
    (lambda b, j: b.run(b.task(workflow="other"), j[0], 95, 99), "also ran tasks of workflow"),
    (lambda b, j: b.conn.execute("UPDATE batch_jobs SET state = 'RUNNING', ended_at = NULL "
                                 "WHERE id = %s", (j[0],)), "is still RUNNING"),
])
def test_prune_refuses_what_reports_or_runs_still_need(
        two_campaigns: dict[str, Any], admin: Conn, pg_project: Project, setup: Any,
        message: str) -> None:
    setup(two_campaigns["b"], two_campaigns["jobs"])
    before = _counts(admin)
    result = _run("--project", str(pg_project.root), "prune", "--workflow", "old", "--yes")
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and message in lines[0], result.output
    assert _counts(admin) == before
    assert all(p.exists() for p in two_campaigns["dirs"].values())


def test_a_waiting_child_in_another_workflow_keeps_its_parent(
        two_campaigns: dict[str, Any], admin: Conn, pg_project: Project) -> None:
    b = two_campaigns["b"]
    child = b.task(state="AWAITING_PARENTS", workflow="downstream")
    admin.execute("INSERT INTO task_deps (child_id, parent_id) VALUES (%s, %s)",
                  (child, two_campaigns["old"][0]))
    with pytest.raises(Conflict, match=f"task {child} of workflow 'downstream'"):
        prune(pg_project, workflows=["old"])
    out = prune(pg_project, all_finished=True, dry_run=True)
    assert out.workflows == ["new"] and "depends on" in out.skipped["old"]
    assert "may still run" in out.skipped["downstream"]


def test_all_finished_keeps_workflows_that_share_a_batch_job(
        two_campaigns: dict[str, Any], admin: Conn, pg_project: Project) -> None:
    b, (j1, j2) = two_campaigns["b"], two_campaigns["jobs"]
    b.run(b.task(workflow="third", state="READY"), j1, 95, None)  # a live task in job 1
    out = prune(pg_project, all_finished=True)
    assert out.workflows == ["new"] and out.batch_jobs == [j2]
    assert "may still run" in out.skipped["third"]
    assert "also ran tasks of workflow 'third'" in out.skipped["old"]
    assert admin.execute("SELECT count(*) FROM tasks WHERE workflow = 'old'").fetchone() == (2,)


def test_older_than_keeps_recent_workflows(two_campaigns: dict[str, Any], admin: Conn,
                                           pg_project: Project) -> None:
    admin.execute("UPDATE tasks SET ended_at = now() WHERE workflow = 'new'")
    out = prune(pg_project, all_finished=True, older_than_s=3600.0, dry_run=True)
    assert out.workflows == ["old"] and "changed" in out.skipped["new"]


def test_dirs_only_keeps_history_and_members_may(two_campaigns: dict[str, Any], admin: Conn,
                                                 conn: Conn, pg_project: Project,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    before = _counts(admin)
    monkeypatch.setattr(prune_mod, "_is_owner", lambda uid: False)  # not the owner
    with pytest.raises(PermissionDenied, match="only the project owner"):
        prune(pg_project, workflows=["old"])
    with pytest.raises(Conflict, match="belong to other members"):
        prune(pg_project, workflows=["old"], dirs_only=True)  # the builder's owner: alice
    me = conn.execute("SELECT current_user").fetchone()  # the member's own role
    assert me is not None
    admin.execute("UPDATE tasks SET owner = %s", me)  # …now all the member's own
    out = prune(pg_project, workflows=["old"], dirs_only=True)
    assert out.removal.dirs == 2 and _counts(admin) == before
    assert not any(two_campaigns["dirs"][t].exists() for t in two_campaigns["old"])


def test_planted_links_in_data_never_lead_outside(two_campaigns: dict[str, Any], admin: Conn,
                                                  pg_project: Project, tmp_path: Path) -> None:
    victim = tmp_path / "home"
    victim.mkdir()
    (victim / "precious").write_text("keep me")
    leaf = two_campaigns["dirs"][two_campaigns["old"][0]]
    (leaf / "escape").symlink_to(victim)  # a link inside a task directory
    other = two_campaigns["dirs"][two_campaigns["old"][1]]
    for p in other.iterdir():
        p.unlink()
    other.rmdir()
    other.symlink_to(victim)  # a task directory replaced by a link
    out = prune(pg_project, workflows=["old"])
    assert out.removal.errors == [] and out.tasks == 2
    assert (victim / "precious").read_text() == "keep me" and not other.is_symlink()


def test_a_planted_workflow_link_stops_the_prune_and_nothing_is_deleted(
        two_campaigns: dict[str, Any], admin: Conn, pg_project: Project,
        tmp_path: Path) -> None:
    victim = tmp_path / "home"
    real = pg_project.data_dir / "new"
    real.rename(victim)
    real.symlink_to(victim)  # data/new -> somewhere else
    before = _counts(admin)
    result = _run("--project", str(pg_project.root), "prune", "--workflow", "new", "--yes")
    assert result.exit_code == 1 and "symlink" in result.output and "no task" in result.output
    assert _counts(admin) == before and any(victim.rglob("task.out"))


def test_cli_dry_run_json_and_confirmation(two_campaigns: dict[str, Any], admin: Conn,
                                           pg_project: Project) -> None:
    before = _counts(admin)
    result = _run("--project", str(pg_project.root), "prune", "--workflow", "old",
                  "--dry-run", "--json")
    assert result.exit_code == 0
    assert json.loads(result.output)["tasks"] == 2 and _counts(admin) == before
    asked = CliRunner().invoke(dbctl, ["--project", str(pg_project.root), "prune",
                                       "--workflow", "old"], input="n\n")
    assert asked.exit_code == 1 and "would prune 1 workflow" in asked.output
    assert _counts(admin) == before
    for args, field in ((["--older-than", "soon"], "--older-than"),
                        (["--workflow", "a\x00"], "workflow"), ([], "workflow")):
        bad = _run("--project", str(pg_project.root), "prune", *args)
        assert bad.exit_code == 2 and field in bad.output and len(bad.output.splitlines()) == 1


def test_the_running_server_uses_the_wal_settings(admin: Conn) -> None:
    from balsam_mpi.dbctl import pgconf

    got = dict(admin.execute(
        "SELECT name, setting FROM pg_settings WHERE name IN ('wal_level', "
        "'max_wal_senders', 'max_wal_size', 'min_wal_size', 'wal_compression')").fetchall())
    assert got["wal_level"] == "minimal" and got["max_wal_senders"] == "0"
    assert got["max_wal_size"] == str(pgconf.WAL_MAX_MB)
    assert got["min_wal_size"] == str(pgconf.WAL_MIN_MB)
    assert got["wal_compression"] != "off"


def test_prune_reads_its_tasks_a_page_at_a_time(
        two_campaigns: dict[str, Any], admin: Conn, pg_project: Project,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A prune holds its tasks' ids, not their rows: every query of task rows returns at
    most a page (750,000 rows held at once took 692 MB), and the outcome is the same."""
    b, (j1, _j2) = two_campaigns["b"], two_campaigns["jobs"]
    more = [b.finished_task(j1, 20 + k, 60 + k, workflow="old") for k in range(3)]
    dirs = _dirs(pg_project, admin)
    monkeypatch.setattr(prune_mod, "PAGE", 2, raising=False)
    largest: dict[str, int] = {}
    real = prune_mod._fetch

    def fetch(conn: Any, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        rows = real(conn, name, params)
        if "id" in (rows[0] if rows else {}) and "workflow" in (rows[0] if rows else {}):
            largest[name] = max(largest.get(name, 0), len(rows))
        return rows

    monkeypatch.setattr(prune_mod, "_fetch", fetch)
    dry = prune(pg_project, workflows=["old"], dry_run=True)
    assert (dry.tasks, dry.events, dry.removal.dirs) == (5, 20, 5)
    done = prune(pg_project, workflows=["old"])
    assert (done.tasks, done.events, done.batch_jobs, done.removal.dirs) == (5, 20, [j1], 5)
    assert largest and max(largest.values()) <= 2, largest
    assert _counts(admin) == (2, 8, 1, 0)
    assert not any(dirs[t].exists() for t in [*two_campaigns["old"], *more])
    assert all(dirs[t].exists() for t in two_campaigns["new"])
