"""Scenario `concurrent`: 5 launchers at once on one project, mixing workflow filters.

As root, each launcher runs as its own UNIX user (``multiuser.py``: accounts in the
project group, authorized by the owner's `add-user`, activated with `balsamactivate`);
otherwise, or if that path fails, 5 launchers run as the caller and the result says so
(``mode`` and ``fallback_reason``). Tasks (1 s sleeps) go into four workflows; launchers 1
and 2 take one workflow each, launcher 3 two, launchers 4 and 5 everything, so the
filters and the free-for-all meet on the same rows. Checks: every task finished, exactly
one RUNNING event per task (no task ran twice, none lost). Figures: aggregate and
per-launcher utilization (`balsam-mpi report`'s), and the aggregate rate as a ratio to
the ideal rate of the slots (slots / duration) of this run.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from balsam_mpi.demo.run import find_mpiexec

from . import launcher_common as lc
from . import multiuser as mu
from .harness import write_result
from .lockwaits import LockSampler
from .measure import job_utilization, per_job, task_times
from .plots import plot_timelines, png_path
from .projects import bench_project, bench_query

FILTERS: tuple[tuple[str, ...], ...] = (("wf_a",), ("wf_b",), ("wf_a", "wf_c"), (), ())
SHARES = {"wf_a": 0.3, "wf_b": 0.2, "wf_c": 0.2, "wf_d": 0.3}


def _argv(python: str, mpiexec: str, ranks: int, workflows: tuple[str, ...]) -> list[str]:
    argv = [mpiexec, "-n", str(ranks), python, "-P", "-m", "balsam_mpi", "--idle-timeout", "0"]
    for w in workflows:
        argv += ["--workflow", w]
    return argv


def _start_all(proj: Path, ranks: int, users: dict[str, Any] | None,
               venv: Path | None) -> list[subprocess.Popen[str]]:
    procs = []
    for i, workflows in enumerate(FILTERS):
        if users is not None and venv is not None:
            entry = users[mu.USERS[i]]
            argv = _argv(str(venv / "bin" / "python"), str(venv / "bin" / "mpiexec"), ranks,
                         workflows)
            procs.append(mu.popen_as(entry, argv, mu.user_env(venv, entry, proj)))
        else:
            env = dict(os.environ, BALSAM_DB_PATH=str(proj))
            env.pop("BALSAM_DB_NAME", None)
            procs.append(subprocess.Popen(_argv(sys.executable, find_mpiexec(), ranks,
                                                workflows), env=env, text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    return procs


def _wait(procs: list[subprocess.Popen[str]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    outputs = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        outputs.append(out)
    failed = [(i, p.returncode, o[-600:]) for i, (p, o) in enumerate(zip(procs, outputs,
                                                                          strict=True))
              if p.returncode != 0]
    if failed:
        raise RuntimeError(f"launchers failed: {failed}")


def _one(proj: Any, conn: Any, ranks: int, packing: int, duration: float, waves: int,
         users: dict[str, Any] | None, venv: Path | None) -> dict[str, Any]:
    lc.reset(conn)
    # Task ids restart with the reset: the last run's task directories (owned by whichever
    # user ran them) must go, or a task of the same id under another user could not
    # write its output there.
    for entry in proj.data_dir.iterdir() if proj.data_dir.exists() else ():
        shutil.rmtree(entry, ignore_errors=True)
    slots = len(FILTERS) * ranks * packing
    total = slots * waves
    for wf, share in SHARES.items():
        lc.add_tasks(conn, int(total * share), f"/bin/sleep {duration:g}", packing, wf)
    t0 = time.perf_counter()
    with LockSampler(proj) as locks:
        _wait(_start_all(proj.root, ranks, users, venv), timeout=300)
    wall = time.perf_counter() - t0
    tasks, finished, running_events, not_once = conn.execute(
        bench_query("exactly_once")).fetchone()
    s = lc.summary(conn)
    agg = job_utilization(conn)
    jobs = per_job(conn)
    consumed = conn.execute(bench_query("per_launcher_tasks")).fetchall()
    states = dict(conn.execute(bench_query("state_counts")).fetchall())
    return {
        "tasks": float(tasks), "finished": float(finished),
        "running_events": float(running_events), "not_exactly_once": float(not_once),
        "utilization": agg["utilization"], "jobs": agg["jobs"],
        "rate_per_s": s["finished"] / s["span_s"] if s["span_s"] else float("nan"),
        "ideal_rate_per_s": slots / duration,
        "wall_s": wall,
        "per_launcher": jobs,
        "consumed": [[int(j), w, int(n)] for j, w, n in consumed],
        "states": {k: int(v) for k, v in states.items()},
        "lock_waits": locks.figures(),
    }


def run(quick: bool, out: Path) -> dict[str, Any]:
    ranks, packing, duration = 2, 8, 1.0
    waves = 4 if quick else 8
    runs_n = 3
    mode, reason = "5 UNIX users", mu.unavailable()
    users: dict[str, Any] | None = None
    venv: Path | None = None
    runs: list[dict[str, Any]] = []
    if reason is None:
        try:
            users, venv = mu.accounts(), mu.shared_venv()
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            reason = f"could not set up the users or their venv: {exc}"[:1000]
    with bench_project(mu.GROUP if users else None) as proj, lc.connect(proj) as conn:
        if users is not None and venv is not None:
            try:
                mu.enroll(proj.root, venv, users)
                runs.append(_one(proj, conn, ranks, packing, duration, waves, users, venv))
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                reason = f"multi-user path failed: {exc}"[:1000]
                users = venv = None
        if users is None:
            mode = "5 launchers as one user (fallback)"
            runs = []
        while len(runs) < runs_n:
            runs.append(_one(proj, conn, ranks, packing, duration, waves, users, venv))
        raw = task_times(conn)
    keys = ("utilization", "rate_per_s", "wall_s", "not_exactly_once")
    med = {k: statistics.median(r[k] for r in runs) for k in keys}
    med["ratio_to_ideal_rate"] = statistics.median(r["rate_per_s"] / r["ideal_rate_per_s"]
                                                   for r in runs)
    per_launcher_util = [[j["utilization"] for j in r["per_launcher"]] for r in runs]
    ok = all(r["not_exactly_once"] == 0 and r["finished"] == r["tasks"] for r in runs)
    results = {"mode": mode, "fallback_reason": reason if users is None else None,
               "exactly_once_ok": ok, "median": med, "per_launcher_utilization":
               per_launcher_util, "runs": runs}
    params = {"launchers": len(FILTERS), "filters": [list(f) for f in FILTERS],
              "workflow_shares": SHARES, "ranks_each": ranks, "node_packing_count": packing,
              "duration_s": duration, "waves": waves, "runs": runs_n}
    path = write_result(out, "concurrent", params, results, {"task_times_last_run": raw})
    plot_timelines(png_path(out, "concurrent"), f"5 concurrent launchers ({mode}), last run",
                   {"all launchers": raw}, len(FILTERS) * ranks * packing)
    return {"mode": mode, "exactly once": ok,
            "aggregate utilization": round(med["utilization"], 4),
            "rate / ideal": round(med["ratio_to_ideal_rate"], 3),
            "per-launcher utilization (last run)": [round(u or 0, 3)
                                                    for u in per_launcher_util[-1]],
            **({"fallback": reason} if users is None else {}),
            "written": str(path)}
