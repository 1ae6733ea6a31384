"""Scenario `scale-model`: the discrete-event model of ``model.py``, its every cost taken
from the latest results of `ceiling`, `noop`, `utilization` and `leader` (run them first:
`all` does), checked against those measured runs, then projected to 4,010 nodes × 64
tasks per node × 5 launchers and to 10,000 nodes, for tasks of 1 s to 10 min.

The check replays each measured small run in the model (same nodes, packing, durations,
task counts) and reports the relative error of utilization and throughput. Runs on this
2-core machine put 4–16 ranks, Postgres and the tasks on 2 cores, which the model (one
core per rank) does not; that is most of the error at small scale, and it is reported,
not tuned away.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .harness import RESULTS, write_result
from .model import ASSUMPTIONS, Case, Costs, Policy, simulate
from .model_whatifs import run_sweeps
from .plots import plot_projection, png_path

NEEDED = ("ceiling", "noop", "utilization", "leader")
DURATIONS = (1.0, 10.0, 60.0, 600.0)
WAVES = 10  # tasks per slot in a projected campaign


def _latest(out: Path, name: str) -> dict[str, Any]:
    for base in (out, RESULTS):
        path = base / f"{name}-latest.json"
        if path.exists():
            doc: dict[str, Any] = json.loads(path.read_text())
            return doc
    raise FileNotFoundError(f"no {name}-latest.json in {out} or {RESULTS}: run "
                            f"`python -m benchmarks run {name}` first")


def _table(sizes: list[int], medians: list[float]) -> tuple[tuple[float, float], ...]:
    """Measured (rows, latency) points, made non-decreasing (noise at small sizes can
    put a smaller batch above a larger one)."""
    out: list[tuple[float, float]] = []
    top = 0.0
    for k, y in zip(sizes, medians, strict=True):
        top = max(top, y)
        out.append((float(k), top))
    return tuple(out)


def derive_costs(docs: dict[str, dict[str, Any]]) -> tuple[Costs, dict[str, str]]:
    """Costs from the measured results, and where each came from."""
    lead = docs["leader"]["results"]
    db = lead["db_costs"]
    msg = lead["message_cost"]
    item_s = max(0.0, (msg["cpu_s_per_msg_items_64"] - msg["cpu_s_per_msg_items_0"]) / 64)
    # The null-runner leader's CPU per task, at the most ranks and the largest claim.
    best = max(lead["grid"].values(), key=lambda g: (g["ranks"], g["claim_limit"]))
    per_task = best["median"].get("leader_marginal_us_per_task",
                                  best["median"]["leader_cpu_us_per_task"])
    task_s = max(0.0, per_task * 1e-6 - 2 * item_s)
    noop = docs["noop"]["results"]["spawn_ceiling_per_s"]["used"]
    # A node's start of a task: the spawn, and the task's directory and two files (their
    # CPU, measured in the same run where the run has it: it drifts a great deal here).
    fs_s = task_dir_s(docs)
    util = docs["utilization"]["results"]["by_duration"]
    one = util.get("1") or next(iter(util.values()))
    claim_fit = db["claim"]["fit"]
    first_claim = claim_fit["fixed_s"] + claim_fit["per_row_s"] * 64
    costs = Costs(
        claim_fixed_s=max(0.0, claim_fit["fixed_s"]),
        claim_row_s=max(0.0, claim_fit["per_row_s"]),
        flush_fixed_s=max(0.0, db["report_started"]["fit"]["fixed_s"],
                          db["report_finished"]["fit"]["fixed_s"]),
        flush_start_row_s=max(0.0, db["report_started"]["fit"]["per_row_s"]),
        flush_end_row_s=max(0.0, db["report_finished"]["fit"]["per_row_s"]),
        leader_task_s=task_s,
        leader_msg_s=msg["cpu_s_per_msg_items_0"],
        leader_item_s=item_s,
        spawn_s=1.0 / noop + fs_s,
        msg_latency_s=msg["wall_s_per_msg_items_0"] / 2,
        claim_table=_table(db["sizes"], db["claim"]["median_s"]),
        start_table=_table(db["sizes"], db["report_started"]["median_s"]),
        end_table=_table(db["sizes"], db["report_finished"]["median_s"]),
        combined_table=(_table(db["sizes"], db["report_combined"]["median_s"])
                        if "report_combined" in db else ()),
        startup_s=max(0.0, one["median"]["first_task_s"] - first_claim - 1.0 / noop - fs_s),
        close_s=max(0.0, one["median"]["tail_idle_s"] - Policy().flush_interval_s),
    )
    sources = {
        "claim_table": "leader: Store.claim median latency by batch size (interpolated)",
        "start_table, end_table": "leader: Store.report median latency of k starts, of k "
                                  "ends, by batch size (interpolated; a flush carrying "
                                  "both counts one round trip)",
        "combined_table": "leader: Store.report median latency of k tasks started and "
                          "ended in one flush (one write each), for the share of a "
                          "flush's starts whose end it also holds (model_params."
                          "paired_share)",
        "claim_*, flush_* lines": "leader: fits of the same (reported, not used)",
        "leader_task_s": f"leader: null-runner marginal leader CPU/task at {best['ranks']} "
                         "ranks, "
                         f"claim {best['claim_limit']}, less 2 items' message cost",
        "leader_msg_s, leader_item_s": "leader: msgcost (REPORT + ASSIGN, leader CPU)",
        "spawn_s": ("noop: 1 / bare sequential spawn rate, + ceiling: a task directory and "
                    "two files (CPU), same run" if fs_s else
                    "noop: 1 / bare sequential spawn rate, same run"),
        "msg_latency_s": "leader: msgcost wall per message / 2",
        "startup_s": "utilization 1 s: job start → first task, less a claim and a spawn",
        "close_s": "utilization 1 s: last end → job closed, less the flush interval",
    }
    return costs, sources


def task_dir_s(docs: dict[str, dict[str, Any]]) -> float:
    """The CPU a task's directory and two files cost, from ``ceiling`` (0: not measured)."""
    fs = docs["ceiling"]["results"].get("task_dir")
    return float(fs["median"]["per_task_us"]) * 1e-6 if fs else 0.0


