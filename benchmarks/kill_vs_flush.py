"""How long a launcher's flush waits while a member kills (or retries) every task of a
big project: a standalone script, not a test.

    .venv/bin/python -m benchmarks.kill_vs_flush [--tasks 1000000] [--running 1000]

Creates a throwaway project with ``--tasks`` tasks in one workflow, opens a batch job
that claims ``--running`` of them, then, three times, runs the member's
``Client.kill(workflow=...)`` (then ``retry``) on one connection while the launcher, on
its own, writes the starts of its claimed tasks once the member's statement holds their
rows: with the plain write (``Store.report``, which waits on the row locks, as every
flush did before migration 0033) and with the flush the leader uses now
(``Store.report_unlocked``: SKIP LOCKED, the held tasks kept for a later flush). Prints
the member's statement's time and, for each write, how long it took and how many of its
reports it had to keep back.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from balsam_mpi.launcher.store import Store
from balsam_mpi.launcher.storeport import ClaimFilter, Lease
from balsam_mpi.protocol import Started
from balsam_mpi.tasks.client import Client

from .projects import admin_dsn, bench_project


def _held(admin: Any, task_id: int) -> bool:
    """Whether another session holds the task's row (a lock taken and given back)."""
    try:
        with admin.transaction():
            admin.execute("SET LOCAL lock_timeout = '1ms'")
            admin.execute("SELECT 1 FROM tasks WHERE id = %s FOR NO KEY UPDATE", (task_id,))
        return False
    except psycopg.errors.LockNotAvailable:
        return True


def _claim(store: Store, lease: Lease, n: int) -> list[int]:
    rows = store.claim(lease, limit=n, capacity=float(n), max_need=1.0,
                       filters=ClaimFilter())
    return [r.id for r in rows]


def _round(store: Store, admin: Any, lease: Lease, ids: list[int],
           change: Callable[[], object], what: str, write: str) -> None:
    done = threading.Event()
    took: list[float] = []

    def member() -> None:
        t0 = time.perf_counter()
        change()
        took.append(time.perf_counter() - t0)
        done.set()

    thread = threading.Thread(target=member, daemon=True)
    thread.start()
    while not done.is_set() and not (_held(admin, ids[0]) and _held(admin, ids[-1])):
        time.sleep(0.05)
    starts = [Started(i, lease.epoch, time.time()) for i in ids]
    t0 = time.perf_counter()
    if write == "plain":
        store.report(lease, starts, [])
        kept = 0
    else:
        kept = len(store.report_unlocked(lease, starts, []).deferred)
    flush_s = time.perf_counter() - t0
    thread.join()
    print(f"  {what:<6} {took[0]:7.2f} s | {write:<8} write of {len(ids)} starts: "
          f"{flush_s:8.3f} s, {kept} kept for a later flush"
          f"{'' if done.is_set() or kept else ' (the member was done first)'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=1_000_000)
    ap.add_argument("--running", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    opts = ap.parse_args()
    with bench_project() as project, Client(project) as client, \
            Store.connect(project) as store, \
            psycopg.connect(**admin_dsn(project), autocommit=True) as admin:
        client.add_app("hello", "echo hello {who}")
        t0 = time.perf_counter()
        step = 100_000
        for k in range(0, opts.tasks, step):
            client.add_tasks([{"app": "hello", "workflow": "bulk", "params": {"who": "x"}}
                              for _ in range(min(step, opts.tasks - k))])
        admin.execute("VACUUM ANALYZE tasks")
        print(f"{opts.tasks:,} tasks added in {time.perf_counter() - t0:.1f} s")
        lease = store.open_job(job_id=None, scheduler="local", scheduler_job_id=None,
                               host="bench", nodes=1, ranks=1, filters=ClaimFilter(),
                               wall_time_min=None, lease_sec=600)
        print("member's statement | the launcher's write, started once the member "
              "holds its rows")
        for _ in range(opts.rounds):
            for write in ("plain", "unlocked"):
                ids = _claim(store, lease, opts.running)
                _round(store, admin, lease, ids, lambda: client.kill(workflow="bulk"),
                       "kill", write)
                # Back to READY (the next round claims its tasks again).
                _round(store, admin, lease, ids, lambda: client.retry(workflow="bulk"),
                       "retry", write)


if __name__ == "__main__":
    main()
