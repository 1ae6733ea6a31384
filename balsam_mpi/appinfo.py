"""The leader's cache of each app's pre/postprocessing, filled on the database thread.

The claim returns the app's command with every row but not its preprocess/postprocess;
rather than widen the claim (its plan is pinned and tested), the leader reads the
scripts of the apps it has not seen yet right after a claim, in the same database-thread
call, once per app for the leader's life (an app edited meanwhile takes effect with the
next launcher).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

from . import db, sql
from .store import Claimed, Lease, Store


class PrePost(NamedTuple):
    preprocess: str = ""
    postprocess: str = ""
    on_error: bool = False
    on_timeout: bool = False
    python: str = ""  # a Python app's import path (docs/python-tasks.md)


NONE = PrePost()


class AppCache:
    def __init__(self) -> None:
        self.apps: dict[str, PrePost] = {}

    def get(self, app: str) -> PrePost:
        return self.apps.get(app, NONE)

    def fetch(self, store: Store, names: Iterable[str]) -> None:
        """Read the apps not seen yet (database thread)."""
        missing = sorted(set(names) - self.apps.keys())
        if not missing:
            return
        with db.translated():
            rows = store.conn.execute(sql.query("launcher_app_prepost"),
                                      {"names": missing}).fetchall()
        for name in missing:
            self.apps[name] = NONE
        for name, pre, post, on_error, on_timeout in rows:
            self.apps[str(name)] = PrePost(str(pre), str(post), bool(on_error),
                                           bool(on_timeout))
        with db.translated():
            paths = store.conn.execute(sql.query("launcher_app_python"),
                                       {"names": missing}).fetchall()
        for name, path in paths:
            self.apps[str(name)] = self.apps[str(name)]._replace(python=str(path))

    def claim(self, store: Store, lease: Lease, **kwargs: Any) -> list[Claimed]:
        """``Store.claim`` and then the scripts of apps new to this leader."""
        rows = store.claim(lease, **kwargs)
        if rows:
            self.fetch(store, (r.app for r in rows))
        return rows
