"""The leader's cache of what each app adds to a run order: pre/postprocessing and a Python
app's import path (:class:`~balsam_mpi.launcher.storeport.AppExtras`), filled on the database thread.

The claim returns the app's command with every row but not these; rather than widen the
claim (its plan is pinned and tested), the leader reads the extras of the apps it has not
seen yet right after a claim, in the same database-thread call, once per app for the
leader's life (an app edited meanwhile takes effect with the next launcher).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .storeport import AppExtras, Claimed, Lease, StorePort

NONE = AppExtras()


class AppCache:
    def __init__(self) -> None:
        self.apps: dict[str, AppExtras] = {}

    def get(self, app: str) -> AppExtras:
        return self.apps.get(app, NONE)

    def fetch(self, store: StorePort, names: Iterable[str]) -> None:
        """Read the apps not seen yet (database thread)."""
        missing = sorted(set(names) - self.apps.keys())
        if not missing:
            return
        found = store.app_extras(missing)
        for name in missing:  # an app without extras is not asked about again
            self.apps[name] = found.get(name, NONE)

    def claim(self, store: StorePort, lease: Lease, **kwargs: Any) -> list[Claimed]:
        """``StorePort.claim`` and then the extras of apps new to this leader."""
        rows = store.claim(lease, **kwargs)
        if rows:
            self.fetch(store, (r.app for r in rows))
        return rows
