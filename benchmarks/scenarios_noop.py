"""Scenario `noop`: N no-op tasks (/bin/true) through the whole path — claim, MPI, spawn,
report, database — sweeping the number of ranks.

The throughput is finished tasks / (first start → last end), from the tasks' own times.
The ceiling is the bare sequential spawn rate of /bin/true from one Python process (the
issue's "bare spawn rate"), measured before and after the launcher runs of this same
scenario (their mean is the denominator): the machine is shared, so a ratio measured in
one run is the figure that travels. The issue's target is ≥ 80% of it with 4 and 16
ranks. Several ranks spawn side by side on this 2-core machine and can pass the
sequential rate, so two more ratios are given: to the concurrent spawn rate (one process,
8 in flight) and to as many bare Python spawners as there are ranks, side by side
(measured just before that rank count's runs). And one that takes the node's own work per
task in: as many nodes alone (`nodealone.py`: the launcher's node code with no MPI, leader
or database; task directory, outputs, trampoline, reap) side by side, measured just
before each run (the median of the runs' own ratios), so the ratio shows what the launcher adds on top of
the node — and the file system's cost of the moment, which varies a great deal here
(docs/launcher.md, *Task processes*), is in both.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from . import ceiling, fscost
from . import launcher_common as lc
from .harness import write_result
from .measure import one_run, task_times
from .nodealone import node_parallel
from .plots import plot_sweep, png_path
from .projects import bench_project

RUNS = 3
TASK_DIR_SAMPLE = 200  # directories a sample of the file system's cost makes (~0.01-0.1 s)


def _task_dir_us(proj: Any) -> float:
    """The CPU µs a task's directory and two files cost in the project's data/ now."""
    return float(fscost.task_dir_cost(str(proj.root / "data"), TASK_DIR_SAMPLE)["per_task_us"])


def run(quick: bool, out: Path) -> dict[str, Any]:
    ranks_list = [2, 4, 16] if quick else [2, 4, 8, 16]
    n_tasks = 2000 if quick else 4000
    packing = 16
    n_spawn = 1000 if quick else 3000
    per_ranks: dict[str, Any] = {}
    raw: dict[str, Any] = {}
    with bench_project() as proj, lc.connect(proj) as conn:
        spawn_before = statistics.median(ceiling.spawn_sequential(n_spawn) for _ in range(3))
        conc_before = statistics.median(ceiling.spawn_concurrent(n_spawn) for _ in range(3))
        node_alone = statistics.median(node_parallel(1, proj.root / "data") for _ in range(3))
        parallel: dict[str, float] = {}
        for ranks in ranks_list:
            parallel[str(ranks)] = statistics.median(
                ceiling.spawn_parallel(ranks, 1.5) for _ in range(3))
            runs = []
            for _ in range(RUNS):
                # The file system's cost drifts within minutes here: the nodes alone
                # are measured just before each run, and each run has its own ratio.
                side = node_parallel(ranks, proj.root / "data")
                lc.reset(conn)
                lc.add_tasks(conn, n_tasks, "/bin/true", packing)
                dir_before = _task_dir_us(proj)
                run_ = one_run(proj, conn, ranks)
                # What a task directory cost right beside this run: it drifts tenfold
                # within one scenario here (benchmarks/README.md, *This round*).
                run_["task_dir_us"] = (dir_before + _task_dir_us(proj)) / 2
                run_["parallel_nodes_per_s"] = side
                run_["ratio_to_parallel_nodes"] = run_["rate_per_s"] / side
                runs.append(run_)
            raw[str(ranks)] = task_times(conn)  # the last run's tasks
            per_ranks[str(ranks)] = {
                "median": {k: statistics.median(r[k] for r in runs)
                           for k in ("rate_per_s", "span_s", "launcher_wall_s",
                                     "leader_cpu_us_per_task", "first_start_after_init_s",
                                     "utilization", "parallel_nodes_per_s",
                                     "ratio_to_parallel_nodes", "task_dir_us")},
                "runs": runs,
            }
        spawn_after = statistics.median(ceiling.spawn_sequential(n_spawn) for _ in range(3))
        conc_after = statistics.median(ceiling.spawn_concurrent(n_spawn) for _ in range(3))
    ceiling_rate = (spawn_before + spawn_after) / 2
    conc_rate = (conc_before + conc_after) / 2
    for res in per_ranks.values():
        res["median"]["ratio_to_spawn"] = res["median"]["rate_per_s"] / ceiling_rate
        res["median"]["ratio_to_concurrent_spawn"] = res["median"]["rate_per_s"] / conc_rate
    for key, res in per_ranks.items():
        res["median"]["parallel_spawn_per_s"] = parallel[key]
        res["median"]["ratio_to_parallel_spawn"] = res["median"]["rate_per_s"] / parallel[key]
    results = {"spawn_ceiling_per_s": {"before": spawn_before, "after": spawn_after,
                                       "used": ceiling_rate},
               "spawn_concurrent_per_s": {"before": conc_before, "after": conc_after,
                                          "used": conc_rate},
               "node_alone_per_s": node_alone,
               "by_ranks": per_ranks}
    params = {"ranks": ranks_list, "tasks": n_tasks, "node_packing_count": packing,
              "runs": RUNS, "command": "/bin/true", "n_spawn": n_spawn}
    path = write_result(out, "noop", params, results, {"task_times_last_run": raw})
    xs = [int(r) for r in per_ranks]
    plot_sweep(png_path(out, "noop"), "no-op throughput (median of 3)", "ranks", xs,
               {"launcher tasks/s": [per_ranks[str(x)]["median"]["rate_per_s"] for x in xs]},
               ceiling_rate, "bare sequential spawn /s (same run)")
    summary: dict[str, Any] = {"spawn ceiling /s": round(ceiling_rate),
                               "concurrent spawn /s": round(conc_rate),
                               "one node alone /s": round(node_alone)}
    for r, res in per_ranks.items():
        m = res["median"]
        summary[f"ranks={r}"] = (f"{m['rate_per_s']:.0f} tasks/s = {m['ratio_to_spawn']:.2f}"
                                 f" x spawn ({m['ratio_to_concurrent_spawn']:.2f} x concurrent,"
                                 f" {m['ratio_to_parallel_spawn']:.2f} x {r} spawners,"
                                 f" {m['ratio_to_parallel_nodes']:.2f} x {r} nodes alone); "
                                 f"leader {m['leader_cpu_us_per_task']:.0f} us/task")
    summary["written"] = str(path)
    return summary
