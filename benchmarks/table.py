"""`python -m benchmarks table [--out DIR]`: the README's results table, from the latest
result files. Each figure is a median of its runs; "spread" is (max − min) / median over
those runs — the noise a fresh run should be compared with."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

Row = tuple[str, str, str, str]  # figure, median, ratio to the same-run ceiling, spread


def _spread(values: list[float]) -> str:
    vals = [v for v in values if v == v]  # drop NaN
    if len(vals) < 2:
        return "1 run"
    med = statistics.median(vals)
    return f"±{(max(vals) - min(vals)) / med / 2:.0%}" if med else "-"


def _load(out: Path, name: str) -> dict[str, Any] | None:
    path = out / f"{name}-latest.json"
    return json.loads(path.read_text()) if path.exists() else None


def _ceiling(doc: dict[str, Any]) -> list[Row]:
    r = doc["results"]
    rows = [(f"bare spawn /bin/true, {k.split('_')[0]}", f"{v:,.0f}/s", "1 (ceiling)",
             _spread([run[k] for run in r["spawn"]["runs"]]))
            for k, v in r["spawn"]["median"].items()]
    for k, res in r["claim"].items():
        rows.append((f"bare SKIP LOCKED claim, k={k}, 5 claimers",
                     f"{res['median']['rows_per_s']:,.0f} rows/s", "1 (ceiling)",
                     _spread([x["rows_per_s"] for x in res["runs"]])))
    if "task_dir" in r:
        fs = r["task_dir"]
        rows.append(("a task's directory + two files (mkdir, 2 O_EXCL creates), CPU",
                     f"{fs['median']['per_task_us']:.0f} µs", "project's data/, same run",
                     _spread([x["per_task_us"] for x in fs["runs"]])))
    return rows


def _noop(doc: dict[str, Any]) -> list[Row]:
    r = doc["results"]
    ceiling = r["spawn_ceiling_per_s"]["used"]
    rows = [("noop: bare spawn in the same run", f"{ceiling:,.0f}/s", "1 (ceiling)",
             f"before {r['spawn_ceiling_per_s']['before']:.0f}, "
             f"after {r['spawn_ceiling_per_s']['after']:.0f}")]
    if "node_alone_per_s" in r:
        rows.append(("noop: one node alone (no MPI, leader or database), same run",
                     f"{r['node_alone_per_s']:,.0f} tasks/s", "-", "median of 3"))
    for ranks, res in r["by_ranks"].items():
        m = res["median"]
        rows.append((f"noop {doc['params']['tasks']} tasks, {ranks} ranks",
                     f"{m['rate_per_s']:,.0f} tasks/s",
                     f"{m['ratio_to_spawn']:.2f} × spawn, "
                     f"{m.get('ratio_to_concurrent_spawn', float('nan')):.2f} × concurrent, "
                     f"{m.get('ratio_to_parallel_spawn', float('nan')):.2f} × {ranks} "
                     f"spawners ({m.get('parallel_spawn_per_s', float('nan')):,.0f}/s)",
                     _spread([x["rate_per_s"] for x in res["runs"]])))
        if "ratio_to_parallel_nodes" in m:
            rows.append((f"noop {ranks} ranks ÷ {ranks} nodes alone, each measured just "
                         "before its run", f"{m['ratio_to_parallel_nodes']:.2f}",
                         f"nodes alone {m['parallel_nodes_per_s']:,.0f} tasks/s",
                         _spread([x["ratio_to_parallel_nodes"] for x in res["runs"]
                                  if "ratio_to_parallel_nodes" in x])))
        rows.append((f"noop {ranks} ranks: leader CPU per task",
                     f"{m['leader_cpu_us_per_task']:.0f} µs", "-",
                     _spread([x["leader_cpu_us_per_task"] for x in res["runs"]])))
    return rows


def _utilization(doc: dict[str, Any]) -> list[Row]:
    r = doc["results"]
    p = doc["params"]
    rows: list[Row] = []
    for d, res in r["by_duration"].items():
        m = res["median"]
        label = f"{d} s tasks, {p['nodes']}×{p['node_packing_count']}, {res['waves']} waves"
        demand = f"asks {m['demand_over_spawn_ceiling']:.2f} × spawn"
        rows.append((f"utilization (report), {label}", f"{m['utilization']:.3f}", demand,
                     _spread([x["utilization"] for x in res["runs"]])))
        rows.append((f"utilization (first start → last end), {label}",
                     f"{m['utilization_span']:.3f}", "-",
                     _spread([x["utilization_span"] for x in res["runs"]])))
        rows.append((f"{d} s: first task after job start / after MPI init; tail idle",
                     f"{m['first_task_s']:.2f} s / {m['first_start_after_init_s']:.2f} s; "
                     f"{m['tail_idle_s']:.2f} s", "-",
                     _spread([x["first_start_after_init_s"] for x in res["runs"]])))
        rows.append((f"{d} s: leader CPU per task (share of a core); busiest worker rank",
                     f"{m['leader_cpu_us_per_task']:.0f} µs "
                     f"({m.get('leader_cpu_fraction', float('nan')):.1%}); "
                     f"{m['worker_rank_cpu_fraction']:.1%}", "-",
                     _spread([x["leader_cpu_us_per_task"] for x in res["runs"]])))
        if "claims_per_task" in m:  # since the close logs it (docs/launcher.md)
            rows.append((f"{d} s: the leader's claims per task", f"{m['claims_per_task']:.3f}",
                         "-", _spread([x["claims_per_task"] for x in res["runs"]])))
    return rows


def _leader(doc: dict[str, Any]) -> list[Row]:
    r = doc["results"]
    ceiling = r["claim_ceiling_rows_per_s"]
    rows: list[Row] = [("leader: bare claim, k=4096, 1 claimer (same run)",
                        f"{ceiling:,.0f} rows/s", "1 (ceiling)", "-")]
    for key, res in r["grid"].items():
        m = res["median"]
        rows.append((f"null runner {doc['params']['tasks']} tasks, {key}",
                     f"{m['rate_per_s']:,.0f} tasks/s",
                     f"{m['ratio_to_claim_ceiling']:.2f} × claim",
                     _spread([x["rate_per_s"] for x in res["runs"]])))
        rows.append((f"leader CPU per task, all / marginal, {key}",
                     f"{m['leader_cpu_us_per_task']:.0f} / "
                     f"{m.get('leader_marginal_us_per_task', float('nan')):.0f} µs", "-",
                     _spread([x.get("leader_marginal_us_per_task", float("nan"))
                              for x in res["runs"]])))
        rows.append((f"leader capacity (1 / marginal CPU per task), {key}",
                     f"{m['capacity_per_s']:,.0f} tasks/s",
                     f"{m['capacity_per_s'] / ceiling:.2f} × claim",
                     _spread([x["leader_cpu_us_per_task"] for x in res["runs"]])))
    names = [n for n in ("claim", "report_started", "report_finished", "report_combined")
             if n in r["db_costs"]]
    for name in names:
        fit = r["db_costs"][name]["fit"]
        med = r["db_costs"][name]["median_s"]
        rows.append((f"{name} latency (Store call), k=16…4096",
                     f"{fit['fixed_s'] * 1e3:.1f} ms + {fit['per_row_s'] * 1e6:.0f} µs/row",
                     "-", f"{med[0] * 1e3:.0f}…{med[-1] * 1e3:.0f} ms"))
    per_task = r["db_costs"].get("per_task_s")
    if per_task:
        rows.append(("database time per task (claim + start + end), one flush / apart",
                     f"{per_task['combined'] * 1e6:.0f} / {per_task['two_step'] * 1e6:.0f} µs",
                     "target ≤ 25 µs", "fits of medians of 3"))
    msg = r["message_cost"]
    rows.append(("leader CPU per REPORT + ASSIGN (0 / 64 items)",
                 f"{msg['cpu_s_per_msg_items_0'] * 1e6:.0f} / "
                 f"{msg['cpu_s_per_msg_items_64'] * 1e6:.0f} µs", "-", "1 run"))
    return rows


def _concurrent(doc: dict[str, Any]) -> list[Row]:
    r = doc["results"]
    runs = r["runs"]
    per = [u for run in r["per_launcher_utilization"] for u in run if u is not None]
    # The target compares the launchers of one run with each other; each run's spread.
    spreads = [max(us) - min(us) for us in
               ([u for u in run if u is not None] for run in r["per_launcher_utilization"])
               if us]
    return [
        (f"5 launchers ({r['mode']}): exactly once", str(r["exactly_once_ok"]), "-",
         f"{len(runs)} runs"),
        ("5 launchers: aggregate utilization (report)", f"{r['median']['utilization']:.3f}",
         f"{r['median']['ratio_to_ideal_rate']:.2f} × ideal rate",
         _spread([x["utilization"] for x in runs])),
        ("5 launchers: per-launcher utilization, min…max over runs",
         f"{min(per):.3f}…{max(per):.3f}" if per else "-", "-", "-"),
        ("5 launchers: spread in one run (max − min of the launchers)",
         f"{statistics.median(spreads):.3f}" if spreads else "-", "target ≤ 0.05",
         " / ".join(f"{x:.3f}" for x in spreads) or "-"),
    ]


def _exactly_once(doc: dict[str, Any]) -> list[Row]:
    r = doc["results"]
    return [(f"{r['tasks']:,} no-ops, 5 launchers, overlapping filters: exactly once",
             str(r["exactly_once_ok"]), f"{r['rate_per_s']:,.0f} tasks/s", "1 run")]


def _model(doc: dict[str, Any]) -> list[Row]:
    r = doc["results"]
    rows: list[Row] = []
    for layout, points in r["projections"].items():
        for p in points:
            rows.append((f"model: {layout}, {p['duration_s']:g} s tasks",
                         f"utilization {p['utilization']:.3f}",
                         f"{p['throughput_per_s']:,.0f} tasks/s", "model"))
    for w in r.get("what_ifs", []):  # model_whatifs.py: utilization by the setting's value
        rows.append((f"model what-if: {w['sweep']}, {w['duration_s']:g} s tasks",
                     " · ".join(f"{p['value']}: {p['utilization']:.3f}" for p in w["points"]),
                     f"utilization by {w['setting']}", "model"))
    errors = [abs(c.get("utilization_error", c.get("throughput_error", float("nan"))))
              for c in r["check"]]
    rows.append(("model vs measured small runs, size of the relative error",
                 f"median {statistics.median(errors):.0%}, max {max(errors):.0%}", "-",
                 f"{len(errors)} runs"))
    return rows


def _python(doc: dict[str, Any]) -> list[Row]:
    r = doc["results"]
    thr, util, wait = r["throughput"], r["utilization"], r["wait"]
    rows: list[Row] = []
    names = {"python_noop": "Python no-op (returns None)",
             "python_noop_nodir": "Python no-op, app without task directories",
             "python_result": "Python call returning a small dict",
             "exec_noop": "exec no-op (/bin/true)",
             "null_runner": "null runner (no process)"}
    for key, label in names.items():
        if key not in thr["rate_per_s"]:  # a kind older result files lack
            continue
        rows.append((f"{label}, 4 ranks × 16, {thr['tasks']} tasks (steady state)",
                     f"{thr['rate_per_s'][key]:,.0f} tasks/s "
                     f"({thr['steady_rate_per_s'][key]:,.0f})",
                     f"{thr['ratio_to_spawn'][key]:.2f} × spawn "
                     f"({thr['steady_ratio_to_spawn'][key]:.2f}); "
                     f"{thr['ratio_to_exec'][key]:.2f} × exec",
                     _spread([x["rate_per_s"] for x in thr["runs"][key]])))
    for d, res in util.items():
        m = res["median"]
        rows.append((f"utilization, {d} s Python tasks, 4×16, {res['waves']} waves",
                     f"{m['utilization']:.3f} (span {m['utilization_span']:.3f})", "-",
                     _spread([x["utilization"] for x in res["runs"]])))
    one, many = wait["single"], wait["many"]
    rows.append(("a task's end → `wait` returns, past the flush interval",
                 f"median {one['past_flush_median_s']:.3f} s, max "
                 f"{one['past_flush_max_s']:.3f} s", f"flush {wait['flush_interval_s']} s",
                 f"{one['n']} waits"))
    rows.append((f"a task's end → `as_completed` yields it, {many['n']} at full speed",
                 f"median {many['median_s']:.3f} s, p95 {many['p95_s']:.3f} s", "-",
                 "1 run"))
    return rows


SECTIONS = {"ceiling": _ceiling, "noop": _noop, "utilization": _utilization,
            "leader": _leader, "concurrent": _concurrent, "exactly-once": _exactly_once,
            "python": _python,
            "scale-model": _model}


def render(out: Path) -> str:
    lines = ["| figure | median | ratio / context | spread of runs |",
             "|---|---|---|---|"]
    loads = []
    for name, fn in SECTIONS.items():
        doc = _load(out, name)
        if doc is None:
            continue
        m = doc["machine"]
        end = m.get("loadavg_at_end", m["loadavg_at_start"])[0]
        loads.append(f"{name} {m.get('started') or m['when']}, load "
                     f"{m['loadavg_at_start'][0]:.2f} → {end:.2f}")
        lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in fn(doc)]
    return "\n".join(lines) + "\n\nRuns (start, 1-minute load average at start → end): " + "; ".join(
        loads) + "\n"


def check_table(out: Path) -> str:
    """The model's replay of the measured runs, one row per run."""
    doc = _load(out, "scale-model")
    if doc is None:
        return ""
    lines = ["| run | measured | model | error |", "|---|---|---|---|"]
    for c in doc["results"]["check"]:
        if "utilization_error" in c:
            lines.append(f"| {c['run']} | utilization {c['measured_utilization']:.3f} | "
                         f"{c['model_utilization']:.3f} | {c['utilization_error']:+.0%} |")
        else:
            lines.append(f"| {c['run']} | {c['measured_tasks_per_s']:,.0f} tasks/s | "
                         f"{c['model_tasks_per_s']:,.0f} | {c['throughput_error']:+.0%} |")
    return "\n".join(lines) + "\n"


def update_readme(out: Path, readme: Path) -> None:
    """Rewrite the generated parts of the README (between ``<!-- NAME -->`` markers)."""
    from .model import ASSUMPTIONS

    parts = {"RESULTS_TABLE": render(out), "CHECK_TABLE": check_table(out),
             "ASSUMPTIONS": "\n".join(f"{i}. {a}" for i, a in enumerate(ASSUMPTIONS, 1))}
    text = readme.read_text()
    for name, body in parts.items():
        start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
        i, j = text.find(start), text.find(end)
        if i >= 0 and j > i:
            text = f"{text[:i]}{start}\n{body.rstrip()}\n{text[j:]}"
    readme.write_text(text)
