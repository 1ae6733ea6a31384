"""`python -m benchmarks run SCENARIO… [--quick] [--out DIR]`.

Scenarios register themselves in ``SCENARIOS``; `all` runs every one in order. Each writes
a JSON file (machine, versions, parameters, raw samples, results) under ``--out``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .harness import RESULTS, mark_start

Scenario = Callable[[bool, Path], dict[str, Any]]


def _module_runner(module: str) -> Scenario:
    """Import a scenario's module only when it runs (matplotlib, mpi4py and the rest are
    slow to import and not every scenario needs them)."""

    def run(quick: bool, out: Path) -> dict[str, Any]:
        mod = importlib.import_module(f".{module}", __package__)
        result: dict[str, Any] = mod.run(quick, out)
        return result

    return run


# The order of `all`: the ceiling first (every ratio refers to it), the scale model last
# (it reads the costs the others measured).
SCENARIOS: dict[str, Scenario] = {
    "ceiling": _module_runner("scenarios_ceiling"),
    "dbctl": _module_runner("scenarios_dbctl"),
    "noop": _module_runner("scenarios_noop"),
    "utilization": _module_runner("scenarios_utilization"),
    "leader": _module_runner("scenarios_leader"),
    "concurrent": _module_runner("scenarios_concurrent"),
    "exactly-once": _module_runner("scenarios_exactly_once"),
    "containment": _module_runner("scenarios_containment"),
    "retention": _module_runner("scenarios_retention"),
    "python": _module_runner("scenarios_python"),
    "bulk-add": _module_runner("tasks_api"),
    "reports": _module_runner("report_speed"),
    "scale-model": _module_runner("scenarios_scale_model"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run scenarios")
    run.add_argument("scenarios", nargs="+", help=f"{', '.join(SCENARIOS)} or all")
    run.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    run.add_argument("--out", type=Path, default=RESULTS, help="where result files go")
    table = sub.add_parser("table", help="print the results table of the latest runs")
    table.add_argument("--out", type=Path, default=RESULTS, help="where result files are")
    table.add_argument("--readme", action="store_true",
                       help="rewrite the generated tables of benchmarks/README.md instead")
    args = parser.parse_args(argv)
    if args.command == "table":
        from .table import check_table, render, update_readme

        if args.readme:
            update_readme(args.out, Path(__file__).with_name("README.md"))
            return 0
        print(render(args.out))
        print(check_table(args.out), end="")
        return 0
    names = list(SCENARIOS) if args.scenarios == ["all"] else args.scenarios
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}: choose from {', '.join(SCENARIOS)}, all")
    start = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        mark_start()
        summary = SCENARIOS[name](args.quick, args.out)
        print(f"== {name} ({time.perf_counter() - t0:.0f} s)", flush=True)
        for key, value in summary.items():
            print(f"   {key}: {value}", flush=True)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"== {len(names)} scenario(s) in {time.perf_counter() - start:.0f} s; "
          f"load average now {load}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
