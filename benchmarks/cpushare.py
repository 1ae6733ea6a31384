"""Where a launcher run's CPU goes, by kind of process, in its steady state.

One run of 4 ranks × packing 16 (as the `python` scenario's) over N tasks of a kind —
``null`` (the null runner), ``exec`` (``/bin/true``), ``python`` (a no-op call),
``python-nodir`` (the same, an app without task directories) — and two snapshots of
every process's CPU time (``/proc/N/stat``) ``after`` s and ``after + window`` s into
the run; the tasks that ended between the two divide each kind's CPU:

    ranks          the launcher's ranks (the leader's own node included)
    interpreters   warm interpreters and their zygotes
    postgres       the project's server
    reaped by K    processes of kind K reaped in the window: for ``exec``, the tasks'
                   trampolines and the tasks they became (reaped by the ranks)
    watchdogs, other

Every process of the host is counted, by its command line: run it on a quiet machine
(another project's Postgres counts as "postgres", anything else as "other").

``python -m benchmarks.cpushare python 20000`` prints µs per task of each, the rank's
own, and how busy the host's cores were in the window.
"""

from __future__ import annotations

import argparse
import collections
import os
import threading
import time
from typing import Any

from . import launcher_common as lc
from .measure import one_run
from .projects import bench_project, bench_query
from .scenarios_python import ENV, NODES, add_python

KINDS = ("null", "exec", "python", "python-nodir")
# per process: its own CPU s, its reaped children's CPU s, its command line
Snapshot = tuple[float, dict[int, tuple[float, float, str]]]


def _snapshot() -> Snapshot:
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[float, float, str]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
        out[int(name)] = ((int(fields[11]) + int(fields[12])) / tick,
                          (int(fields[13]) + int(fields[14])) / tick, cmd)
    return time.time(), out


def kind_of(cmd: str) -> str:
    if "pycall" in cmd or "pyzygote" in cmd:
        return "interpreters"
    if "postgres" in cmd:
        return "postgres"
    starter = os.path.basename(cmd.split(" ", 1)[0])
    if starter in ("mpiexec", "mpirun", "hydra_pmi_proxy", "srun"):
        return "other"
    if "-m balsam_mpi " in cmd or cmd.rstrip().endswith("-m balsam_mpi"):
        return "ranks"
    if "watchdog.py" in cmd:
        return "watchdogs"
    if "trampoline" in cmd or cmd.startswith("/bin/true"):
        return "trampolines"
    return "other"


def share(kind: str, n: int, after: float, window: float) -> dict[str, Any]:
    snaps: list[Snapshot] = []

    def sample() -> None:
        time.sleep(after)
        snaps.append(_snapshot())
        time.sleep(window)
        snaps.append(_snapshot())

    with bench_project() as proj, lc.connect(proj) as conn:
        lc.reset(conn)
        if kind in ("null", "exec"):
            lc.add_tasks(conn, n, "/bin/true", 16)
        else:
            add_python(conn, n, "noop", task_dirs=kind == "python")
        sampler = threading.Thread(target=sample, name="cpushare-sampler")
        sampler.start()
        run = one_run(proj, conn, NODES, *(("--null-runner",) if kind == "null" else ()),
                      env=ENV)
        sampler.join()
        if len(snaps) < 2:
            raise RuntimeError("the run ended before the second snapshot: more tasks")
        (t_a, a), (t_b, b) = snaps
        rows = conn.execute(bench_query("task_times"), {"limit": 10**7}).fetchall()
    ended = sum(1 for _s, e in rows if t_a <= e <= t_b)
    if not ended:
        raise RuntimeError("no task ended in the window: start it later or widen it")
    cpu: dict[str, float] = collections.defaultdict(float)
    ranks: list[float] = []
    for pid, (own, reaped, cmd) in b.items():
        own0, reaped0, _ = a.get(pid, (0.0, 0.0, cmd))
        cpu[kind_of(cmd)] += own - own0
        # Processes that ended in the window (a process task's trampoline and the task
        # it became): their CPU is their parent's once reaped.
        if reaped > reaped0:
            cpu[f"reaped by {kind_of(cmd)}"] += reaped - reaped0
        if kind_of(cmd) == "ranks":
            ranks.append((own - own0) / ended * 1e6)
    return {"kind": kind, "tasks": n, "rate_per_s": run["rate_per_s"], "window_s": t_b - t_a,
            "ended_in_window": ended,
            "us_per_task": {k: v / ended * 1e6
                            for k, v in sorted(cpu.items(), key=lambda kv: -kv[1])},
            "rank_us_per_task": sorted(ranks, reverse=True),
            "cores_busy": sum(cpu.values()) / (t_b - t_a) / (os.cpu_count() or 1)}


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.cpushare")
    ap.add_argument("kind", choices=KINDS)
    ap.add_argument("tasks", type=int)
    ap.add_argument("--after", type=float, default=3.0, help="first snapshot (s)")
    ap.add_argument("--window", type=float, default=3.0, help="between the two (s)")
    args = ap.parse_args()
    r = share(args.kind, args.tasks, args.after, args.window)
    print(f"{r['kind']}: {r['rate_per_s']:,.0f} tasks/s; {r['ended_in_window']} ended in "
          f"{r['window_s']:.2f} s; cores busy {r['cores_busy']:.2f}")
    for k, v in r["us_per_task"].items():
        print(f"  {k:13s} {v:7.1f} µs/task")
    print("  by rank      ", " ".join(f"{v:.0f}" for v in r["rank_us_per_task"]))


if __name__ == "__main__":
    main()
