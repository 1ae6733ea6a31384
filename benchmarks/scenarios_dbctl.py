"""Scenario `dbctl`: wall time of the owner's `init`, `start` and `stop` (medians of 3)."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .harness import write_result

DBCTL = str(Path(sys.executable).parent / "balsam-dbctl")


def _timed(*args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([DBCTL, *args], check=True, capture_output=True, timeout=300)
    return time.perf_counter() - t0


def run(quick: bool, out: Path) -> dict[str, Any]:
    runs = 3
    samples: dict[str, list[float]] = {"init": [], "start": [], "stop": []}
    base = Path(tempfile.mkdtemp(prefix="bd-", dir="/tmp"))
    os.chmod(base, 0o755)
    try:
        for i in range(runs):
            project = str(base / f"p{i}")
            samples["init"].append(_timed("init", project))
            samples["stop"].append(_timed("--project", project, "stop"))
            samples["start"].append(_timed("--project", project, "start"))
            _timed("--project", project, "stop", "--fast")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    medians = {k: statistics.median(v) for k, v in samples.items()}
    path = write_result(out, "dbctl", {"runs": runs}, {"median_s": medians},
                        {"samples_s": samples})
    return {**{f"{k} median s": round(v, 2) for k, v in medians.items()}, "written": str(path)}
