"""The database costs the scale model needs, measured with the launcher's own statements.

The launcher does not log how long each claim or flush took (its database calls run on a
thread the profiler does not see), so these are timed here, outside a launcher, through
the same :class:`balsam_mpi.launcher.store.Store` calls the leader makes: a claim of k
rows, and a flush (``report_unlocked``) of k starts and of k ends, for several k; and a claim of k more whose starts and
ends go in one report (what a flush carries for tasks shorter than the flush interval:
one write per task, migration 0011). A straight line a + b·k is fitted to each (the fixed
cost of a round trip and statement, and the cost per row), on relative errors. The
database time per task is the sum of the per-row costs: claim + start + end when they
are flushed apart, claim + the combined report when together.
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

SIZES = (16, 64, 256, 1024, 4096)


def fit_line(xs: list[float], ys: list[float]) -> dict[str, float]:
    """Least squares y = a + b·x on relative errors (weights 1/y²), so the small batches
    (a few ms, where the fixed cost shows) count as much as the large ones (hundreds
    of ms, where the per-row cost shows). a: fixed seconds, b: seconds per row."""
    ws = [1.0 / (y * y) if y else 1.0 for y in ys]
    sw = sum(ws)
    mx = sum(w * x for w, x in zip(ws, xs, strict=True)) / sw
    my = sum(w * y for w, y in zip(ws, ys, strict=True)) / sw
    sxx = sum(w * (x - mx) ** 2 for w, x in zip(ws, xs, strict=True))
    sxy = sum(w * (x - mx) * (y - my) for w, x, y in zip(ws, xs, ys, strict=True))
    b = sxy / sxx if sxx else 0.0
    return {"fixed_s": my - b * mx, "per_row_s": b}


def db_costs(proj: Project, conn: Any, reps: int = 3,
             sizes: tuple[int, ...] = SIZES) -> dict[str, Any]:
    """Median latency (s) of claim, start report and end report by batch size, and fits."""
    lc.reset(conn)
    lc.add_tasks(conn, 2 * sum(sizes) * reps, "/bin/true", 64)
    store = Store.connect(proj)
    try:
        lease = store.open_job(job_id=None, scheduler="local", scheduler_job_id=None,
                               host="calibrate", nodes=1, ranks=1, filters=ClaimFilter(),
                               wall_time_min=None, lease_sec=600)
        samples: dict[str, dict[int, list[float]]] = {
            "claim": {}, "report_started": {}, "report_finished": {}, "report_combined": {}}
        for _ in range(reps):
            for k in sizes:
                t0 = time.perf_counter()
                rows = store.claim(lease, limit=k, capacity=float(k), max_need=1.0,
                                   filters=ClaimFilter())
                t1 = time.perf_counter()
                now = time.time()
                started = [Started(r.id, lease.epoch, now) for r in rows]
                store.report_unlocked(lease, started, [])
                t2 = time.perf_counter()
                ended = [Finished(r.id, lease.epoch, int(EndKind.DONE), 0, now, now + 1e-3)
                         for r in rows]
                store.report_unlocked(lease, [], ended)
                t3 = time.perf_counter()
                if len(rows) != k:
                    raise RuntimeError(f"claimed {len(rows)} of {k} rows while calibrating")
                samples["claim"].setdefault(k, []).append(t1 - t0)
                samples["report_started"].setdefault(k, []).append(t2 - t1)
                samples["report_finished"].setdefault(k, []).append(t3 - t2)
                rows = store.claim(lease, limit=k, capacity=float(k), max_need=1.0,
                                   filters=ClaimFilter())
                now = time.time()
                t4 = time.perf_counter()
                store.report_unlocked(
                    lease, [Started(r.id, lease.epoch, now) for r in rows],
                    [Finished(r.id, lease.epoch, int(EndKind.DONE), 0, now, now + 1e-3)
                     for r in rows])
                t5 = time.perf_counter()
                if len(rows) != k:
                    raise RuntimeError(f"claimed {len(rows)} of {k} rows while calibrating")
                samples["report_combined"].setdefault(k, []).append(t5 - t4)
        store.close_job(lease, "FINISHED", "calibration")
    finally:
        store.close()
    out: dict[str, Any] = {"sizes": list(sizes), "reps": reps}
    for name, by_k in samples.items():
        med = [statistics.median(by_k[k]) for k in sizes]
        out[name] = {"median_s": med, "fit": fit_line([float(k) for k in sizes], med)}
    row = {name: out[name]["fit"]["per_row_s"] for name in samples}
    out["per_task_s"] = {
        "two_step": row["claim"] + row["report_started"] + row["report_finished"],
        "combined": row["claim"] + row["report_combined"]}
    return out
