"""What the scale model is given and gives back: the measured costs, the launcher's policy,
the case to simulate, the assumptions it rests on, and the result (``model.py`` is the
simulation itself)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

ASSUMPTIONS = (
    "Tasks have one fixed duration (or a seeded ±spread where stated); every node of a "
    "launcher is alike: one worker process per node with its own cores, starting its "
    "tasks one after another at the cost measured here: a spawn, and the task's directory "
    "and two files (this machine's file system, at the moment of the run).",
    "Each leader is one core: per claimed task it pays the measured marginal leader CPU "
    "of the null-runner runs, per REPORT the measured message cost plus a cost per item; "
    "idle nodes' periodic reports (one a second) take a fixed share of that core.",
    "Each leader has two database threads (claims on one, flushes and the rest in order "
    "on the other: launcher/calls.py) and each call "
    "costs the latency measured here for its batch size; the database host runs the "
    "launchers' statements side by side, and their cost grows neither with the number of "
    "launchers nor with the size of the task table (the claim index keeps it flat); the "
    "'launchers per database' what-if gives the server a number of cores instead, each "
    "call holding one for its whole measured time.",
    "A node's queue depth follows the launcher's own Pace rule; the leader serves reports "
    "first come, first served, as the launcher does.",
    "Messages take the measured one-way latency whatever the number of nodes (no network "
    "contention); MPI start-up on thousands of nodes is not modelled: the batch job's "
    "life starts when its leader is up, as in `balsam-mpi report`.",
    "The launcher's start (job open → first claim) and end (last task end → job closed) "
    "take the times measured on this machine.",
)


@dataclass(frozen=True)
class Costs:
    claim_fixed_s: float = 0.0
    claim_row_s: float = 0.0
    flush_fixed_s: float = 0.0
    flush_start_row_s: float = 0.0
    flush_end_row_s: float = 0.0
    # Measured latency by batch size, ((rows, seconds), …) ascending; when given, these
    # replace the lines above (interpolated between points, the last segment's slope
    # beyond them): the measured cost is not quite linear in the batch size.
    claim_table: tuple[tuple[float, float], ...] = ()
    start_table: tuple[tuple[float, float], ...] = ()
    end_table: tuple[tuple[float, float], ...] = ()
    # k tasks whose start and end share a flush: one write each (migration 0011)
    combined_table: tuple[tuple[float, float], ...] = ()
    leader_task_s: float = 0.0  # leader CPU per task (spec, buffering, bookkeeping)
    leader_msg_s: float = 0.0  # leader CPU per REPORT received (and its ASSIGN)
    leader_item_s: float = 0.0  # … per started/finished item it carries
    spawn_s: float = 0.0  # a node's cost to start one task process
    # > 0: every node shares one host, which starts one process at a time at this cost
    # (how this 2-core machine runs its "nodes"; 0 for real nodes, each with its cores)
    host_spawn_s: float = 0.0
    msg_latency_s: float = 0.0  # one-way message time
    startup_s: float = 0.0  # job open → leader's first claim
    close_s: float = 0.0  # last task end → job closed

    def claim(self, rows: float) -> float:
        """The database time of a claim of this many rows."""
        if self.claim_table:
            return interpolate(self.claim_table, rows)
        return self.claim_fixed_s + self.claim_row_s * rows

    def flush(self, starts: float, ends: float, paired: float = 0.0) -> float:
        """The database time of a flush: ``paired`` of its tasks have both their start
        and their end in it (written at once when ``combined_table`` is measured)."""
        if not (self.start_table and self.end_table):
            return (self.flush_fixed_s + self.flush_start_row_s * starts
                    + self.flush_end_row_s * ends)
        if not self.combined_table:
            paired = 0.0
        parts = [(t, n) for t, n in ((self.combined_table, paired),
                                     (self.start_table, starts - paired),
                                     (self.end_table, ends - paired)) if n > 0]
        if not parts:
            return 0.0
        # One statement carries them all: count its round trip once (the smallest first
        # point of the tables it uses).
        once = min(t[0][1] for t, _ in parts)
        return max(once, sum(interpolate(t, n) for t, n in parts) - once * (len(parts) - 1))


@dataclass(frozen=True)
class Policy:
    """The launcher's settings that shape the pipeline (defaults of config.Settings)."""

    claim_limit: int = 4096
    claim_margin: float = 0.5
    claim_margin_max: float = 1.0
    claim_horizon_s: float = 2.0
    flush_size: int = 4096
    flush_interval_s: float = 0.1
    report_interval_s: float = 1.0
    # No margins after a short claim, and queued tasks recalled to free slots while the
    # pool is empty (dispatch.py, "No stranded tails"); False: the launcher before that.
    recall: bool = True
    # The least margin once a node's pace is known (workerview.Pace's floor).
    margin_floor: float = 0.05
    # Launchers hand queued tasks back to hungry ones (launcher/giveback.py); False: the
    # launcher before that (and a claim that found nothing was never repeated).
    give_back: bool = True
    hunger_beat_s: float = 0.25  # giveback.HUNGER_BEAT_S
    claim_idle_s: float = 0.5  # Settings.claim_idle_s: between claims that found nothing
    # … but while its nodes are busy and others hold work, a leader looks every 0.1 s
    # (claims.HOLDERS_RECHECK_S): every leader here takes every task, so always then.
    relook_s: float = 0.1
    # Claims on a database connection of their own, beside the flushes (Settings.
    # claim_connection); False: one connection, claims and flushes one after another.
    claim_connection: bool = True
    # A claim also asks for this share of the nodes' margins, held in the leader's pool
    # (claims.AHEAD); 0: only what the nodes can take (the launcher before).
    claim_ahead: float = 0.25


