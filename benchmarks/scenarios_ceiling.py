"""Scenario `ceiling`: bare spawn and claim rates of this machine, and what making a task's
directory and two files costs its file system at the moment (fscost.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import ceiling, fscost
from .harness import median_of, write_result
from .projects import admin_dsn, bench_project


def run(quick: bool, out: Path) -> dict[str, Any]:
    n_spawn = 1000 if quick else 4000
    spawn = median_of(3, lambda: {
        "sequential_per_s": ceiling.spawn_sequential(n_spawn),
        "concurrent_per_s": ceiling.spawn_concurrent(n_spawn),
    })
    claims: dict[str, Any] = {}
    total = 50_000 if quick else 200_000
    with bench_project() as project:
        # Making a task's directory, where the scenarios' tasks make theirs (data/).
        fs = median_of(3, lambda: fscost.task_dir_cost(str(project.root / "data")))
        dsn = admin_dsn(project)
        for batch in (64, 512, 4096):
            claims[str(batch)] = median_of(3, lambda b=batch: ceiling.claim_rate(  # type: ignore[misc]
                dsn, batch=b, claimers=5, total=total))
    results = {"spawn": spawn, "claim": claims, "task_dir": fs}
    path = write_result(out, "ceiling", {"n_spawn": n_spawn, "claim_rows": total,
                                          "claimers": 5}, results)
    summary = {
        "spawn sequential /s": round(spawn["median"]["sequential_per_s"]),
        "spawn concurrent /s": round(spawn["median"]["concurrent_per_s"]),
    }
    summary["task directory + 2 files, CPU µs"] = round(fs["median"]["per_task_us"])
    for batch, res in claims.items():
        summary[f"claim k={batch} rows/s"] = round(res["median"]["rows_per_s"])
        summary[f"claim k={batch} duplicates"] = int(max(r["duplicates"] for r in res["runs"]))
    summary["written"] = str(path)
    return summary