def _err(model: float, measured: float) -> float:
    return (model - measured) / measured if measured else math.nan


def check(costs: Costs, docs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Replay the measured small runs in the model; relative errors. Here every "node"
    is a rank on one 2-core host, so the replay lets them share one spawner: the host's
    measured concurrent spawn rate, plus each task directory's CPU over its cores (the
    projections give each node its own)."""
    rows: list[dict[str, Any]] = []
    up = docs["utilization"]
    # The host's share of a start: a spawn at its concurrent rate, and the directory's
    # CPU spread over its cores.
    cpus = int(docs["ceiling"]["machine"].get("cpus") or 1)
    host = 1.0 / up["results"]["spawn_concurrent_per_s"] + task_dir_s(docs) / cpus
    costs = Costs(**{**asdict(costs), "host_spawn_s": host})
    nodes, packing = up["params"]["nodes"], up["params"]["node_packing_count"]
    for key, res in up["results"]["by_duration"].items():
        sim = simulate(Case(1, nodes, packing, res["duration_s"], res["tasks"]), costs)
        m = res["median"]
        rows.append({"run": f"utilization {key} s, {nodes}x{packing}",
                     "measured_utilization": m["utilization"],
                     "model_utilization": sim["utilization"],
                     "utilization_error": _err(sim["utilization"], m["utilization"])})
    noop = docs["noop"]
    times = [e - s for s, e in next(iter(noop["raw"]["task_times_last_run"].values()))]
    d_true = statistics.median(times) if times else 1e-3
    for ranks, res in noop["results"]["by_ranks"].items():
        sim = simulate(Case(1, int(ranks), noop["params"]["node_packing_count"], d_true,
                            noop["params"]["tasks"]), costs)
        m = res["median"]
        rows.append({"run": f"noop {ranks} ranks", "measured_tasks_per_s": m["rate_per_s"],
                     "model_tasks_per_s": sim["throughput_per_s"],
                     "throughput_error": _err(sim["throughput_per_s"], m["rate_per_s"])})
    lead = docs["leader"]
    null_costs = Costs(**{**asdict(costs), "spawn_s": 0.0, "host_spawn_s": 0.0})
    for key, res in lead["results"]["grid"].items():
        sim = simulate(Case(1, res["ranks"], lead["params"]["node_packing_count"], 0.0,
                            lead["params"]["tasks"]), null_costs,
                       Policy(claim_limit=res["claim_limit"]))
        m = res["median"]
        rows.append({"run": f"leader null runner {key}", "measured_tasks_per_s": m["rate_per_s"],
                     "model_tasks_per_s": sim["throughput_per_s"],
                     "throughput_error": _err(sim["throughput_per_s"], m["rate_per_s"])})
    return rows


def project(costs: Costs, quick: bool) -> dict[str, list[dict[str, Any]]]:
    layouts = {"4010 nodes = 5 launchers x 802": (5, 802),
               "10000 nodes = 1 launcher": (1, 10_000),
               "10000 nodes = 5 launchers x 2000": (5, 2_000)}
    reps = 16 if quick else 32
    out: dict[str, list[dict[str, Any]]] = {}
    for label, (launchers, nodes) in layouts.items():
        out[label] = []
        for d in DURATIONS:
            case = Case(launchers, nodes, 64, d, launchers * nodes * 64 * WAVES, reps)
            out[label].append({"duration_s": d, **simulate(case, costs)})
    # Real durations vary: the same layout with ±10% spread, which smooths completions
    # (the pace each node shows the leader) and the end of the run.
    jittered = "4010 nodes = 5 launchers x 802, durations ±10%"
    out[jittered] = [{"duration_s": d, **simulate(
        Case(5, 802, 64, d, 5 * 802 * 64 * WAVES, reps, jitter=0.1), costs)}
        for d in DURATIONS]
    # What if nodes queued nothing beyond their free slots (claim_margin 0)? Then no node
    # holds work another could start, at the price of a round trip per refill.
    what_if = "4010 nodes = 5 launchers x 802, no queue beyond free slots (what-if)"
    out[what_if] = [{"duration_s": d, **simulate(
        Case(5, 802, 64, d, 5 * 802 * 64 * WAVES, reps), costs,
        Policy(claim_margin=0.0, claim_margin_max=0.0))}
        for d in DURATIONS]
    # The launcher before "no stranded tails": margins kept after a short claim, nothing
    # recalled from busy nodes' queues.
    kept = "4010 nodes = 5 launchers x 802, without handing back between launchers"
    out[kept] = [{"duration_s": d, **simulate(
        Case(5, 802, 64, d, 5 * 802 * 64 * WAVES, reps), costs, Policy(give_back=False))}
        for d in DURATIONS]
    before = "4010 nodes = 5 launchers x 802, without the recall (the launcher before)"
    out[before] = [{"duration_s": d, **simulate(
        Case(5, 802, 64, d, 5 * 802 * 64 * WAVES, reps), costs,
        Policy(recall=False, give_back=False))}
        for d in DURATIONS]
    # One launcher over 10,000 nodes is bound by its database: the same with claims and
    # flushes on one connection, one after the other (claim_connection off).
    single = "10000 nodes = 1 launcher, one database connection (the launcher before)"
    out[single] = [{"duration_s": d, **simulate(
        Case(1, 10_000, 64, d, 10_000 * 64 * WAVES, reps), costs,
        Policy(claim_connection=False))} for d in DURATIONS]
    return out


def run(quick: bool, out: Path) -> dict[str, Any]:
    docs = {name: _latest(out, name) for name in NEEDED}
    costs, sources = derive_costs(docs)
    checks = check(costs, docs)
    projections = project(costs, quick)
    what_ifs = run_sweeps(costs, quick)
    errors = [abs(r.get("utilization_error", r.get("throughput_error", math.nan)))
              for r in checks]
    results = {"costs": asdict(costs), "cost_sources": sources, "policy": asdict(Policy()),
               "assumptions": list(ASSUMPTIONS), "check": checks,
               "projections": projections, "what_ifs": what_ifs,
               "inputs": {n: docs[n]["machine"]["when"] for n in NEEDED}}
    params = {"durations_s": list(DURATIONS), "waves": WAVES, "packing": 64,
              "reps": 16 if quick else 32, "what_if_reps": 8 if quick else 32}
    path = write_result(out, "scale-model", params, results)
    util = docs["utilization"]["results"]["by_duration"]
    plot_projection(png_path(out, "scale-model"), "projected utilization (model)",
                    list(DURATIONS),
                    {k: [p["utilization"] for p in v] for k, v in projections.items()},
                    {"x": [v["duration_s"] for v in util.values()],
                     "y": [v["median"]["utilization"] for v in util.values()],
                     "label": "measured, 4 nodes x 16 (this machine)"})
    summary: dict[str, Any] = {}
    for label, rows in projections.items():
        summary[label] = ", ".join(f"{r['duration_s']:g}s: {r['utilization']:.3f} "
                                   f"({r['throughput_per_s']:.0f}/s)" for r in rows)
    for row in what_ifs:
        summary[f"what-if: {row['sweep']}, {row['duration_s']:g} s"] = " · ".join(
            f"{p['value']}: {p['utilization']:.3f}" for p in row["points"])
    summary["model vs measured |error| median"] = f"{statistics.median(errors):.1%}"
    summary["model vs measured |error| max"] = f"{max(errors):.1%}"
    summary["written"] = str(path)
    return summary
