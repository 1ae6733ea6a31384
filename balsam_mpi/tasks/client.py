"""The Python API: ``Client`` adds apps and tasks in bulk, queries, kills, retries, deletes.

Field names are the columns of docs/architecture.md §4 (the CLI's flags, the JSON-lines keys, the
``--json`` output). Every write is one transaction: a batch of 100,000 tasks goes in
whole or not at all. The DAG's bookkeeping after a task finishes or fails is done by
triggers in the database (migrations/0003_tasks.sql), so the launcher's bulk reports and
this API's calls cannot disagree about it.

The client is the front of four parts, each usable without it: adds go through
``taskadd.TaskWriter`` (which the launcher uses too), reads through ``taskread.TaskReader``
(which ``task why`` uses), changes through the database's checked functions (``_change``),
waits through ``tasks/waiting.py``.

    from balsam_mpi import Client
    c = Client()                                   # the project of $BALSAM_DB_PATH
    c.add_app("hello", "echo hello {who}")
    [a] = c.add_tasks([{"app": "hello", "workflow": "demo", "name": "a",
                        "params": {"who": "world"}, "key": "a"}])
    c.add_tasks([{"app": "hello", "workflow": "demo", "params": {"who": "b"},
                  "parents": [a]}])
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import sql
from ..base import db, values
from ..base.errors import Conflict, InputError, NotFound, UsageError
from ..base.limits import ID_MAX
from ..base.project import Project
from . import pyapps, spool, validate, waiting
from .filters import as_ids, filter_params, order_by, where
from .outcome import Outcome
from .outputs import STEPS, STREAMS, OutputFile, opened
from .read import PAGE, TaskReader
from .refusals import dependency_refusal, refusals
from .streamed import add_streamed
from .why import explain
from .writer import TaskWriter, app_infos

if TYPE_CHECKING:
    import psycopg


class Client:
    """One connection to a project's database (autocommit; each call its own transaction)."""

    def __init__(self, project: Project | str | os.PathLike[str] | None = None) -> None:
        self.project = project if isinstance(project, Project) else Project.from_env(project)
        self._conn: psycopg.Connection[Any] = db.connect(self.project, autocommit=True)
        # Filtered queries must be planned with their values (NULL filters fold away);
        # a cached generic plan would scan.
        self._conn.prepare_threshold = None
        with db.translated():
            self._conn.execute(sql.query("client_session"))
        self._read = TaskReader(self._conn)
        # Connections that LISTEN while a wait lasts (tasks/waiting.py), opened on first use.
        self._waiters = waiting.Waiters(
            lambda: db.connect(self.project, autocommit=True,
                               application_name="balsam_mpi-wait"))

    def close(self) -> None:
        self._waiters.close()
        self._conn.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- apps ------------------------------------------------------------------------
    def add_app(self, name: str, command: str | None = None, *, python: str | None = None,
                **fields: Any) -> int:
        """Register an app: ``command`` is a template whose ``{placeholders}`` the tasks'
        ``params`` fill. Fields: description, preprocess, postprocess, env_script, shell,
        postprocess_on_error, postprocess_on_timeout, error_retry_limit.

        Or ``python="package.module:function"``: the tasks' ``params`` are the keyword
        arguments of a call in a warm interpreter, and its return value is the task's
        result (docs/python-tasks.md). Fields: description, error_retry_limit, task_dirs
        (False: calls run in their workflow's directory, output in memory)."""
        if (command is None) == (python is None):
            raise InputError("command: an app runs a command or calls a Python "
                             "function (python=...): give exactly one")
        if command is not None and "task_dirs" in fields:
            pyapps.check_task_dirs(fields.pop("task_dirs"), python=False)
        if python is not None:
            app = pyapps.check_app(name, python, fields)
            query, values = "apps_insert_python", {"description": "", "task_dirs": True,
                                                   "error_retry_limit": 0, **app}
        else:
            app = validate.check_app(name, command, fields)  # type: ignore[arg-type]
            query, values = "apps_insert", {
                "description": "", "preprocess": "", "postprocess": "", "env_script": "",
                "shell": False, "postprocess_on_error": False,
                "postprocess_on_timeout": False, "error_retry_limit": 0, **app}
        with db.translated(), self._conn.transaction(), refusals():
            if self._read.fetch("apps_by_name", {"name": name}):
                raise Conflict(f"an app named {name!r} exists; pick another name or "
                               f"`balsam-mpi app rm {name}` first")
            row = self._conn.execute(sql.query(query), values).fetchone()
        assert row is not None
        return int(row[0])

    def apps(self) -> list[dict[str, Any]]:
        return self._read.fetch("apps_all")

    def app(self, name: str) -> dict[str, Any]:
        rows = self._read.fetch("apps_by_name", {"name": name})
        if not rows:
            raise NotFound(f"no app named {name!r}; see `balsam-mpi app ls`")
        return rows[0]

    def app_calling(self, path: str) -> str | None:
        """The name of an app that calls the Python function ``path`` (the first by name
        when several do), or None."""
        rows = self._read.fetch("apps_by_python", {"python": path})
        return str(rows[0]["name"]) if rows else None

    def delete_app(self, name: str) -> None:
        with db.translated(), self._conn.transaction():
            self.app(name)
            (n,) = self._conn.execute(sql.query("apps_task_count"), {"name": name}).fetchone() or (0,)
            if n:
                raise Conflict(f"app {name!r} still has {n} tasks; delete them first "
                               f"(`balsam-mpi task rm --app {name}`)")
            self._conn.execute(sql.query("apps_delete"), {"name": name})

    # -- adding tasks ----------------------------------------------------------------
    def add_tasks(self, tasks: Iterable[Mapping[str, Any]], *,
                  labels: Sequence[str] | None = None,
                  progress: Callable[[int], None] | None = None) -> list[int]:
        """Add tasks (dicts of column names) in one transaction; returns their ids in order.

        ``parents``: ids of existing tasks, or the ``key`` of another task in the same
        call. ``labels`` name the inputs in errors (e.g. "tasks.jsonl line 7").
        An iterator (a generator) of more than ``spool.SPOOL_AFTER`` tasks is not held:
        its tasks are checked as they are read and kept in a temporary file for the
        write (tasks/spool.py), with the same rows, ids and errors.
        """
        listed, rest = spool.head(tasks)
        if rest is None:
            return TaskWriter(self._conn).add(listed, labels=labels, progress=progress)
        spooled = spool.SpooledTasks(rest, labels)
        try:
            return list(add_streamed(self._conn, spooled, lambda n: progress))
        finally:
            spooled.close()

    def add_task_file(self, source: Any, *,
                      progress_for: Callable[[int], Callable[[int], None] | None] = (
                          lambda n: None)) -> Sequence[int]:
        """Add every task of a file (``taskfile.open_task_file``) in one transaction,
        reading it twice instead of holding it (tasks/streamed.py); ids in input order,
        as a compact ``array('q')``."""
        ids: Sequence[int] = add_streamed(self._conn, source, progress_for)
        return ids

    def add_task(self, **fields: Any) -> int:
        return self.add_tasks([fields])[0]

    # -- reading (tasks/read.py) -------------------------------------------------------
    def tasks(self, *, order: str = "id", limit: int | None = None,
              **filters: Any) -> Iterator[dict[str, Any]]:
        """Tasks matching the filters, lazily (pages of rows; nothing held open between).

        Filters: id/ids, workflow (exact; a list means any of them), state, app, name (a
        glob), tags (dict: containment), owner. ``order``: a column of SORTABLE, '-' for
        descending. Bad filters raise here, not at the first row."""
        params = filter_params(filters)
        ordering = order_by(order, params)
        limit = None if limit is None else values.integer("limit", limit, 0, ID_MAX - 1)
        if order in ("id", "+id") and (limit is None or limit > PAGE):
            return self._read.pages(params, limit)
        return iter(self._read.select(params, ordering, limit))

    def ids(self, **filters: Any) -> list[int]:
        """The ids of the tasks matching the filters (those of ``tasks``), in id order:
        e.g. ``client.wait(client.ids(workflow="fit"))`` waits for a whole workflow as it
        stands now."""
        from psycopg import sql as pgsql

        params = filter_params(filters)
        q = pgsql.SQL(sql.query("tasks_select_ids")).format(where=where())
        with db.translated():
            return [r[0] for r in self._conn.execute(q, params).fetchall()]

    def get(self, task_id: int) -> dict[str, Any]:
        """One task with its ``parents``, ``children``, ``history`` (its events) and
        ``workdir`` (where it runs: ``workdir``)."""
        task = self._read.task(task_id)
        task["workdir"] = str(self.workdir(task))
        return task

    def workdir(self, task: Mapping[str, Any]) -> Path:
        """Where a task runs and its task.out / task.err are (once a launcher started it):
        ``data/<workflow>/<id // 1000>/<name>_<id>/`` as the launcher makes it, or the
        workflow's directory for a Python app without task directories (a task of one
        that links input files still gets its own)."""
        own = self.project.task_dir(task["workflow"], task["id"], task["name"])
        return own if self.has_own_dir(task) else own.parent.parent

    def has_own_dir(self, task: Mapping[str, Any]) -> bool:
        """Whether the task runs in a directory of its own, with task.out and task.err
        files (all but a Python app's without task directories, unless it links inputs)."""
        return bool(task.get("input_files")) or self.app(task["app"]).get("task_dirs", True)

    def outputs(self, task: Mapping[str, Any], stream: str = "out", step: str = "task"
                ) -> AbstractContextManager[list[OutputFile]]:
        """The task's output files of ``stream`` ('out' or 'err') of ``step`` ('task',
        'preprocess' or 'postprocess'), read back safely (``tasks/outputs.py``: nothing
        planted in data/ is followed or opened), open until the context ends; NotFound
        when there are none (yet)."""
        if stream not in STREAMS:
            raise InputError(f"stream: 'out' or 'err', got {stream!r}")
        if step not in STEPS:
            raise InputError(f"step: one of {', '.join(STEPS)}, got {step!r}")
        if not self.has_own_dir(task):
            raise NotFound(f"task {task['id']} keeps no output files: its app is a Python "
                           "app without task directories (a failed call's output tail is "
                           "in its output_tail)")
        return opened(self.project.data_dir, self.workdir(task), stream, step)

    def counts(self) -> dict[str, dict[str, int]]:
        """{workflow: {state: count}} over all tasks."""
        return self._read.counts()

    # -- changing --------------------------------------------------------------------
    # Every change goes through a function of the database (migrations/0007) that checks
    # who asks and what the task's state allows, and says per task what it did: the
    # Outcome lists the ids changed, and ``refused`` the others with the reason.
    def update(self, ids: int | Sequence[int], **changes: Any) -> Outcome:
        """Change fields of tasks (not their state); returns the ids changed. priority,
        tags and data change on any task; the rest only on tasks no launcher holds (a
        claimed task would run with its old values): those are refused."""
        id_list = as_ids(ids)
        values = validate.check_changes(changes)
        if not values:
            raise UsageError("nothing to change: give at least one field")
        if not id_list:
            return Outcome()
        if "params" in values:  # new params must still fill each task's app template
            apps = app_infos(self._conn)
            for task in self.tasks(ids=id_list):
                try:
                    validate.check_params(values["params"], apps[task["app"]])
                except InputError as exc:
                    raise InputError(f"task {task['id']}: {exc}") from None
        from psycopg.types.json import Jsonb

        return self._change("tasks_update", id_list, {"changes": Jsonb(values)},
                            {"modified"})

    def kill(self, ids: int | Sequence[int] | None = None, *,
             message: str | None = None, **filters: Any) -> Outcome:
        """Move matching tasks that are not finished or stopped to USER_KILLED; their
        waiting descendants fail; a running one is stopped by its launcher. Needs ids or
        at least one filter; an empty list of ids kills nothing."""
        return self._change_matching("tasks_kill", ids, filters, {"message": message},
                                     {"killed"})

    def retry(self, ids: int | Sequence[int] | None = None, **filters: Any) -> Outcome:
        """Return FAILED / USER_KILLED tasks (and the descendants they failed) to READY or
        AWAITING_PARENTS, counters reset; returns the ids reinstated (descendants too)."""
        return self._change_matching("tasks_retry", ids, filters, {},
                                     {"retried", "reinstated"})

    def delete(self, ids: int | Sequence[int] | None = None, **filters: Any) -> Outcome:
        """Delete matching tasks (history stays in task_events); children that remain
        stop waiting for them; a claimed or running one is stopped by its launcher."""
        return self._change_matching("tasks_delete", ids, filters, {},
                                     {"deleted", "deleted (its launcher stops it)"})

    def add_dependency(self, parent: int, child: int) -> bool:
        """Make ``child`` wait for ``parent``; refuses cycles and a task made its own
        parent (BadDependency: a UsageError, exit 2, and a Conflict), and children that
        started or that a launcher holds (Conflict). Returns False when the dependency
        existed."""
        parent, child = as_ids([parent, child])
        with db.translated(), self._conn.transaction(), refusals(dependency_refusal):
            row = self._conn.execute(sql.query("tasks_dep_add"),
                                     {"parent": parent, "child": child}).fetchone()
        return bool(row and row[0])

    # -- waiting (LISTEN/NOTIFY, tasks/waiting.py) --------------------------------------------
    def wait(self, ids: int | Sequence[int], *, timeout: float | None = None
             ) -> list[waiting.Outcome]:
        """Block until every task has ended (JOB_FINISHED, FAILED or USER_KILLED); their
        outcomes in the given order. Raises WaitTimeout after ``timeout`` seconds."""
        return waiting.wait(self._waiters, ids, timeout)

    def as_completed(self, ids: int | Sequence[int], *, timeout: float | None = None
                     ) -> Iterator[waiting.Outcome]:
        """Each task's outcome as it ends (those already ended first); ``timeout`` is
        for the whole iteration."""
        return waiting.as_completed(self._waiters, ids, timeout)

    def result(self, task_id: int, *, timeout: float | None = None) -> Any:
        """Wait for one task: its return value (a Python task), or TaskFailed."""
        return waiting.wait(self._waiters, [task_id], timeout)[0].value()

    def why(self, task_id: int) -> list[str]:
        """Why the task is not running, one reason per line."""
        return explain(self._read, task_id)

    # -- helpers ---------------------------------------------------------------------
    def _change_matching(self, name: str, ids: int | Sequence[int] | None,
                         filters: Mapping[str, Any], extra: dict[str, Any],
                         done: set[str]) -> Outcome:
        """Apply change ``name`` to the given ids (narrowed by the filters, if any), or to
        every task the filters match; one transaction."""
        given = {k: v for k, v in filters.items() if v is not None}
        if ids is None and not given:
            raise UsageError(f"{name.removeprefix('tasks_')}: give task ids or a filter "
                             "(workflow, state, …)")
        id_list = None if ids is None else as_ids(ids)
        if id_list == []:
            return Outcome()  # no ids: no task, never every task
        if not given:
            assert id_list is not None
            return self._change(name, id_list, extra, done)
        if id_list is not None:
            given["ids"] = id_list
        with self._conn.transaction():
            chosen = self.ids(**given)
            if not chosen:
                return Outcome()
            return self._change(name, chosen, extra, done)

    def _change(self, name: str, ids: list[int], extra: dict[str, Any],
                done: set[str]) -> Outcome:
        with db.translated(), self._conn.transaction(), refusals():
            rows = self._conn.execute(sql.query(name), {"ids": ids, **extra}).fetchall()
        return Outcome.from_rows(rows, done)
