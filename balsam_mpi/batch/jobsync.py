"""`balsam-mpi job sync`: close the caller's QUEUED rows whose jobs the scheduler has ended.

A launcher closes its own row when its job ends; a job that ends before any launcher
started (cancelled while pending, refused at start, its script failed) leaves the row
QUEUED for ever. This asks the scheduler (batch/schedq.py) about every such row of the
caller and closes, as FAILED with the scheduler's word in ``end_reason``, those it reports
ended, or no longer knows when this host talks to the scheduler cluster the job was given
to: the row's recorded cluster identity is this host's (batch/clusterid.py), or, when
either identity is unknown, the row was submitted from this host. A project's database
may serve several machines, whose job ids mean nothing to this one's scheduler; a job
ended elsewhere is closed by a sync there. Closing is `submit_fail`'s function: only the
caller's own row, only while still QUEUED, so a launcher adopting the row at that moment
wins.

A submitter killed between writing its row and reading the scheduler's answer leaves a
QUEUED row with no scheduler id: nothing can be asked about it, and every autoscaler
would count it as a queued job for ever. Once it is older than any submission can take
(``UNSUBMITTED_AFTER_S``), it is closed too — unless its submission carried a mark
(Slurm's comment, PBS's ``BALSAM_SUBMIT`` variable): then, as for a submission whose
answer was lost, its job is looked for by that mark first (batch/uncertain.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import sql
from ..base.project import this_host
from . import clusterid, schedq, uncertain

Ask = Callable[[str, Sequence[str]], dict[str, tuple[schedq.Phase, str]]]

# A submission records the scheduler's id within submit.SUBMIT_TIMEOUT_SEC (120 s) of its
# row; ten minutes leaves room for a slow database and clocks, and an autoscaler stalled
# by such a row resumes within them.
UNSUBMITTED_AFTER_S = 600.0


@dataclass(frozen=True)
class QueuedJob:
    id: int
    scheduler: str
    scheduler_job_id: str
    nodes: int
    filters: dict[str, Any]
    host: str
    sched_cluster: str | None = None


@dataclass(frozen=True)
class Synced:
    """What a sync found: rows closed (id, reason), rows still queued, rows whose
    scheduler cannot be asked (id, why), rows whose lost submission was found by its
    mark (the row with the job's id, what was found)."""

    closed: list[tuple[QueuedJob, str]]
    queued: list[QueuedJob]
    unasked: list[tuple[QueuedJob, str]]
    found: list[tuple[QueuedJob, str]] = field(default_factory=list)


def queued_jobs(conn: Any) -> list[QueuedJob]:
    return [QueuedJob(int(r[0]), str(r[1]), str(r[2]), int(r[3]), dict(r[4] or {}),
                      str(r[5] or ""), r[6]) for r in conn.execute(sql.query("jobs_queued_own"))]


def named(job: QueuedJob) -> str:
    """How a row's job is named in what the commands print."""
    if not job.scheduler_job_id:
        return f"{job.scheduler}, no job id"
    return f"{job.scheduler} job {job.scheduler_job_id}"


def unsubmitted_jobs(conn: Any) -> list[QueuedJob]:
    return [QueuedJob(int(r[0]), str(r[1]), "", int(r[2]), dict(r[3] or {}), str(r[4] or ""))
            for r in conn.execute(sql.query("jobs_unsubmitted_own"),
                                  {"age": UNSUBMITTED_AFTER_S})]


def sync(conn: Any, ask: Ask = schedq.phases, dry_run: bool = False,
         host: str | None = None, find: uncertain.Find = schedq.find_by_mark,
         identity: Callable[[str], str | None] = clusterid.identity) -> Synced:
    """Ask each scheduler once about the caller's QUEUED rows; close the ended ones
    (committed here, unless ``dry_run``). ``host``: this host's name (this_host());
    ``identity``: the scheduler cluster this host talks to (asked once, when needed)."""
    here = this_host() if host is None else host
    known: dict[str, str | None] = {}

    def here_cluster(scheduler: str) -> str | None:
        if scheduler not in known:
            known[scheduler] = clusterid.checked(identity(scheduler))
        return known[scheduler]

    closed: list[tuple[QueuedJob, str]] = []
    queued: list[QueuedJob] = []
    unasked: list[tuple[QueuedJob, str]] = []
    found: list[tuple[QueuedJob, str]] = []
    _look_for_lost(conn, here, here_cluster, find, dry_run, closed, unasked, found)
    rows = queued_jobs(conn)
    if dry_run:  # what was found is not recorded: ask about it all the same
        rows += [j for j, _ in found if j.id not in {r.id for r in rows}]
    for row in unsubmitted_jobs(conn):
        reason = ("its submission never recorded a scheduler job id (the submitting "
                  "process ended before the scheduler answered); no scheduler job id "
                  "to ask about")
        if dry_run or _close(conn, row.id, reason):
            closed.append((row, reason))
    for scheduler in sorted({r.scheduler for r in rows}):
        mine = [r for r in rows if r.scheduler == scheduler]
        if scheduler in schedq.SUPPORTED:  # an id that is not one is never put on argv
            odd = [r for r in mine if not schedq.is_job_id(scheduler, r.scheduler_job_id)]
            unasked.extend((r, f"{r.scheduler_job_id[:40]!r} is not a {scheduler} job id")
                           for r in odd)
            mine = [r for r in mine if r not in odd]
        try:
            said = ask(scheduler, [r.scheduler_job_id for r in mine])
        except schedq.SchedulerQueryError as exc:
            unasked.extend((r, str(exc)) for r in mine)
            continue
        for row in mine:
            phase, word = said.get(row.scheduler_job_id, ("unknown", "not listed"))
            if phase in ("waiting", "running"):
                queued.append(row)
                continue
            if phase == "unknown" and not clusterid.may_close(
                    row.host, row.sched_cluster, here,
                    here_cluster(scheduler) if row.sched_cluster else None):
                where = f" to {row.sched_cluster}" if row.sched_cluster else ""
                unasked.append((row, f"submitted from {row.host}{where}, whose scheduler "
                                     "this host may not share: run `balsam-mpi job sync` "
                                     "there"))
                continue
            reason = (f"the scheduler ended it ({word}) before its launcher started"
                      if phase == "ended" else
                      "the scheduler no longer knows it, and no launcher ever started")
            if dry_run or _close(conn, row.id, reason):
                closed.append((row, reason))
    if not dry_run:
        conn.commit()
    return Synced(closed, queued, unasked, found)


def _look_for_lost(conn: Any, here: str, here_cluster: Callable[[str], str | None],
                   find: uncertain.Find, dry_run: bool, closed: list[tuple[QueuedJob, str]],
                   unasked: list[tuple[QueuedJob, str]],
                   found: list[tuple[QueuedJob, str]]) -> None:
    """Rows whose submission's answer was lost (batch/uncertain.py): record the job
    found by its mark (the sync then asks about it as about any queued row), close those
    no job will appear for, say why the others wait."""
    rows = uncertain.uncertain_jobs(conn, UNSUBMITTED_AFTER_S)
    if not rows:
        return
    said = uncertain.resolve(rows, here, here_cluster, find)

    def as_queued(row: uncertain.UncertainJob, job_id: str = "") -> QueuedJob:
        return QueuedJob(row.id, row.scheduler, job_id, row.nodes, row.filters, row.host,
                         row.sched_cluster)

    for row, job_id, _phase, state in said.found:
        if dry_run or _record(conn, row.id, job_id):
            found.append((as_queued(row, job_id), f"its submission's answer was lost; "
                          f"found as {row.scheduler} job {job_id} ({state}) by "
                          f"{row.mark_named('its')}"))
    for row in said.gone:
        reason = (f"its submission's answer was lost, and after {UNSUBMITTED_AFTER_S:g} s "
                  f"the scheduler lists no job with {row.mark_named('its')}: it was "
                  "never queued, or ended and was forgotten before any launcher started")
        if dry_run or _close(conn, row.id, reason):
            closed.append((as_queued(row), reason))
    unasked.extend((as_queued(r), why) for r, why in [*said.waiting, *said.unasked])


def _record(conn: Any, job_id: int, scheduler_job_id: str) -> bool:
    row = conn.execute(sql.query("submit_set_scheduler_id"),
                       {"id": job_id, "scheduler_job_id": scheduler_job_id}).fetchone()
    return row is not None and row[0] is not None


def _close(conn: Any, job_id: int, reason: str) -> bool:
    """Whether the row was still QUEUED (a launcher may have adopted it meanwhile)."""
    row = conn.execute(sql.query("submit_fail"), {"id": job_id, "reason": reason}).fetchone()
    return row is not None and row[0] is not None
