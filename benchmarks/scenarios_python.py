"""Scenario `python`: Python tasks in warm interpreters (docs/python-tasks.md), against
the same run's exec no-ops and bare spawn ceiling.

1. Throughput, 4 ranks, node_packing_count 16: N Python no-ops (return None: no result
   to write), the same of an app without task directories (`--no-task-dirs`: no
   directory and files per call), N Python calls returning a small dict (results written
   with the reports),
   N exec no-ops (`/bin/true`) and N tasks of the null runner (no process at all: the
   launcher's and the database's own ceiling), in alternating rounds, with the bare
   sequential spawn rate (the issue's ceiling) measured before and after. Ratios:
   Python ÷ spawn ceiling (target ≥ 5), ÷ exec no-ops, ÷ null runner; over the whole
   run and in the steady state (the middle half of the ends: every interpreter started).
2. Utilization, 4 nodes × 16: Python calls sleeping 0.1 s and 0.01 s (target for 0.1 s:
   ≥ 0.97), `balsam-mpi report`'s definition and first start → last end.
3. ``python_preload``: 0.1 s calls of a module that takes ~0.17 s to import, without and
   with preload, in alternating runs: each job's wall time (``python_preload.py``).
4. End → `wait` returns: one task at a time on a launcher that stays up, the time from
   the task's end on its node (its ended_at) to `Client.wait` returning, minus the
   launcher's flush interval (target ≤ 0.5 s); and, for many tasks ending at full
   speed, each one's end to `as_completed` yielding it.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from balsam_mpi.base.project import Project
from balsam_mpi.demo.run import find_mpiexec

from . import ceiling, python_preload
from . import launcher_common as lc
from .harness import write_result
from .measure import one_run, task_times
from .projects import bench_project, bench_query

REPO = str(Path(__file__).resolve().parents[1])
NODES, PACKING = 4, 16
FLUSH_S = 0.1  # the launcher's default flush_interval_s
# The interpreters import benchmarks.pyfuncs. Each rank stands for a node packing 16
# Python tasks, which a real node does with 16 cores or more, where the default spares
# (python_spares: one per core) are 16; this host's 2 cores would give 2.
ENV = {"PYTHONPATH": REPO, "BALSAM_PYTHON_SPARES": str(PACKING)}


def add_python(conn: Any, n: int, fn: str, *, indexed: bool = False,
               params: str = "{}", task_dirs: bool = True) -> list[int]:
    app = f"py_{fn}" if task_dirs else f"py_{fn}_nodir"
    conn.execute(bench_query("python_app"), {"a": app, "p": f"benchmarks.pyfuncs:{fn}",
                                             "dirs": task_dirs})
    rows = conn.execute(bench_query("python_tasks"), {
        "w": "bench", "a": app, "pack": PACKING, "n": n, "indexed": indexed,
        "params": params}).fetchall()
    conn.execute("VACUUM ANALYZE tasks")
    return [r[0] for r in rows]


def steady_rate(conn: Any) -> float:
    """Tasks/s over the middle half of the ends (the 25th to the 75th percentile): the
    rate once every interpreter has started, without the ramp or the tail."""
    ends = sorted(e for _s, e in task_times(conn))
    if len(ends) < 8:
        return float("nan")
    lo, hi = len(ends) // 4, (3 * len(ends)) // 4
    return (hi - lo) / (ends[hi] - ends[lo]) if ends[hi] > ends[lo] else float("nan")


KINDS = ("null_runner", "exec_noop", "python_noop", "python_result", "python_noop_nodir")


def _throughput(proj: Project, conn: Any, quick: bool) -> dict[str, Any]:
    n, rounds, n_spawn = (6000, 2, 1000) if quick else (20000, 3, 3000)
    spawn_before = statistics.median(ceiling.spawn_sequential(n_spawn) for _ in range(3))
    kinds: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
    for _ in range(rounds):
        for kind in KINDS:
            lc.reset(conn)
            args: tuple[str, ...] = ()
            if kind in ("exec_noop", "null_runner"):
                lc.add_tasks(conn, n, "/bin/true", PACKING)
                args = ("--null-runner",) if kind == "null_runner" else ()
            else:
                add_python(conn, n, "small" if kind == "python_result" else "noop",
                           indexed=kind == "python_result",
                           task_dirs=kind != "python_noop_nodir")
            run = one_run(proj, conn, NODES, *args, env=ENV)
            run["steady_rate_per_s"] = steady_rate(conn)
            kinds[kind].append(run)
    spawn_after = statistics.median(ceiling.spawn_sequential(n_spawn) for _ in range(3))
    spawn = (spawn_before + spawn_after) / 2

    def med(key: str) -> dict[str, float]:
        return {k: statistics.median(r[key] for r in runs) for k, runs in kinds.items()}

    rate, steady = med("rate_per_s"), med("steady_rate_per_s")
    return {"tasks": n, "rounds": rounds, "spawn_ceiling_per_s": {
        "before": spawn_before, "after": spawn_after, "used": spawn},
        "rate_per_s": rate, "steady_rate_per_s": steady,
        "leader_cpu_us_per_task": med("leader_cpu_us_per_task"),
        "ratio_to_spawn": {k: v / spawn for k, v in rate.items()},
        "steady_ratio_to_spawn": {k: v / spawn for k, v in steady.items()},
        "ratio_to_exec": {k: v / rate["exec_noop"] for k, v in rate.items()},
        "ratio_to_null_runner": {k: v / rate["null_runner"] for k, v in rate.items()},
        "runs": kinds}


def _utilization(proj: Project, conn: Any, quick: bool) -> dict[str, Any]:
    cases = ([(0.1, 20, 2), (0.01, 50, 2)] if quick else [(0.1, 50, 3), (0.01, 100, 3)])
    slots = NODES * PACKING
    out: dict[str, Any] = {}
    for d, waves, runs_n in cases:
        runs = []
        for _ in range(runs_n):
            lc.reset(conn)
            add_python(conn, slots * waves, "sleep", params=f'{{"s": {d}}}')
            runs.append(one_run(proj, conn, NODES, env=ENV, timeout=120 + 4 * d * waves))
        out[f"{d:g}"] = {"duration_s": d, "waves": waves, "tasks": slots * waves,
                         "median": {k: statistics.median(r[k] for r in runs)
                                    for k in ("utilization", "utilization_span",
                                              "rate_per_s", "leader_cpu_us_per_task",
                                              "claims_per_task")},
                         "runs": runs, "task_times_last_run": task_times(conn)}
    return out


def _wait_latency(proj: Project, conn: Any, quick: bool) -> dict[str, Any]:
    from balsam_mpi import Client

    singles, many = (15, 1000) if quick else (40, 4000)
    lc.reset(conn)
    env = dict(os.environ, BALSAM_DB_PATH=str(proj.root), **ENV)
    env.pop("BALSAM_DB_NAME", None)
    proc = subprocess.Popen([find_mpiexec(), "-n", "2", sys.executable, "-P", "-m", "balsam_mpi",
                             "--idle-timeout", "600"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    one: list[float] = []
    each: list[float] = []
    try:
        with Client(proj) as client:
            for _ in range(singles):
                [tid] = add_python(conn, 1, "sleep", params='{"s": 0.05}')
                client.wait([tid], timeout=60)
                back = time.time()
                ((_, ended),) = conn.execute(bench_query("task_ended_at"),
                                             {"ids": [tid]}).fetchall()
                one.append(back - ended)
            ids = add_python(conn, many, "noop")
            seen: dict[int, float] = {}
            for outcome in client.as_completed(ids, timeout=300):
                seen[outcome.id] = time.time()
            ended_at = dict(conn.execute(bench_query("task_ended_at"),
                                         {"ids": ids}).fetchall())
            each = sorted(seen[i] - ended_at[i] for i in ids)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=120)
    return {"flush_interval_s": FLUSH_S, "single": {
        "n": singles, "median_s": statistics.median(one), "max_s": max(one),
        "past_flush_median_s": statistics.median(one) - FLUSH_S,
        "past_flush_max_s": max(one) - FLUSH_S, "raw_s": one},
        "many": {"n": many, "median_s": statistics.median(each),
                 "p95_s": each[int(0.95 * (len(each) - 1))], "max_s": each[-1]}}


def run(quick: bool, out: Path) -> dict[str, Any]:
    with bench_project() as proj, lc.connect(proj) as conn:
        thr = _throughput(proj, conn, quick)
        util = _utilization(proj, conn, quick)
        pre = python_preload.measure(proj, conn, ENV, quick)
        lat = _wait_latency(proj, conn, quick)
    params = {"nodes": NODES, "node_packing_count": PACKING, "quick": quick,
              "functions": "benchmarks/pyfuncs.py", "exec": "/bin/true"}
    path = write_result(out, "python", params,
                        {"throughput": thr, "utilization": util, "preload": pre,
                         "wait": lat})
    r, s, st = thr["rate_per_s"], thr["ratio_to_spawn"], thr["steady_ratio_to_spawn"]
    summary: dict[str, Any] = {
        "spawn ceiling /s": round(thr["spawn_ceiling_per_s"]["used"])}
    for kind in KINDS:
        summary[f"{kind} ({NODES} ranks, {thr['tasks']} tasks)"] = (
            f"{r[kind]:.0f}/s = {s[kind]:.2f} x spawn, steady state {st[kind]:.2f} x spawn;"
            f" {thr['ratio_to_exec'][kind]:.2f} x exec, "
            f"{thr['ratio_to_null_runner'][kind]:.2f} x null runner")
    for key, res in util.items():
        m = res["median"]
        summary[f"utilization {key} s python, {NODES}x{PACKING}"] = (
            f"{m['utilization']:.3f} (first start to last end {m['utilization_span']:.3f}),"
            f" {m['rate_per_s']:.0f} tasks/s")
    summary[f"python_preload, 0.1 s calls of {python_preload.MODULE}, {NODES}x{PACKING}, "
            f"{pre['tasks']} tasks"] = python_preload.summary_line(pre)
    single, many = lat["single"], lat["many"]
    summary["end -> wait returns"] = (
        f"median {single['median_s']:.3f} s, max {single['max_s']:.3f} s: "
        f"{single['past_flush_max_s']:.3f} s past the {FLUSH_S} s flush at most "
        "(target <= 0.5)")
    summary[f"end -> as_completed, {many['n']} tasks at full speed"] = (
        f"median {many['median_s']:.3f} s, p95 {many['p95_s']:.3f} s")
    summary["written"] = str(path)
    return summary
