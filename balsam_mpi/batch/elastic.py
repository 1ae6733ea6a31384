"""`balsam-mpi autoscale`: keep batch jobs queued while runnable work waits for them.

Each tick (every ``--interval`` seconds, or once with ``--once``):

1. close the caller's QUEUED rows whose jobs the scheduler has ended (batch/jobsync.py);
2. read the backlog: runnable tasks no launcher holds that a job with these filters would
   take, in nodes (``num_nodes / node_packing_count`` each; sql/submit.sql
   ``elastic_backlog``). Running launchers claim what their free slots (and short queue)
   can take, so what is left unclaimed is work no running job has room for. Tasks wider
   than ``max_nodes`` or longer than the launchers' time limit are counted apart: a job
   of this autoscaler would never claim them;
3. :func:`decide` whether one more job is needed and how large: none while the jobs of
   these filters already queued cover the backlog, while ``max_queued`` of them wait, or
   when ``max_total_nodes`` would be passed; else the uncovered nodes, rounded up, at
   least ``min_nodes`` and what the widest task needs (a task of w > 1 nodes runs on
   workers only: w + 1), at most ``max_nodes``;
4. submit it as `balsam-mpi submit` would (batch/submit.py), with the same script, checks
   and row.

A look holds a session advisory lock of the user and the filters from step 1 to step 4,
tried, not waited for: two autoscalers of one user with the same filters (two shells,
cron and a loop) would otherwise both see no job queued and both submit.

The jobs' launchers end when the work runs out (``--idle-timeout``), so the allocation
follows the backlog both ways. One job per tick at most: a large backlog is met over a few
ticks, and no burst of submissions can follow a wrong reading.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .. import sql
from ..base import db
from ..base.project import Project
from . import jobscript, jobsync, schedq
from .jobscript import JobRequest

Submit = Callable[[Project, JobRequest], Any]


@dataclass(frozen=True)
class Scaling:
    """The autoscaler's limits (checked by the CLI)."""

    max_nodes: int  # per job
    min_nodes: int = 1
    max_queued: int = 1  # jobs of these filters waiting in the queue at once
    max_total_nodes: int | None = None  # queued + running jobs of these filters


@dataclass(frozen=True)
class Backlog:
    tasks: int  # runnable, unheld, no wider than max_nodes
    nodes: float  # what they need at once: sum of num_nodes / node_packing_count
    widest: int  # the largest num_nodes among them
    too_wide: int  # tasks wider than max_nodes: no job of this autoscaler can run them
    too_long: int = 0  # tasks asking more wall time than its launchers' time limit


@dataclass(frozen=True)
class ActiveJob:
    id: int
    state: str  # QUEUED | RUNNING
    nodes: int


@dataclass(frozen=True)
class Decision:
    nodes: int  # of the job to submit; 0: none
    why: str


@dataclass(frozen=True)
class Tick:
    synced: jobsync.Synced
    backlog: Backlog
    decision: Decision
    submitted: Any = None  # batch/submit.py's Submission


def max_claimable_nodes(job_nodes: int) -> int:
    """The widest task a launcher of ``job_nodes`` nodes claims: a multi-node task runs on
    worker nodes only, while the leader's node runs single-node ones (launcher/dispatch.py
    ``max_nodes``)."""
    return max(1, job_nodes - 1)


def least_nodes(widest: int) -> int:
    """The smallest job that runs a task of ``widest`` nodes (the inverse of the above)."""
    return widest + 1 if widest > 1 else 1


