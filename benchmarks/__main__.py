"""`python -m benchmarks run SCENARIO… [--quick] [--out DIR]`.

Scenarios register themselves in ``SCENARIOS``; `all` runs every one in order. Each writes
a JSON file (machine, versions, parameters, raw samples, results) under ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .harness import RESULTS

Scenario = Callable[[bool, Path], dict[str, Any]]


def _ceiling(quick: bool, out: Path) -> dict[str, Any]:
    from .scenarios_ceiling import run

    return run(quick, out)


def _dbctl(quick: bool, out: Path) -> dict[str, Any]:
    from .scenarios_dbctl import run

    return run(quick, out)


SCENARIOS: dict[str, Scenario] = {"ceiling": _ceiling, "dbctl": _dbctl}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run scenarios")
    run.add_argument("scenarios", nargs="+", help=f"{', '.join(SCENARIOS)} or all")
    run.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    run.add_argument("--out", type=Path, default=RESULTS, help="where result files go")
    args = parser.parse_args(argv)
    names = list(SCENARIOS) if args.scenarios == ["all"] else args.scenarios
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}: choose from {', '.join(SCENARIOS)}, all")
    for name in names:
        t0 = time.perf_counter()
        summary = SCENARIOS[name](args.quick, args.out)
        print(f"== {name} ({time.perf_counter() - t0:.0f} s)")
        for key, value in summary.items():
            print(f"   {key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