@dataclass(frozen=True)
class Case:
    launchers: int
    nodes: int  # per launcher
    packing: int  # tasks per node (node_packing_count)
    duration_s: float
    tasks: int  # in total, in one table every launcher claims from
    reps: int | None = None  # simulated nodes per launcher (None: all of them)
    jitter: float = 0.0  # durations uniform in duration_s × (1 ± jitter), seeded
    # The database server's cores, shared by every launcher's calls (model_dbhost.py);
    # 0: as many as the calls in flight (the assumption of the projections)
    db_cores: int = 0


def paired_share(span_s: float, duration_s: float) -> float:
    """The share of a flush's starts whose end is in the same flush (one combined write
    each, as ``Store.report`` pairs them: migration 0011). The flush holds what was
    reported over its last ``span_s`` seconds, starts spread evenly over it: those
    reported ``duration_s`` or more before the flush have their end in it. So a long
    window pairs most (a busy database makes windows long), and a task longer than the
    window never pairs."""
    if span_s <= 0.0:
        return 1.0 if duration_s <= 0.0 else 0.0
    return max(0.0, span_s - duration_s) / span_s


def interpolate(table: tuple[tuple[float, float], ...], x: float) -> float:
    """Piecewise-linear through the points; the first point's value below it, the last
    segment's slope beyond the last point."""
    if x <= table[0][0] or len(table) == 1:
        return table[0][1]
    for (x0, y0), (x1, y1) in zip(table, table[1:], strict=False):  # neighbours
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    (x0, y0), (x1, y1) = table[-2], table[-1]
    return y1 + (y1 - y0) / (x1 - x0) * (x - x1)


@dataclass
class Result:
    per_launcher: list[dict[str, float]] = field(default_factory=list)
    events: int = 0
    db_cores_busy: float | None = None  # the database server's cores (None: unbounded)

    def summary(self) -> dict[str, float]:
        pl = self.per_launcher
        busy = sum(p["busy_slot_s"] for p in pl)
        held = sum(p["slots"] * p["wall_s"] for p in pl)
        first = min(p["first_start_s"] for p in pl)
        last = max(p["last_end_s"] for p in pl)
        done = sum(p["done"] for p in pl)
        return {
            "utilization": busy / held if held else math.nan,
            "throughput_per_s": done / (last - first) if last > first else math.nan,
            "done": done,
            "wall_s": max(p["wall_s"] for p in pl),
            "first_task_s": first,
            "tail_idle_s": max(p["tail_idle_s"] for p in pl),
            "leader_cpu_busy": max(p["leader_cpu_busy"] for p in pl),
            "db_thread_busy": max(p["db_thread_busy"] for p in pl),
            **({} if self.db_cores_busy is None else {"db_cores_busy": self.db_cores_busy}),
        }
