"""One launcher run, measured: wall time, per-task times, utilization, rank CPU.

The launcher itself comes from ``launcher_common`` (the launcher's own benchmark helpers);
this module only reads what a run left behind. Utilization and time to first task come
from :mod:`balsam_mpi.reports.history` over the task events, so a benchmark and
``balsam-mpi report`` give the same number for the same run.
"""

from __future__ import annotations

import re
from typing import Any

from balsam_mpi.base.project import Project

from . import launcher_common as lc
from .projects import bench_query

_USAGE = re.compile(r"usage: rank cpu ([0-9.]+) s")
_CLAIMS = re.compile(r"(\d+) claims brought (\d+) tasks")
_FIRST = re.compile(r"first start ([0-9.naN]+) s after MPI init")


def clear_logs(proj: Project) -> None:
    for path in proj.log_dir.glob("launcher_*.log"):
        path.unlink()


def rank_logs(proj: Project) -> dict[int, str]:
    """The launcher log of each rank of the (only) run since ``clear_logs``."""
    out: dict[int, str] = {}
    for path in proj.log_dir.glob("launcher_*_r*.log"):
        rank = int(path.stem.rsplit("_r", 1)[1])
        out[rank] = path.read_text(errors="replace")
    return out


def rank_cpu(logs: dict[int, str]) -> dict[int, float]:
    cpu: dict[int, float] = {}
    for rank, text in logs.items():
        found = _USAGE.findall(text)
        if found:
            cpu[rank] = float(found[-1])
    return cpu


def claims_per_task(logs: dict[int, str]) -> float:
    """The leader's claims per task it claimed (its close logs both counts)."""
    found = _CLAIMS.findall(logs.get(0, ""))
    if not found or not int(found[-1][1]):
        return float("nan")
    return int(found[-1][0]) / int(found[-1][1])


def first_start_after_init(logs: dict[int, str]) -> float:
    found = _FIRST.findall(logs.get(0, ""))
    return float(found[-1]) if found else float("nan")


def task_times(conn: Any, limit: int = 100_000) -> list[list[float]]:
    """[start, end] of every finished task, seconds after the first start (ms precision)."""
    rows = conn.execute(bench_query("task_times"), {"limit": limit}).fetchall()
    if not rows:
        return []
    t0 = min(r[0] for r in rows)
    return [[round(s - t0, 4), round(e - t0, 4)] for s, e in rows]


def job_utilization(conn: Any) -> dict[str, float]:
    """Per batch job (the only ones in a reset project): utilization, time to first task
    and idle tail, exactly as `balsam-mpi report jobs` computes them."""
    from balsam_mpi.reports.history import Filters, history

    h = history(conn, Filters())
    rows = h.job_rows()
    nan = float("nan")
    total = h.utilization()
    return {
        "utilization": nan if total is None else float(total),
        "jobs": float(len(rows)),
        "first_task_s": max((r["first_task_seconds"] or nan) for r in rows) if rows else nan,
        "tail_idle_s": max((r["idle_tail_seconds"] or nan) for r in rows) if rows else nan,
        "job_wall_s": max((r["wall_seconds"] or nan) for r in rows) if rows else nan,
    }


def per_job(conn: Any) -> list[dict[str, Any]]:
    from balsam_mpi.reports.history import Filters, history

    keep = ("id", "user", "nodes", "utilization", "done", "failed", "first_task_seconds",
            "idle_tail_seconds", "wall_seconds")
    return [{k: r[k] for k in keep} for r in history(conn, Filters()).job_rows()]


def empty_run_leader_cpu(proj: Project, ranks: int, *args: str) -> float:
    """The leader's CPU seconds in a run with nothing to do (start-up and close only)."""
    clear_logs(proj)
    lc.launch(proj, ranks, *args, timeout=120)
    return rank_cpu(rank_logs(proj)).get(0, float("nan"))


def one_run(proj: Project, conn: Any, ranks: int, *args: str,
            env: dict[str, str] | None = None, timeout: float = 600) -> dict[str, Any]:
    """Run the launcher once over what the project holds; returns figures and raw times."""
    import os

    clear_logs(proj)
    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})  # launch() passes os.environ on to mpiexec
    try:
        wall = lc.launch(proj, ranks, *args, timeout=timeout)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    s = lc.summary(conn)
    logs = rank_logs(proj)
    cpu = rank_cpu(logs)
    finished = s["finished"]
    out: dict[str, Any] = {
        "finished": finished,
        "span_s": s["span_s"],
        "rate_per_s": finished / s["span_s"] if s["span_s"] > 0 else float("nan"),
        "launcher_wall_s": wall,
        "leader_cpu_s": cpu.get(0, float("nan")),
        "leader_cpu_us_per_task": cpu.get(0, float("nan")) / max(finished, 1) * 1e6,
        "first_start_after_init_s": first_start_after_init(logs),
        "claims_per_task": claims_per_task(logs),
        "worker_cpu_s": [cpu[r] for r in sorted(cpu) if r > 0],
        "busy_node_s": s["busy_node_s"],
        # Issue 5's definition (first start → last end, no start-up or close), beside
        # the report's (the batch job's whole life) that job_utilization adds.
        "utilization_span": (s["busy_node_s"] / (ranks * s["span_s"]) if s["span_s"] > 0
                             else float("nan")),
    }
    out.update(job_utilization(conn))
    return out
