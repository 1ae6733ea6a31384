"""`balsam-dbctl prune`: forget finished workflows — their working directories, tasks,
events and batch jobs — so a busy project's disk and tables stay bounded.

What may go (checked again inside the transaction that deletes):

* a workflow whose every task is JOB_FINISHED, FAILED or USER_KILLED, and (with
  ``--older-than``) that has not changed for that long;
* not while a task outside the selection that is not JOB_FINISHED depends on one of its
  tasks (a run or a retry of it would need the parent and its files);
* not while a batch job that ran its tasks is still queued or running, or also ran tasks
  of another workflow: reports count runs per batch job, so a job goes whole, with every
  run it made, or not at all — every figure of every job that stays is unchanged.

Who: forgetting history rewrites everyone's reports, so only the project owner prunes it
(as the database superuser, over the socket). ``--dirs-only`` removes working directories
and keeps every row (no report changes); any member may run it for their own tasks.

Directories are removed while the tasks are locked, before the rows; if any cannot be
removed the transaction is rolled back, so a rerun finds the same tasks again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import sql
from ..base import db, values
from ..base.errors import Conflict, InputError, PermissionDenied
from ..base.idarrays import IdArray, id_array, register
from ..base.project import Project
from .prune_fs import DataDir, Removal

FINISHED = ("JOB_FINISHED", "FAILED", "USER_KILLED")


@dataclass(frozen=True)
class TaskRow:
    id: int
    workflow: str
    name: str
    state: str
    owner: str


@dataclass
class Outcome:
    """What prune did (or, with ``dry_run``, would do)."""

    dry_run: bool
    dirs_only: bool
    workflows: list[str] = field(default_factory=list)
    tasks: int = 0
    events: int = 0
    batch_jobs: list[int] = field(default_factory=list)
    removal: Removal = field(default_factory=Removal)
    skipped: dict[str, str] = field(default_factory=dict)  # workflow -> why (--all-finished)

    def as_dict(self) -> dict[str, Any]:
        r = self.removal
        return {"dry_run": self.dry_run, "dirs_only": self.dirs_only,
                "workflows": self.workflows, "tasks": self.tasks, "events": self.events,
                "batch_jobs": self.batch_jobs,
                "directories": {"dirs": r.dirs, "files": r.files, "bytes": r.bytes,
                                "missing": r.missing, "errors": r.errors},
                "skipped": self.skipped}


def prune(project: Project, *, workflows: Sequence[str] = (), all_finished: bool = False,
          older_than_s: float | None = None, dirs_only: bool = False,
          dry_run: bool = False) -> Outcome:
    """Prune the named workflows (all refused if one may not go), or every workflow that
    may (``all_finished``; the others are listed in ``skipped``)."""
    named = [values.name("workflow", w) for w in workflows]
    if not named and not all_finished:
        raise InputError("workflow: name the workflows to prune (--workflow W), or give "
                         "--all-finished")
    info = project.read_server_info()
    is_owner = _is_owner(info.owner_uid)
    if not dirs_only and not is_owner:
        raise PermissionDenied(
            f"only the project owner, {info.owner_name}, can prune tasks and history; "
            "members may remove the directories of their own finished workflows with "
            "--dirs-only")
    out = Outcome(dry_run=dry_run, dirs_only=dirs_only)
    if dirs_only or dry_run:
        with db.connect(project, autocommit=True,
                        application_name="balsam-dbctl prune") as conn:
            me = None if is_owner else _current_user(conn)
            _plan(conn, out, named, older_than_s, me)
            if out.workflows:
                _remove_dirs(project, conn, out, lock=False)
        return out
    from .admin import admin_connect

    with admin_connect(project, info, dbname=db.default_dbname(), autocommit=False) as conn:
        with db.translated(), conn.transaction():
            _plan(conn, out, named, older_than_s, None)
            if not out.workflows:
                return out
            ids = _remove_dirs(project, conn, out, lock=True)
            if out.removal.errors:
                raise Conflict(_dirs_failed(out.removal))
            jobs = out.batch_jobs
            out.events = _one(conn, "prune_delete_events", {"ids": ids, "jobs": jobs})
            out.tasks = _one(conn, "prune_delete_tasks", {"ids": ids})
            _one(conn, "prune_delete_jobs", {"jobs": jobs})
    return out


def _is_owner(owner_uid: int) -> bool:
    return os.geteuid() == owner_uid


def _plan(conn: Any, out: Outcome, named: list[str], older_than_s: float | None,
          me: str | None) -> None:
    """Which workflows may go (out.workflows) and the batch jobs that go with them
    (out.batch_jobs). A named workflow that may not go raises Conflict (nothing changes);
    with --all-finished it is kept and listed in out.skipped with the reason."""
    rows = _fetch(conn, "prune_workflows", {"workflows": named or None, "owner": me})
    found = {r["workflow"]: r for r in rows}
    for w in named:
        if w not in found:
            raise InputError(f"workflow: no tasks in workflow {values.show(w)}")
    now = time.time()
    candidates: set[str] = set()
    for w, r in found.items():
        why = ""
        if r["live"]:
            why = f"{r['live']:,} of its {r['tasks']:,} tasks may still run"
        elif older_than_s is not None and r["last_at"] is not None and \
                now - r["last_at"].timestamp() < older_than_s:
            why = f"it changed {_ago(now - r['last_at'].timestamp())} ago"
        elif me is not None and r["others"]:
            why = f"{r['others']:,} of its tasks belong to other members"
        if why:
            _refuse_or_keep(out, named, {w: why})
        else:
            candidates.add(w)
    # Keeping one workflow can block another (a batch job ran both): until nothing moves.
    jobs: list[dict[str, Any]] = []
    while candidates:
        blocked = _blockers(conn, sorted(candidates), out.dirs_only)
        if not blocked:
            jobs = [] if out.dirs_only else _fetch(conn, "prune_jobs",
                                                   {"workflows": sorted(candidates)})
            break
        _refuse_or_keep(out, named, blocked)
        candidates -= set(blocked)
    out.workflows = sorted(candidates)
    out.batch_jobs = [int(j["job"]) for j in jobs]


def _blockers(conn: Any, candidates: list[str], dirs_only: bool) -> dict[str, str]:
    """Candidate workflows that must stay, and why."""
    held: dict[str, str] = {}
    for c in _fetch(conn, "prune_waiting_children", {"workflows": candidates}):
        why = (f"task {c['id']} of workflow {values.show(c['workflow'])} ({c['state']}) "
               f"depends on its task {c['parent_id']}; prune that workflow too, or let it "
               "finish")
        for w in _workflows_of(conn, [c["parent_id"]]):
            held.setdefault(w, why)
    if dirs_only:  # rows stay, so reports do: batch jobs do not matter
        return held
    for j in _fetch(conn, "prune_jobs", {"workflows": candidates}):
        if j["state"] in ("QUEUED", "RUNNING"):
            why = f"batch job {j['job']} that ran its tasks is still {j['state']}"
        elif j["other"] is not None:
            why = (f"batch job {j['job']} also ran tasks of workflow "
                   f"{values.show(j['other'])}, and a batch job's reports go whole: prune "
                   "both, or keep the history with --dirs-only")
        else:
            continue
        for w in _workflows_of_jobs(conn, candidates, [j["job"]]):
            held.setdefault(w, why)
    return held


def _refuse_or_keep(out: Outcome, named: list[str], blocked: dict[str, str]) -> None:
    for w, why in sorted(blocked.items()):
        if named:
            raise Conflict(f"workflow {values.show(w)} cannot be pruned: {why}; nothing "
                           "was changed")
        out.skipped[w] = why


PAGE = 10_000  # tasks read at a time: a prune holds their ids, never all their rows


def _remove_dirs(project: Project, conn: Any, out: Outcome, lock: bool) -> IdArray:
    """Remove (or count) the working directories of the selection's tasks; with ``lock``
    the tasks and batch jobs are locked first and checked again. Returns the tasks' ids.

    Two passes by pages of ids, so a prune of a million tasks holds their ids (8 bytes
    each), not their rows: the first locks every task (page by page, each lock held to
    the end of the transaction) and checks that all are still finished before anything is
    removed; the second reads back the workflow and name of those same ids to find their
    directories."""
    register(conn)
    if lock:
        _fetch(conn, "prune_lock_jobs", {"jobs": out.batch_jobs})
    ids = id_array()
    for r in _pages(conn, "prune_lock_tasks" if lock else "prune_tasks",
                    {"workflows": out.workflows}):
        if r.state not in FINISHED:  # the plan was read before the lock
            raise Conflict(f"task {r.id} of workflow {values.show(r.workflow)} "
                           f"became {r.state} meanwhile; nothing was changed")
        ids.append(r.id)
    out.tasks = len(ids)
    if not out.dirs_only:
        out.events = _one(conn, "prune_count_events", {"ids": ids, "jobs": out.batch_jobs})
    if not project.data_dir.is_dir():
        return ids
    with DataDir(project.data_dir) as data:
        shards: set[tuple[str, ...]] = set()
        for lo in range(0, len(ids), PAGE):
            page = id_array(ids[lo:lo + PAGE])
            for row in _fetch(conn, "prune_tasks_of_ids", {"ids": page}):
                parts = _parts(project, TaskRow(**row))
                out.removal.add(data.remove(parts, dry_run=out.dry_run))
                shards.add(parts[:-1])
        if not out.dry_run:  # empty shards, then empty workflow directories
            for shard in sorted(shards):
                if data.prune_empty(shard):
                    data.prune_empty(shard[:-1])
    return ids


def _pages(conn: Any, name: str, params: dict[str, Any]) -> Iterator[TaskRow]:
    """The rows of query ``name`` in id order, a page at a time (keyset: ``id >
    after``); each page's locks, if it takes any, are held to the transaction's end."""
    after = 0
    while True:
        rows = _fetch(conn, name, {**params, "after": after, "page": PAGE})
        for r in rows:
            yield TaskRow(**r)
        if len(rows) < PAGE:
            return
        after = int(rows[-1]["id"])


def _parts(project: Project, row: TaskRow) -> tuple[str, ...]:
    """data/<workflow>/<shard>/<leaf> as components, exactly as the launcher names them."""
    rel = project.task_dir(row.workflow, row.id, row.name).relative_to(project.data_dir)
    return rel.parts


def _dirs_failed(r: Removal) -> str:
    more = f" (and {len(r.errors) - 1} more)" if len(r.errors) > 1 else ""
    return (f"could not remove every working directory: {r.errors[0]}{more}; no task or "
            "history was deleted; fix the modes (or ask their owner) and run prune again")


def _workflows_of(conn: Any, ids: Iterable[int]) -> set[str]:
    rows = conn.execute(sql.query("prune_workflow_of_tasks"), {"ids": list(ids)}).fetchall()
    return {r[0] for r in rows}


def _workflows_of_jobs(conn: Any, candidates: list[str], jobs: list[int]) -> set[str]:
    rows = conn.execute(sql.query("prune_workflows_of_jobs"),
                        {"workflows": candidates, "jobs": jobs}).fetchall()
    return {r[0] for r in rows}


def _current_user(conn: Any) -> str:
    row = conn.execute(sql.query("prune_current_user")).fetchone()
    return str(row[0])


def _fetch(conn: Any, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    from psycopg.rows import dict_row

    with db.translated(), conn.cursor(row_factory=dict_row) as cur:
        return list(cur.execute(sql.query(name), params).fetchall())


def _one(conn: Any, name: str, params: dict[str, Any]) -> int:
    with db.translated():
        row = conn.execute(sql.query(name), params).fetchone()
    return int(row[0]) if row else 0


def _ago(seconds: float) -> str:
    from ..reports.timefmt import short_duration

    return short_duration(seconds)


def format_outcome(o: Outcome) -> str:
    r = o.removal
    verb = "would prune" if o.dry_run else "pruned"
    if not o.workflows:
        lines = ["nothing to prune"]
    elif o.dirs_only:
        lines = [f"{verb} the working directories of {len(o.workflows)} workflow(s) "
                 f"({', '.join(o.workflows)}): {r.dirs:,} directories, {r.files:,} files, "
                 f"{_size(r.bytes)}; {o.tasks:,} tasks and their history kept"]
    else:
        lines = [f"{verb} {len(o.workflows)} workflow(s) ({', '.join(o.workflows)}): "
                 f"{o.tasks:,} tasks, {o.events:,} events, {len(o.batch_jobs)} batch "
                 f"job(s), {r.dirs:,} directories ({r.files:,} files, {_size(r.bytes)})"]
    lines += [f"kept workflow {w}: {why}" for w, why in sorted(o.skipped.items())]
    lines += [f"problem: {e}" for e in r.errors]
    return "\n".join(lines)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"  # pragma: no cover
