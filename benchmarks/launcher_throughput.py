"""No-op throughput of the launcher against the bare spawn rate measured in the same run.

    python benchmarks/launcher_throughput.py --ranks 4 --ranks 16 --tasks 4000

Target (issue 5): ≥ 80% of the bare ``/bin/true`` spawn rate with 4 and 16 ranks. The
throughput is tasks / (first start → last end) from the tasks' own times.
"""

from __future__ import annotations

import argparse
import json

import launcher_common as lc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ranks", type=int, action="append")
    ap.add_argument("--tasks", type=int, default=4000)
    ap.add_argument("--packing", type=int, default=16)
    ap.add_argument("--project")
    ap.add_argument("--launcher-arg", action="append", default=[])
    args = ap.parse_args()
    results = []
    with lc.project(args.project) as proj, lc.connect(proj) as conn:
        before = lc.spawn_rate()
        for ranks in args.ranks or [4, 16]:
            lc.reset(conn)
            lc.add_tasks(conn, args.tasks, "/bin/true", args.packing)
            wall = lc.launch(proj, ranks, *args.launcher_arg)
            s = lc.summary(conn)
            after = lc.spawn_rate()
            # The machine is shared: the ceiling is the better of the bare rates measured
            # just before and just after this run (the conservative choice).
            bare = max(before, after)
            rate = s["finished"] / s["span_s"]
            results.append({"ranks": ranks, "tasks": int(s["finished"]),
                            "rate_per_s": round(rate, 1),
                            "bare_spawn_per_s": [round(before, 1), round(after, 1)],
                            "ratio": round(rate / bare, 3), "launcher_wall_s": round(wall, 2)})
            print(json.dumps(results[-1]), flush=True)
            before = after


if __name__ == "__main__":
    main()
