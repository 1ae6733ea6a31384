"""Scenario `leader`: the leader's capacity with the null runner (``--null-runner``: a task
"finishes" the moment it starts, no process), sweeping ranks and the claim size
(``BALSAM_CLAIM_LIMIT``, rows per claim statement at most).

Everything but the task processes is real: claims, MPI messages, bulk reports with their
events and triggers. Figures: tasks/s (first start → last end), the leader's CPU seconds
per task (from its log), the marginal CPU per task (less the leader's CPU in a run with
no tasks: start-up and close) and its capacity = 1 / marginal CPU per task, i.e. how
many tasks/s one leader core could feed if the database and workers kept up. The same run
measures, for the scale model, the database latency of a claim and of a report flush by
batch size, and the database time per task (``calibrate.py``), where it goes (claim,
report, trigger, outside the functions: ``dbparts.py``) and the leader's CPU per message
(``msgcost.py``); the
ceiling is the bare SKIP LOCKED claim rate of ``ceiling`` (k = 4096, one claimer),
re-measured here.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from balsam_mpi.demo.run import find_mpiexec

from . import ceiling
from . import launcher_common as lc
from .calibrate import db_costs
from .dbparts import db_breakdown, summary_line
from .harness import write_result
from .measure import empty_run_leader_cpu, one_run
from .plots import plot_sweep, png_path
from .projects import admin_dsn, bench_project

KEYS = ("rate_per_s", "leader_cpu_us_per_task", "span_s", "launcher_wall_s")


def message_cost(n_msgs: int = 2000) -> dict[str, float]:
    proc = subprocess.run([find_mpiexec(), "-n", "2", sys.executable, "-m",
                           "benchmarks.msgcost", str(n_msgs)], capture_output=True, text=True,
                          check=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def run(quick: bool, out: Path) -> dict[str, Any]:
    # (ranks, claim limit): quick keeps the claim sweep at 4 ranks and one point at 2.
    if quick:
        grid_points = [(2, 4096), (4, 256), (4, 4096)]
    else:
        grid_points = [(r, c) for r in (2, 4, 8, 16) for c in (64, 512, 4096)]
    ranks_list = sorted({r for r, _ in grid_points})
    claims = sorted({c for _, c in grid_points})
    n_tasks = 5_000 if quick else 20_000
    packing = 64
    runs_each = 3
    grid: dict[str, Any] = {}
    with bench_project() as proj, lc.connect(proj) as conn:
        claim_ceiling = statistics.median(
            ceiling.claim_rate(admin_dsn(proj), batch=4096, claimers=1, total=n_tasks)[
                "rows_per_s"] for _ in range(3))
        costs = db_costs(proj, conn)
        parts = db_breakdown(proj, conn)
        # The leader's fixed CPU (imports, connecting, opening and closing its batch job)
        # from runs with nothing to do, so the per-task figure is the marginal cost.
        empty: dict[int, float] = {}
        for ranks in ranks_list:
            samples = []
            for _ in range(runs_each):
                lc.reset(conn)
                samples.append(empty_run_leader_cpu(proj, ranks, "--null-runner"))
            empty[ranks] = statistics.median(samples)
        for ranks, limit in grid_points:
            runs = []
            for _ in range(runs_each):
                lc.reset(conn)
                lc.add_tasks(conn, n_tasks, "/bin/true", packing)
                runs.append(one_run(proj, conn, ranks, "--null-runner",
                                    env={"BALSAM_CLAIM_LIMIT": str(limit)}))
            for r in runs:
                r["leader_marginal_us_per_task"] = (
                    (r["leader_cpu_s"] - empty[ranks]) / max(r["finished"], 1) * 1e6)
            med = {k: statistics.median(r[k] for r in runs)
                   for k in (*KEYS, "leader_marginal_us_per_task")}
            med["capacity_per_s"] = 1e6 / max(med["leader_marginal_us_per_task"], 1e-3)
            med["ratio_to_claim_ceiling"] = med["rate_per_s"] / claim_ceiling
            grid[f"ranks={ranks},claim={limit}"] = {"ranks": ranks, "claim_limit": limit,
                                                    "median": med, "runs": runs}
    msg = message_cost()
    results = {"claim_ceiling_rows_per_s": claim_ceiling, "db_costs": costs,
               "db_parts": parts,
               "leader_cpu_s_with_no_tasks": {str(k): v for k, v in empty.items()},
               "message_cost": msg, "grid": grid}
    params = {"ranks": ranks_list, "claim_limits": claims, "tasks": n_tasks,
              "node_packing_count": packing, "runs": runs_each}
    path = write_result(out, "leader", params, results)
    nan = float("nan")

    def line(c: int, key: str) -> list[float]:
        return [grid[f"ranks={r},claim={c}"]["median"][key] if (r, c) in grid_points
                else nan for r in ranks_list]

    series = {f"tasks/s, claim {c}": line(c, "rate_per_s") for c in claims}
    series.update({f"capacity (1/leader CPU), claim {c}": line(c, "capacity_per_s")
                   for c in claims})
    plot_sweep(png_path(out, "leader"), "leader with the null runner (median of 3)", "ranks",
               ranks_list, series, claim_ceiling, "bare claim rows/s, k=4096 (same run)")
    summary: dict[str, Any] = {"claim ceiling rows/s": round(claim_ceiling)}
    for key, res in grid.items():
        m = res["median"]
        summary[key] = (f"{m['rate_per_s']:.0f} tasks/s ({m['ratio_to_claim_ceiling']:.2f} x "
                        f"claim ceiling), leader {m['leader_cpu_us_per_task']:.1f} us/task, "
                        f"{m['leader_marginal_us_per_task']:.1f} marginal = capacity "
                        f"{m['capacity_per_s']:.0f}/s")
    for name in ("claim", "report_started", "report_finished", "report_combined"):
        fit = costs[name]["fit"]
        summary[f"{name} latency"] = (f"{fit['fixed_s'] * 1e3:.2f} ms + "
                                      f"{fit['per_row_s'] * 1e6:.1f} us/row")
    per_task = costs["per_task_s"]
    summary["database time per task"] = (
        f"{per_task['combined'] * 1e6:.1f} us with start and end in one flush, "
        f"{per_task['two_step'] * 1e6:.1f} us apart (target 25)")
    summary["database time per task, by part"] = summary_line(parts)
    summary["leader cpu per REPORT"] = f"{msg['cpu_s_per_msg_items_1'] * 1e6:.0f} us"
    summary["written"] = str(path)
    return summary
