"""Reading tasks and apps: named queries over one connection, rows as dicts.

``Client`` reads through this, and so does ``task why`` (``tasks/why.py``), which needs a
task and a few named queries but nothing of the client's writes or waits.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .. import sql
from ..base import db
from ..base.errors import NotFound
from .filters import filter_params, order_by, where

if TYPE_CHECKING:
    import psycopg

PAGE = 2000  # rows per page of the lazy iterator


class TaskReader:
    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def fetch(self, name: str, params: Mapping[str, Any] | None = None
              ) -> list[dict[str, Any]]:
        """The rows of the named query (sql/*.sql), as dicts."""
        from psycopg.rows import dict_row

        with db.translated(), self.conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(sql.query(name), params or {}).fetchall()

    def select(self, params: dict[str, Any], order: Any, limit: int | None
               ) -> list[dict[str, Any]]:
        """Tasks matching ``params`` (taskfilter.filter_params), in ``order``."""
        from psycopg import sql as pgsql
        from psycopg.rows import dict_row

        q = pgsql.SQL(sql.query("tasks_select")).format(where=where(), order=order)
        with db.translated(), self.conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(q, {**params, "limit": limit}).fetchall()

    def pages(self, params: dict[str, Any], limit: int | None) -> Iterator[dict[str, Any]]:
        """Like ``select`` by id, lazily: keyset paging, each page one indexed query and
        no cursor left open between pages."""
        left = limit
        while left is None or left > 0:
            n = PAGE if left is None else min(PAGE, left)
            rows = self.select(params, order_by("id", params), n)
            yield from rows
            if len(rows) < n:
                return
            params = {**params, "after": rows[-1]["id"]}
            if left is not None:
                left -= len(rows)

    def task(self, task_id: int) -> dict[str, Any]:
        """One task with its ``parents``, ``children``, ``history`` (its events) and
        ``result``."""
        rows = self.select(filter_params({"id": task_id}), order_by("id"), 1)
        if not rows:
            raise NotFound(f"no task with id {task_id}; see `balsam-mpi task ls`")
        task = rows[0]
        task["parents"] = [r["id"] for r in self.fetch("tasks_parents", {"ids": [task_id]})]
        task["children"] = [r["child_id"] for r in
                            self.fetch("tasks_children", {"ids": [task_id]})]
        task["history"] = self.fetch("tasks_history", {"id": task_id})
        task["result"] = self.fetch("task_result", {"id": task_id})[0]["result"]
        return task

    def counts(self) -> dict[str, dict[str, int]]:
        """{workflow: {state: count}} over all tasks."""
        out: dict[str, dict[str, int]] = {}
        with db.translated():
            for wf, state, n in self.conn.execute(sql.query("tasks_counts")).fetchall():
                out.setdefault(wf, {})[str(state)] = int(n)
        return out
