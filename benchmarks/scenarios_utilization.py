"""Scenario `utilization`: fixed-duration tasks (`/bin/sleep D`, D = 0.1, 1, 10 s) on N
nodes × node_packing_count P.

Utilization is `balsam-mpi report`'s: busy node-seconds over the node-seconds the batch
job held (its row's start to its end), so launcher start-up, the ramp, the tail and the
close all count against it. Time to first task is from the batch job's start (and, from
the leader's log, from MPI init); tail idle is the last task's end to the job's end.

Utilization is also given over first start → last end (issue 5's definition). The
same-run ceiling is the concurrent /bin/true spawn rate; ``demand_over_spawn_ceiling`` is
the spawn rate the workload asks for (slots / D) over it — a 0.1 s workload on 64 slots
asks for 640 spawns/s, a large share of this machine.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from . import ceiling
from . import launcher_common as lc
from .harness import write_result
from .measure import one_run, task_times
from .plots import plot_timelines, png_path
from .projects import bench_project

KEYS = ("utilization", "utilization_span", "first_task_s", "first_start_after_init_s", "tail_idle_s",
        "job_wall_s", "leader_cpu_us_per_task", "rate_per_s", "worker_rank_cpu_fraction",
        "leader_cpu_fraction", "claims_per_task")


def plan(quick: bool) -> list[dict[str, Any]]:
    """(duration, waves, runs): enough waves that the steady state dominates the ramp."""
    if quick:
        return [{"duration": 0.1, "waves": 20, "runs": 3},
                {"duration": 1.0, "waves": 5, "runs": 3},
                {"duration": 10.0, "waves": 2, "runs": 1}]
    return [{"duration": 0.1, "waves": 50, "runs": 3},
            {"duration": 1.0, "waves": 10, "runs": 3},
            {"duration": 10.0, "waves": 3, "runs": 3}]


def run(quick: bool, out: Path) -> dict[str, Any]:
    nodes, packing = 4, 16
    slots = nodes * packing
    cases = plan(quick)
    results: dict[str, Any] = {}
    raw: dict[str, Any] = {}
    with bench_project() as proj, lc.connect(proj) as conn:
        spawn = statistics.median(ceiling.spawn_concurrent(1000) for _ in range(3))
        for case in cases:
            d, waves = case["duration"], case["waves"]
            runs = []
            for _ in range(case["runs"]):
                lc.reset(conn)
                lc.add_tasks(conn, slots * waves, f"/bin/sleep {d:g}", packing)
                m = one_run(proj, conn, nodes, timeout=120 + 4 * d * waves)
                m["worker_rank_cpu_fraction"] = (
                    max(m["worker_cpu_s"]) / m["launcher_wall_s"] if m["worker_cpu_s"]
                    else float("nan"))
                m["leader_cpu_fraction"] = m["leader_cpu_s"] / m["launcher_wall_s"]
                runs.append(m)
            raw[f"{d:g}"] = task_times(conn)
            med = {k: statistics.median(r[k] for r in runs) for k in KEYS}
            med["demand_over_spawn_ceiling"] = slots / d / spawn
            results[f"{d:g}"] = {"duration_s": d, "waves": waves, "tasks": slots * waves,
                                 "median": med, "runs": runs}
    params = {"nodes": nodes, "node_packing_count": packing, "cases": cases,
              "command": "/bin/sleep D"}
    path = write_result(out, "utilization", params,
                        {"spawn_concurrent_per_s": spawn, "by_duration": results},
                        {"task_times_last_run": raw})
    plot_timelines(png_path(out, "utilization"),
                   f"busy slots, {nodes} nodes x packing {packing} (last run)",
                   {f"{k} s tasks": v for k, v in raw.items()}, slots)
    summary: dict[str, Any] = {"spawn concurrent /s (same run)": round(spawn)}
    for key, res in results.items():
        m = res["median"]
        summary[f"{key} s tasks"] = (
            f"utilization {m['utilization']:.4f} (first start to last end "
            f"{m['utilization_span']:.4f}), first task {m['first_task_s']:.2f} s "
            f"(MPI init +{m['first_start_after_init_s']:.2f} s), tail {m['tail_idle_s']:.2f} s,"
            f" leader {m['leader_cpu_us_per_task']:.0f} us/task, "
            f"{m['claims_per_task']:.3f} claims/task ({res['tasks']} tasks,"
            f" {len(res['runs'])} runs)")
    summary["written"] = str(path)
    return summary
