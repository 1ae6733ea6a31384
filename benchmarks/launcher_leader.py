"""The leader's capacity: tasks that "finish" the moment they start (``--null-runner``).

    python benchmarks/launcher_leader.py --ranks 4 --tasks 50000

Everything but the task processes is real: claims, MPI messages, bulk reports with their
events and triggers. Prints tasks/s (first start → last end) and the leader's CPU time per
task (from its log). Target (issue 5): ≥ 20k tasks/s of leader capacity.
"""

from __future__ import annotations

import argparse
import json
import re

import launcher_common as lc


def leader_cpu(log_dir: str) -> float:
    import glob

    for path in sorted(glob.glob(f"{log_dir}/launcher_*_r0.log"), reverse=True):
        found = re.findall(r"usage: rank cpu ([0-9.]+) s", open(path).read())
        if found:
            return float(found[-1])
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--tasks", type=int, default=50000)
    ap.add_argument("--packing", type=int, default=64)
    ap.add_argument("--project")
    args = ap.parse_args()
    with lc.project(args.project) as proj, lc.connect(proj) as conn:
        lc.reset(conn)
        for path in proj.log_dir.glob("launcher_*.log"):
            path.unlink()
        lc.add_tasks(conn, args.tasks, "/bin/true", args.packing)
        wall = lc.launch(proj, args.ranks, "--null-runner")
        s = lc.summary(conn)
        cpu = leader_cpu(str(proj.log_dir))
        print(json.dumps({
            "ranks": args.ranks, "tasks": int(s["finished"]),
            "rate_per_s": round(s["finished"] / s["span_s"], 1),
            "leader_cpu_s": cpu, "leader_cpu_us_per_task": round(cpu / s["finished"] * 1e6, 1),
            "leader_capacity_per_s": round(s["finished"] / cpu, 1),
            "launcher_wall_s": round(wall, 2)}))


if __name__ == "__main__":
    main()
