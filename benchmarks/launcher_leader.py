"""The leader's capacity: tasks that "finish" the moment they start (``--null-runner``).

    python benchmarks/launcher_leader.py --ranks 4 --tasks 50000

Everything but the task processes is real: claims, MPI messages, bulk reports with their
events and triggers. Prints the end-to-end tasks/s (first start → last end; bound by
Postgres here) and the leader's CPU time per task — the difference between a run of N/4
and one of N tasks, so start-up (imports, connecting) is not counted — and its inverse,
the leader's capacity. Target (issue 5): ≥ 20k tasks/s.
"""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

import launcher_common as lc


def leader_cpu(log_dir: str) -> float:
    import glob

    for path in sorted(glob.glob(f"{log_dir}/launcher_*_r0.log"), reverse=True):
        found = re.findall(r"usage: rank cpu ([0-9.]+) s", open(path).read())
        if found:
            return float(found[-1])
    return float("nan")


def one_run(proj: Any, conn: Any, ranks: int, tasks: int, packing: int) -> dict[str, float]:
    lc.reset(conn)
    lc.add_tasks(conn, tasks, "/bin/true", packing)
    wall = lc.launch(proj, ranks, "--null-runner")
    s = lc.summary(conn)
    return {"tasks": s["finished"], "rate_per_s": s["finished"] / s["span_s"],
            "cpu_s": leader_cpu(str(proj.log_dir)), "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--tasks", type=int, default=40000)
    ap.add_argument("--packing", type=int, default=64)
    ap.add_argument("--project")
    args = ap.parse_args()
    with lc.project(args.project) as proj, lc.connect(proj) as conn:
        # Two sizes: the difference removes the fixed start-up cost (imports, connecting)
        # and leaves the leader's CPU per task.
        small = one_run(proj, conn, args.ranks, args.tasks // 4, args.packing)
        big = one_run(proj, conn, args.ranks, args.tasks, args.packing)
        per_task = (big["cpu_s"] - small["cpu_s"]) / (big["tasks"] - small["tasks"])
        print(json.dumps({
            "ranks": args.ranks, "tasks": int(big["tasks"]),
            "end_to_end_rate_per_s": round(big["rate_per_s"], 1),
            "leader_cpu_s": [small["cpu_s"], big["cpu_s"]],
            "leader_cpu_us_per_task": round(per_task * 1e6, 1),
            "leader_capacity_per_s": round(1.0 / per_task, 1),
            "launcher_wall_s": round(big["wall_s"], 2)}))


if __name__ == "__main__":
    main()