def decide(backlog: Backlog, active: Sequence[ActiveJob], s: Scaling) -> Decision:
    """Whether to submit one more job, and its size. Pure: see the module's step 3."""
    queued = [j for j in active if j.state == "QUEUED"]
    queued_nodes = sum(j.nodes for j in queued)
    total = sum(j.nodes for j in active)
    if backlog.tasks == 0:
        return Decision(0, "no runnable work waits for a job")
    have = (f"{backlog.tasks:,} runnable tasks need {backlog.nodes:,.2f} nodes; "
            f"{len(queued)} job(s) of {queued_nodes} nodes queued, {total} nodes in all")
    if len(queued) >= s.max_queued:
        return Decision(0, f"{have}: waiting, {s.max_queued} queued at most (--max-queued)")
    uncovered = backlog.nodes - queued_nodes
    if uncovered <= 1e-9:
        return Decision(0, f"{have}: the queued jobs cover it")
    least = max(s.min_nodes, least_nodes(backlog.widest))
    nodes = min(s.max_nodes, max(least, math.ceil(uncovered - 1e-9)))
    if s.max_total_nodes is not None:
        room = s.max_total_nodes - total
        if room < least:
            return Decision(0, f"{have}: waiting, {s.max_total_nodes} nodes at most "
                               "(--max-total-nodes)")
        nodes = min(nodes, room)
    return Decision(nodes, f"{have}: submitting {nodes} node(s)")


def read_backlog(conn: Any, filters: dict[str, Any], max_nodes: int,
                 time_limit_min: float | None = None) -> Backlog:
    """``max_nodes``: the widest task the largest job claims (:func:`max_claimable_nodes`);
    ``time_limit_min``: the launchers' ``--time-limit-min`` (None: no limit), past which a
    task's ``wall_time_min`` keeps it from their claims."""
    from psycopg.types.json import Jsonb

    tags = filters.get("tags")
    row = conn.execute(sql.query("elastic_backlog"), {
        "max_nodes": max_nodes, "time_limit_min": time_limit_min,
        "workflows": filters.get("workflows"), "tags": Jsonb(tags) if tags else None,
        "owners": filters.get("owners")}).fetchone()
    return Backlog(int(row[0]), float(row[1]), int(row[2]), int(row[3]), int(row[4]))


def active_jobs(conn: Any, filters: dict[str, Any]) -> list[ActiveJob]:
    """The caller's QUEUED and RUNNING jobs whose filters are these."""
    wanted = _given(filters)
    return [ActiveJob(int(r[0]), str(r[1]), int(r[2]))
            for r in conn.execute(sql.query("jobs_active_own"))
            if isinstance(r[3] or {}, dict) and _given(r[3] or {}) == wanted]


def _given(filters: dict[str, Any]) -> dict[str, Any]:
    """Filters without their empty parts: `submit` records only the filters given, the
    launcher all three when it adopts the row (``"tags": {}``, ``"owners": []``), and
    both mean the same job."""
    return {k: v for k, v in filters.items() if v}


def tick(project: Project, req: JobRequest, scaling: Scaling, *,
         ask: jobsync.Ask = schedq.phases, submit: Submit | None = None,
         dry_run: bool = False) -> Tick:
    """One round of the module's four steps; with ``dry_run`` nothing is closed or
    submitted (the decision is what would be done)."""
    from psycopg.types.json import Jsonb

    from . import submit as submitting

    filters = jobscript.filters_of(req)
    key = {"filters": Jsonb(filters)}
    with db.translated(), db.connect(project, application_name="balsam_mpi autoscale",
                                     autocommit=True) as conn:
        got = conn.execute(sql.query("elastic_lock"), key).fetchone()
        if not (got and got[0]):
            return Tick(jobsync.Synced([], [], []), Backlog(0, 0.0, 0, 0),
                        Decision(0, "another autoscale of yours with these filters is "
                                    "looking now; this look is skipped"))
        try:
            synced = jobsync.sync(conn, ask, dry_run=dry_run)
            backlog = read_backlog(conn, filters, max_claimable_nodes(scaling.max_nodes),
                                   jobscript.launcher_time_limit(req))
            closed = {job.id for job, _reason in synced.closed}
            active = [j for j in active_jobs(conn, filters) if j.id not in closed]
            decision = decide(backlog, active, scaling)
            done = None
            if decision.nodes and not dry_run:
                # Under the lock: the next look of another autoscale sees this job queued.
                done = (submit or submitting.submit)(project,
                                                     replace(req, nodes=decision.nodes))
        finally:
            conn.execute(sql.query("elastic_unlock"), key)
    return Tick(synced, backlog, decision, done)
