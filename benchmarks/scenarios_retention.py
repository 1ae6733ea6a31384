"""Scenario `retention`: how much WAL a busy project writes and keeps on disk, under
Postgres's own WAL settings and under the project's (balsam_mpi/dbctl/pgconf.py), and
what `balsam-dbctl prune` then frees.

A fresh project for each configuration: restart its server with it, add N tasks through the
Python API (one transaction), run them through the launcher with the null runner (the
database traffic of N tasks — claims, starts, ends, events — without N processes),
sampling the size of pg_wal four times a second; then give every task a working directory
as the launcher would (task.out, task.err) and prune the workflow. Figures: WAL written
(LSN difference), pg_wal's peak and final size, checkpoints, the tables' sizes, and the
prune's time, WAL and what it removed.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from . import launcher_common as lc
from .harness import write_result
from .projects import bench_project, bench_query

# Postgres 15's own defaults for what pgconf.py sets, made explicit with ALTER SYSTEM (which
# overrides balsam.conf); "project" resets them, so balsam.conf's values apply.
CONFIGS: dict[str, dict[str, str]] = {
    "postgres_defaults": {"wal_level": "replica", "max_wal_senders": "10",
                          "wal_compression": "off", "max_wal_size": "1GB",
                          "min_wal_size": "80MB"},
    "project": {},
}
RANKS = 4


def run(quick: bool, out: Path) -> dict[str, Any]:
    n = 5_000 if quick else 50_000
    results: dict[str, Any] = {}
    for name, overrides in CONFIGS.items():
        # A fresh project each: WAL left by one configuration must not count for the next.
        with bench_project() as proj:
            results[name] = _one_config(proj, n, overrides)
    params = {"tasks": n, "ranks": RANKS, "runner": "null", "configs": CONFIGS}
    write_result(out, "retention", params, results)
    summary: dict[str, Any] = {}
    for name, r in results.items():
        summary[name] = {k: r[k] for k in ("wal_written_mb", "pg_wal_peak_mb",
                                           "pg_wal_end_mb", "checkpoints", "run_s")}
        summary[name]["prune_s"] = r["prune"]["seconds"]
    return summary


def _one_config(proj: Any, n: int, overrides: dict[str, str]) -> dict[str, Any]:
    from psycopg import sql as pgsql

    from balsam_mpi.dbctl import lifecycle
    from balsam_mpi.dbctl.prune import prune
    from balsam_mpi.tasks.client import Client

    with lc.connect(proj) as admin:
        admin.execute(bench_query("alter_system_reset"))
        for key, value in overrides.items():
            admin.execute(pgsql.SQL(bench_query("alter_system_set")).format(
                name=pgsql.Identifier(key), value=pgsql.Literal(value)))
    lifecycle.restart_server(proj)
    with lc.connect(proj) as admin:
        settings = dict(admin.execute(bench_query("wal_settings")).fetchall())
        lc.reset(admin)
        admin.execute(bench_query("truncate_apps"))
        admin.execute(bench_query("checkpoint"))
        lsn0, ckpt0 = admin.execute(bench_query("wal_position")).fetchone()
        start = admin.execute(bench_query("wal_dir_size")).fetchone()[0]
        sampler = _Sampler(proj)
        sampler.start()
        t0 = time.perf_counter()
        with Client(proj) as c:
            c.add_app("noop", "true")
            c.add_tasks([{"app": "noop", "workflow": "retention", "name": "t"}] * n)
        add_s = time.perf_counter() - t0
        run_wall = lc.launch(proj, RANKS, "--null-runner", "--workflow", "retention")
        lsn1, ckpt1 = admin.execute(bench_query("wal_position")).fetchone()
        written = admin.execute(bench_query("wal_diff"), (lsn1, lsn0)).fetchone()[0]
        time.sleep(1.0)
        peak = sampler.stop()
        end = admin.execute(bench_query("wal_dir_size")).fetchone()[0]
        sizes = dict(admin.execute(bench_query("table_sizes")).fetchall())
        finished = admin.execute(bench_query("state_counts")).fetchall()
        rows = admin.execute(bench_query("task_dirs")).fetchall()
    t = time.perf_counter()
    for tid, wf, name in rows:  # what the launcher leaves: one directory, two files
        d = proj.task_dir(wf, tid, name)
        d.mkdir(parents=True, exist_ok=True)
        (d / "task.out").touch()
        (d / "task.err").touch()
    mkdir_s = time.perf_counter() - t
    t = time.perf_counter()
    pruned = prune(proj, workflows=["retention"])
    prune_s = time.perf_counter() - t
    with lc.connect(proj) as admin:
        lsn2 = admin.execute(bench_query("wal_position")).fetchone()[0]
        prune_wal = admin.execute(bench_query("wal_diff"), (lsn2, lsn1)).fetchone()[0]
        after = dict(admin.execute(bench_query("table_sizes")).fetchall())
        end_after = admin.execute(bench_query("wal_dir_size")).fetchone()[0]
    mb = 1024 * 1024
    return {
        "settings": settings,
        "finished": {str(s): int(k) for s, k in finished},
        "add_s": add_s, "run_s": run_wall,
        "wal_written_mb": written / mb, "wal_per_task_kb": written / n / 1024,
        "pg_wal_start_mb": start / mb, "pg_wal_peak_mb": peak / mb,
        "pg_wal_end_mb": end / mb,
        "checkpoints": int(ckpt1 - ckpt0),
        "table_mb": {k: v / mb for k, v in sizes.items()},
        "mkdir_s": mkdir_s,
        "prune": {"seconds": prune_s, "tasks": pruned.tasks, "events": pruned.events,
                  "batch_jobs": len(pruned.batch_jobs), "dirs": pruned.removal.dirs,
                  "files": pruned.removal.files, "errors": len(pruned.removal.errors),
                  "wal_mb": prune_wal / mb, "pg_wal_after_mb": end_after / mb,
                  "table_mb_after": {k: v / mb for k, v in after.items()}},
    }


class _Sampler:
    """pg_wal's size four times a second, on its own connection; keeps the peak."""

    def __init__(self, proj: Any) -> None:
        self.proj = proj
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak

    def _run(self) -> None:
        with lc.connect(self.proj) as conn:
            while not self._stop.is_set():
                size = conn.execute(bench_query("wal_dir_size")).fetchone()[0]
                self.peak = max(self.peak, int(size))
                self._stop.wait(0.25)
