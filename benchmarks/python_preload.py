"""Part of scenario `python`: ``python_preload`` against none, in alternating runs.

0.1 s calls of ``benchmarks.pyheavy`` (a module whose imports take ~0.17 s of CPU here),
4 nodes x 16, without task directories. Without preload each of a node's 16 interpreters
imports the module at its first call, all of them at once as the first wave starts; with
``BALSAM_PYTHON_PRELOAD=benchmarks.pyheavy`` each node's zygote imports it once before it
forks them. The figures: each batch job's wall time (opened to closed) and tasks/s. The
utilization of such runs says little here: a call's time includes its import, so the
runs without preload count the imports as busy slots."""

from __future__ import annotations

import statistics
from typing import Any

from balsam_mpi.base.project import Project

from . import launcher_common as lc
from .measure import one_run
from .projects import bench_query

MODULE = "benchmarks.pyheavy"


def _one(proj: Project, conn: Any, env: dict[str, str], n: int) -> dict[str, float]:
    lc.reset(conn)
    conn.execute(bench_query("python_app"), {"a": "heavy", "p": f"{MODULE}:sleep",
                                             "dirs": False})
    conn.execute(bench_query("python_tasks"), {"w": "bench", "a": "heavy", "pack": 16,
                                               "n": n, "indexed": False,
                                               "params": '{"s": 0.1}'})
    conn.execute("VACUUM ANALYZE tasks")
    r = one_run(proj, conn, 4, env=env, timeout=300)
    return {k: float(r[k]) for k in ("job_wall_s", "first_task_s", "utilization",
                                     "finished")}


def measure(proj: Project, conn: Any, base_env: dict[str, str], quick: bool
            ) -> dict[str, Any]:
    waves, pairs = (5, 2) if quick else (20, 3)
    n = 64 * waves
    runs: dict[str, list[dict[str, float]]] = {"none": [], "preload": []}
    for p in range(pairs):
        for mode in ("none", "preload") if p % 2 == 0 else ("preload", "none"):
            env = dict(base_env)
            if mode == "preload":
                env["BALSAM_PYTHON_PRELOAD"] = MODULE
            runs[mode].append(_one(proj, conn, env, n))
    med = {m: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
           for m, rs in runs.items()}
    for m in med.values():
        m["rate_per_s"] = n / m["job_wall_s"]
    return {"tasks": n, "waves": waves, "pairs": pairs, "median": med, "runs": runs,
            "wall_none_over_preload": med["none"]["job_wall_s"] / med["preload"]["job_wall_s"]}


def summary_line(res: dict[str, Any]) -> str:
    none, pre = res["median"]["none"], res["median"]["preload"]
    return (f"job wall {none['job_wall_s']:.2f} s without, {pre['job_wall_s']:.2f} s with "
            f"({res['wall_none_over_preload']:.2f}x shorter); {none['rate_per_s']:.0f} "
            f"against {pre['rate_per_s']:.0f} tasks/s; job opened -> first task "
            f"{none['first_task_s']:.3f} / {pre['first_task_s']:.3f} s")
