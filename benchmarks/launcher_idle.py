"""CPU used by idle launcher ranks (nothing to run, `--persistent`).

    python benchmarks/launcher_idle.py --ranks 4 --seconds 10

Target (issue 5): an idle worker rank uses ≤ 1% of a core. Reads each rank's CPU time
from /proc after a warm-up, over ``--seconds``, then stops the launcher with SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

import launcher_common as lc

from balsam_mpi.demo.run import find_mpiexec


def cpu_s(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ranks_of(root: int) -> list[int]:
    """Python processes below mpiexec (the ranks), oldest first."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid=,comm="], capture_output=True,
                         text=True).stdout.split("\n")
    children: dict[int, list[tuple[int, str]]] = {}
    for line in out:
        if line.strip():
            pid, ppid, comm = line.split(None, 2)
            children.setdefault(int(ppid), []).append((int(pid), comm))
    found, todo = [], [root]
    while todo:
        for pid, comm in children.get(todo.pop(), []):
            todo.append(pid)
            if comm.startswith("python"):
                found.append(pid)
    return sorted(found)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--project")
    args = ap.parse_args()
    with lc.project(args.project) as proj, lc.connect(proj) as conn:
        lc.reset(conn)
        env = dict(os.environ, BALSAM_DB_PATH=str(proj.root))
        proc = subprocess.Popen([find_mpiexec(), "-n", str(args.ranks), sys.executable, "-m",
                                 "balsam_mpi", "--persistent"], env=env)
        time.sleep(3.0)  # start-up and the backoff reaching its cap
        pids = ranks_of(proc.pid)
        before = {p: cpu_s(p) for p in pids}
        time.sleep(args.seconds)
        used = {p: (cpu_s(p) - before[p]) / args.seconds for p in pids}
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        print(json.dumps({"ranks": len(pids), "seconds": args.seconds,
                          "core_fraction_per_rank": [round(used[p], 4) for p in pids]}))


if __name__ == "__main__":
    main()
