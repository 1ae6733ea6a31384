"""Where one task's database time goes, for the `leader` scenario.

The launcher's own calls (:class:`balsam_mpi.launcher.store.Store`), as ``calibrate.py``
makes them: a claim of k rows, then one report carrying each task's start and plain
success (one write per task, migration 0011), ``reps`` times. Timed at the client, and
at the server per function through ``pg_stat_user_functions`` (``track_functions = pl``
for this database while it runs): the claim, the report's own UPDATE (the report
function's self time), the statement trigger after an UPDATE of tasks (events, run steps,
the transition check, waiters, the DAG), and what is left outside any function (the
client building and reading the call, the round trip, parsing the parameters, the
commit). Also how many of the table's row updates were HOT (no index entry).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from balsam_mpi.base.project import Project
from balsam_mpi.launcher.store import Store
from balsam_mpi.launcher.storeport import ClaimFilter
from balsam_mpi.protocol import EndKind, Finished, Started

from . import launcher_common as lc

# The trigger functions after an UPDATE of tasks: one since migration 0016, four before.
TRIGGERS = ("tasks_on_update", "tasks_events_on_update", "tasks_check_transitions",
            "tasks_propagate", "tasks_notify_final")


def _function_times(conn: Any, calls_expected: int) -> dict[str, tuple[float, float]]:
    """(total ms, self ms) per function, once the store's backend has flushed its counts
    (a backend reports them when it ends; wait for them, at most 5 s)."""
    deadline = time.monotonic() + 5.0
    while True:
        rows = conn.execute("SELECT funcname, calls, total_time, self_time "
                            "FROM pg_stat_user_functions").fetchall()
        by_name = {str(n): (int(c), float(t), float(s)) for n, c, t, s in rows}
        if by_name.get("launcher_claim", (0, 0, 0))[0] >= calls_expected \
                or time.monotonic() > deadline:
            return {n: (t, s) for n, (_c, t, s) in by_name.items()}
        time.sleep(0.1)


def db_breakdown(proj: Project, conn: Any, k: int = 4096, reps: int = 5) -> dict[str, Any]:
    """µs per task of each part, at k tasks per call (medians of ``reps`` calls for the
    client times; sums over the calls for the server's)."""
    lc.reset(conn)
    lc.add_tasks(conn, k * reps, "/bin/true", 64)
    conn.execute("ALTER DATABASE balsam SET track_functions = 'pl'")
    try:
        conn.execute("SELECT pg_stat_reset()")
        claim_us: list[float] = []
        report_us: list[float] = []
        with Store.connect(proj) as store:
            lease = store.open_job(job_id=None, scheduler="local", scheduler_job_id=None,
                                   host="dbparts", nodes=1, ranks=1, filters=ClaimFilter(),
                                   wall_time_min=None, lease_sec=600)
            for _ in range(reps):
                t0 = time.perf_counter()
                rows = store.claim(lease, limit=k, capacity=float(k), max_need=1.0,
                                   filters=ClaimFilter())
                t1 = time.perf_counter()
                now = time.time()
                started = [Started(r.id, lease.epoch, now) for r in rows]
                ended = [Finished(r.id, lease.epoch, int(EndKind.DONE), 0, now, now + 1e-3)
                         for r in rows]
                t2 = time.perf_counter()
                store.report(lease, started, ended)
                t3 = time.perf_counter()
                if len(rows) != k:
                    raise RuntimeError(f"claimed {len(rows)} of {k} rows")
                claim_us.append((t1 - t0) / k * 1e6)
                report_us.append((t3 - t2) / k * 1e6)
            store.close_job(lease, "FINISHED", "dbparts")
        funcs = _function_times(conn, reps)
        upd, hot = conn.execute("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                                "WHERE relname = 'tasks'").fetchone()
    finally:
        conn.execute("ALTER DATABASE balsam RESET track_functions")
    n = k * reps

    def per_task(name: str, which: int = 0) -> float:
        return funcs.get(name, (0.0, 0.0))[which] * 1e3 / n

    claim = statistics.median(claim_us)
    report = statistics.median(report_us)
    server_claim = per_task("launcher_claim")
    server_report = per_task("launcher_report")
    trigger = sum(per_task(t) for t in TRIGGERS)
    return {
        "k": k, "reps": reps,
        "client_claim_us": claim, "client_report_us": report,
        "claim_us": server_claim,
        "report_update_us": per_task("launcher_write_reports", 1),
        "trigger_us": trigger,
        "outside_functions_us": (claim - server_claim) + (report - server_report),
        "total_us": claim + report,
        "tasks_updates": int(upd), "tasks_hot_updates": int(hot),
    }


def summary_line(parts: dict[str, Any]) -> str:
    return (f"{parts['total_us']:.1f} us/task at k={parts['k']}: claim {parts['claim_us']:.1f}"
            f" + report UPDATE {parts['report_update_us']:.1f} + trigger (events, check, "
            f"DAG) {parts['trigger_us']:.1f} + outside functions "
            f"{parts['outside_functions_us']:.1f}; HOT updates {parts['tasks_hot_updates']}"
            f" of {parts['tasks_updates']}")
