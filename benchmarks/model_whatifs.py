"""The scale model's sweeps of the settings that matter at scale: how many launchers one
database serves, the claim batch, the flush interval (issue 17's what-ifs). Each sweep
changes one thing from a projected layout of ``scenarios_scale_model``, with the costs
measured in the same run; the result is one row per (sweep, task duration) of
utilizations by value.

* **Launchers per database**: 10,000 nodes split between 1 … 20 launchers, their calls
  sharing a database server of 2 cores (this machine's, where every cost was measured),
  8 cores, or as many as there are calls in flight (the projections' assumption);
  ``model_dbhost.py`` says how a core is held.
* **Claim batch** (``claim_limit``) and **flush interval** (``flush_interval_s``): 4,010
  nodes in 5 launchers, the seed's layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .model import Case, Costs, Policy, simulate

SEED = (5, 802)  # 4,010 nodes = 5 launchers × 802
TOTAL_NODES = 10_000
PACKING, WAVES = 64, 10


@dataclass(frozen=True)
class Sweep:
    name: str
    setting: str
    values: tuple[Any, ...]
    durations: tuple[float, ...]
    db_cores: int = 0  # the database server's (model_dbhost.py); 0: unbounded


def _launchers_per_database(cores: int) -> Sweep:
    where = "unbounded" if not cores else f"{cores} cores"
    return Sweep(f"10000 nodes, launchers per database ({where})", "launchers",
                 (1, 2, 5, 10, 20), (10.0, 60.0), cores)


SWEEPS = (
    *(_launchers_per_database(k) for k in (2, 8, 0)),
    Sweep("4010 nodes = 5 launchers x 802, claim batch", "claim_limit",
          (256, 1024, 4096, 16384), (1.0, 10.0, 60.0)),
    Sweep("4010 nodes = 5 launchers x 802, flush interval", "flush_interval_s",
          (0.02, 0.1, 0.5, 2.0), (1.0, 10.0, 60.0)),
)


def case_and_policy(sweep: Sweep, value: Any, duration: float,
                     reps: int) -> tuple[Case, Policy]:
    if sweep.setting == "launchers":
        nodes = TOTAL_NODES // value
        return (Case(value, nodes, PACKING, duration, value * nodes * PACKING * WAVES, reps,
                     db_cores=sweep.db_cores), Policy())
    launchers, nodes = SEED
    case = Case(launchers, nodes, PACKING, duration, launchers * nodes * PACKING * WAVES,
                reps)
    return case, Policy(**{sweep.setting: value})


def run_sweeps(costs: Costs, quick: bool) -> list[dict[str, Any]]:
    """Every sweep's rows: {sweep, setting, duration_s, points: [{value, utilization,
    throughput_per_s, db_cores_busy?}]}."""
    reps = 8 if quick else 32
    rows: list[dict[str, Any]] = []
    for sweep in SWEEPS:
        for d in sweep.durations:
            points: list[dict[str, Any]] = []
            for v in sweep.values:
                case, policy = case_and_policy(sweep, v, d, reps)
                sim = simulate(case, costs, policy)
                points.append({"value": v, **{k: sim[k] for k in (
                    "utilization", "throughput_per_s", "db_cores_busy") if k in sim}})
            rows.append({"sweep": sweep.name, "setting": sweep.setting, "duration_s": d,
                         "points": points})
    return rows
