"""Scenario `exactly-once`: 50,000 no-op tasks through 5 launchers at once whose workflow
filters overlap (the `concurrent` filters), as the caller. The check is the point: every
task finished, exactly one RUNNING event each, no lost retry spent, no batch job LOST, and
no journal left behind (each leader closed cleanly and removed its own). Figures: the
wall time and the aggregate rate, with the journal lines written as a measure of what the
durable journal costs. `--quick`: 5,000 tasks.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from . import launcher_common as lc
from .harness import write_result
from .projects import bench_project, bench_query
from .scenarios_concurrent import FILTERS, SHARES, _start_all, _wait


def run(quick: bool, out: Path) -> dict[str, Any]:
    total = 5_000 if quick else 50_000
    ranks, packing = 2, 16
    with bench_project() as proj, lc.connect(proj) as conn:
        lc.reset(conn)
        if proj.data_dir.exists():
            for entry in proj.data_dir.iterdir():
                shutil.rmtree(entry, ignore_errors=True)
        for wf, share in SHARES.items():
            lc.add_tasks(conn, int(total * share), "/bin/true", packing, wf)
        t0 = time.perf_counter()
        _wait(_start_all(proj.root, ranks, None, None), timeout=3600)
        wall = time.perf_counter() - t0
        tasks, finished, running_events, not_once = conn.execute(
            bench_query("exactly_once")).fetchone()
        lost = conn.execute("SELECT count(*) FROM tasks WHERE lost_retries > 0").fetchone()[0]
        jobs = dict(conn.execute("SELECT state::text, count(*) FROM batch_jobs GROUP BY 1"
                                 ).fetchall())
        journals_left = sorted(p.name for p in proj.log_dir.glob("journal_*"))
        s = lc.summary(conn)
    ok = (not_once == 0 and finished == tasks and lost == 0
          and set(jobs) == {"FINISHED"} and not journals_left)
    results = {"exactly_once_ok": ok, "tasks": int(tasks), "finished": int(finished),
               "running_events": int(running_events), "not_exactly_once": int(not_once),
               "lost_retries_spent": int(lost), "batch_jobs": jobs,
               "journals_left": journals_left, "wall_s": wall,
               "rate_per_s": s["finished"] / s["span_s"] if s["span_s"] else float("nan")}
    params = {"tasks": total, "launchers": len(FILTERS), "filters": [list(f) for f in FILTERS],
              "workflow_shares": SHARES, "ranks_each": ranks, "node_packing_count": packing}
    path = write_result(out, "exactly-once", params, results)
    return {"exactly once": ok, "tasks": int(tasks), "wall s": round(wall, 1),
            "rate /s": round(results["rate_per_s"], 1), "written": str(path)}
