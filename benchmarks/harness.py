"""What every scenario shares: machine facts, medians, result files, plots."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
_started: dict[str, Any] = {}  # when and under what load the current scenario began


def mark_start() -> None:
    """Called before each scenario: its result records the load it started under."""
    _started["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    _started["loadavg"] = [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, Any]:
    """Facts that decide how far two runs can be compared."""
    import numpy

    versions: dict[str, str] = {"python": platform.python_version(), "numpy": numpy.__version__}
    for mod in ("psycopg", "mpi4py", "balsam_mpi"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:
            versions[mod] = "missing"
    try:
        from mpi4py import MPI

        versions["mpi"] = MPI.Get_library_version().splitlines()[0].strip()
    except Exception:
        pass
    load = os.getloadavg()
    return {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "loadavg_at_start": _started.get("loadavg", [round(x, 2) for x in load]),
        "loadavg_at_end": [round(x, 2) for x in load],
        "started": _started.get("when"),
        "versions": versions,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "argv": sys.argv,
        # The package changes under these benchmarks: which code was measured.
        "git": git_revision(),
        "package_uncommitted": package_dirty(),
    }


def median_of(runs: int, measure: Callable[[], dict[str, float]]) -> dict[str, Any]:
    """Run ``measure`` ``runs`` times; each key's median, and every raw value."""
    samples = [measure() for _ in range(runs)]
    keys = samples[0].keys()
    return {
        "median": {k: statistics.median(s[k] for s in samples) for k in keys},
        "runs": samples,
    }


def write_result(out: Path, scenario: str, params: dict[str, Any], results: dict[str, Any],
                 raw: dict[str, Any] | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    path = out / f"{scenario}-{stamp}.json"
    doc = {"scenario": scenario, "machine": machine(), "params": params, "results": results,
           "raw": raw or {}}
    path.write_text(json.dumps(doc, indent=1, default=float) + "\n")
    latest = out / f"{scenario}-latest.json"
    latest.write_text(path.read_text())
    return path


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (from /proc; Linux only)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=False, cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        return "unknown"


def package_dirty() -> bool | None:
    """True if balsam_mpi/ had uncommitted changes when measured (None: unknown)."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--", "balsam_mpi"],
                             capture_output=True, text=True, check=False,
                             cwd=Path(__file__).resolve().parents[1]).stdout
    except OSError:
        return None
    return bool(out.strip())
