"""Utilization of sleep tasks packed on nodes, and how soon the first task starts.

    python benchmarks/launcher_utilization.py --seconds 1 --seconds 0.1

Utilization = busy node-seconds / (nodes × (first start → last end)), from the tasks'
own times; a task holds 1/node_packing_count of a node. Targets (issue 5), 4 nodes ×
node_packing_count 16: ≥ 99% for 1 s tasks, ≥ 97% for 0.1 s tasks. "First task" is the
first start after MPI init, from the leader's log line.
"""

from __future__ import annotations

import argparse
import glob
import json
import re

import launcher_common as lc


def first_task_s(log_dir: str) -> float:
    for path in sorted(glob.glob(f"{log_dir}/launcher_*_r0.log"), reverse=True):
        found = re.findall(r"first start ([0-9.]+) s after MPI init", open(path).read())
        if found:
            return float(found[-1])
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, action="append")
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--packing", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=10, help="tasks per slot")
    ap.add_argument("--project")
    args = ap.parse_args()
    with lc.project(args.project) as proj, lc.connect(proj) as conn:
        for seconds in args.seconds or [1.0, 0.1]:
            bare = lc.spawn_rate(2.0)
            lc.reset(conn)
            for path in proj.log_dir.glob("launcher_*.log"):
                path.unlink()
            n = args.ranks * args.packing * args.rounds
            lc.add_tasks(conn, n, f"sleep {seconds:g}", args.packing)
            wall = lc.launch(proj, args.ranks)
            s = lc.summary(conn)
            util = s["busy_node_s"] / (args.ranks * s["span_s"])
            ideal = n * seconds / (args.ranks * args.packing)
            print(json.dumps({
                "task_s": seconds, "ranks": args.ranks, "packing": args.packing,
                "tasks": int(s["finished"]), "utilization": round(util, 4),
                "span_s": round(s["span_s"], 3), "ideal_s": round(ideal, 3),
                "first_task_after_init_s": first_task_s(str(proj.log_dir)),
                # Starting a task costs a spawn: with `slots` running tasks of `task_s`
                # the node must spawn slots/task_s per second; beyond the machine's
                # bare spawn rate no launcher can keep the slots full.
                "bare_spawn_per_s": round(bare, 1),
                "spawn_bound_utilization": round(min(1.0, bare * seconds
                                                     / (args.ranks * args.packing)), 4),
                "launcher_wall_s": round(wall, 2)}), flush=True)


if __name__ == "__main__":
    main()
