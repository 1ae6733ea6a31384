"""What the reports' run_steps (migration 0010) add to the event path, per task.

    .venv/bin/python benchmarks/event_write_cost.py [--sizes 64,512,4096] [--rounds 7]
        [--json FILE]

Two copies of one fresh project's database: one as migrated (the event trigger also sums
each flush's run steps into run_steps), one with 0010's event path undone (the trigger as
before 0010, no run_steps, no rolled_up column: `events_cost_without_run_steps` in
bench.sql). Each round moves k tasks through the launcher's three flushes — RUNNING (at
node times in the last second), RUN_DONE (0.5 s later), JOB_FINISHED — one UPDATE each, in
both databases, alternating which goes first. The figure is the median over rounds of each
statement's wall time divided by k, per database, and their difference: the added cost
per task. Plain UPDATEs, not the launcher's functions: what differs between the two is
the trigger alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

STEPS = ("start", "end", "finish")


def _prepare(project: Any, dbname: str, n: int, baseline: bool) -> list[int]:
    from balsam_mpi.dbctl.admin import admin_connect
    from benchmarks.projects import bench_query

    info = project.read_server_info()
    with admin_connect(project, info, dbname, autocommit=True) as admin:
        if baseline:
            admin.execute(bench_query("events_cost_without_run_steps"))
        admin.execute(bench_query("events_cost_setup"))
        admin.execute(bench_query("events_cost_tasks"), {"n": n})
        admin.execute("VACUUM ANALYZE")
        return [r[0] for r in admin.execute(bench_query("events_cost_ids"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,512,4096")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]

    from balsam_mpi.dbctl import testing
    from balsam_mpi.dbctl.admin import admin_connect
    from benchmarks.projects import bench_project, bench_query

    n = sum(sizes) * args.rounds
    dbs = {"run_steps": f"cost_rs_{os.getpid()}", "before 0010": f"cost_b_{os.getpid()}"}
    per_task: dict[str, dict[int, dict[str, list[float]]]] = {
        v: {k: {s: [] for s in STEPS} for k in sizes} for v in dbs}
    with bench_project() as project:
        ids: dict[str, list[int]] = {}
        for variant, name in dbs.items():
            testing.create_copy(project, name)
            ids[variant] = _prepare(project, name, n, baseline=variant != "run_steps")
        info = project.read_server_info()
        conns = {v: admin_connect(project, info, name, autocommit=True)
                 for v, name in dbs.items()}
        try:
            offset = 0
            for r in range(args.rounds):
                for k in sizes:
                    order = list(dbs) if (r + k) % 2 == 0 else list(reversed(dbs))
                    for variant in order:
                        chunk = ids[variant][offset:offset + k]
                        for step in STEPS:
                            started = time.perf_counter()
                            conns[variant].execute(bench_query(f"events_cost_{step}"),
                                                   {"ids": chunk})
                            elapsed = time.perf_counter() - started
                            per_task[variant][k][step].append(1e6 * elapsed / k)
                    offset += k
        finally:
            for conn in conns.values():
                conn.close()
    result: dict[str, Any] = {"args": vars(args), "loadavg": os.getloadavg(), "sizes": {}}
    print(f"µs per task, median of {args.rounds} rounds "
          "(start + end + finish flushes, one UPDATE each)")
    for k in sizes:
        row: dict[str, Any] = {}
        for variant in dbs:
            med = {s: statistics.median(per_task[variant][k][s]) for s in STEPS}
            totals = [sum(per_task[variant][k][s][r] for s in STEPS)
                      for r in range(args.rounds)]
            row[variant] = {**med, "total": statistics.median(totals)}
        added = [sum(per_task["run_steps"][k][s][r] - per_task["before 0010"][k][s][r]
                     for s in STEPS) for r in range(args.rounds)]
        row["added"] = statistics.median(added)
        result["sizes"][k] = row
        print(f"k={k:5d}: before 0010 {row['before 0010']['total']:7.1f}  "
              f"run_steps {row['run_steps']['total']:7.1f}  added {row['added']:6.1f} "
              f"(paired rounds; start {row['run_steps']['start'] - row['before 0010']['start']:+.1f}, "
              f"end {row['run_steps']['end'] - row['before 0010']['end']:+.1f}, "
              f"finish {row['run_steps']['finish'] - row['before 0010']['finish']:+.1f})")
    load = os.getloadavg()
    print(f"load average now: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
