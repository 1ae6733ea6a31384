"""Lock waits while launchers run: a thread samples ``pg_stat_activity`` on its own
connection (every ``interval_s``) and counts the client backends waiting for a
heavyweight lock — claims that convoy (wait on each other's rows or on a shared row)
would show here; SKIP LOCKED claims should not."""

from __future__ import annotations

import threading
import time
from collections import Counter
from types import TracebackType
from typing import Any

from . import launcher_common as lc
from .projects import bench_query


class LockSampler:
    def __init__(self, proj: Any, interval_s: float = 0.01) -> None:
        self.proj = proj
        self.interval_s = interval_s
        self.samples = 0
        self.waiting = 0  # samples with at least one backend waiting for a lock
        self.waiters = 0  # backend-samples waiting for a lock
        self.active = 0  # backend-samples running a statement
        self.what: Counter[str] = Counter()  # the waiting statements
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LockSampler:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        query = bench_query("lock_waits")
        with lc.connect(self.proj) as conn:
            conn.autocommit = True
            while not self._stop.is_set():
                waiting, active, first = conn.execute(query).fetchone()
                self.samples += 1
                self.waiters += waiting
                self.active += active
                if waiting:
                    self.waiting += 1
                    self.what[str(first)] += 1
                time.sleep(self.interval_s)

    def figures(self) -> dict[str, Any]:
        n = max(self.samples, 1)
        return {"samples": self.samples,
                "share_of_samples_with_a_lock_wait": self.waiting / n,
                "mean_backends_waiting": self.waiters / n,
                "mean_backends_active": self.active / n,
                "waiting_statements": dict(self.what.most_common(5))}
