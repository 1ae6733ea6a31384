"""Submissions whose scheduler answer was lost: find their job by its mark, or close them.

sbatch or qsub that times out (or that a signal ends, or that exits 0 without an id) may
have queued the job or not. Closing the row FAILED lost the job when it was queued — it
started under a closed row — and the next autoscaler look, seeing no job queued,
submitted a second one. So `submit` leaves such a row QUEUED without a scheduler id,
marked uncertain (migrations/0032), and counted as a queued job; every Slurm and PBS
submission carries the mark ``balsam:<row id>:<token>`` (batch/submit.py: Slurm's
``--comment``, PBS's job variable ``BALSAM_SUBMIT``). Here, from a host of the same
scheduler cluster (batch/clusterid.py), the caller's jobs are listed once per scheduler
(batch/schedq.py ``find_by_mark``):

* a job with the row's mark: its id is recorded (the set-once function of `submit`),
  and the row is a queued job like any other;
* none, while the submission is younger than ``jobsync.UNSUBMITTED_AFTER_S``: left as it
  is (a slow controller may still be creating the job), and said;
* none, once older: no job will appear any more; the row is closed FAILED.

A row submitted and left without an id by a killed submitter (never marked) is looked
for in the same way once it is that old.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .. import sql
from . import clusterid, marks, schedq

# (scheduler, marks) -> mark -> (scheduler job id, phase, state)
Find = Callable[[str, Sequence[str]], dict[str, tuple[str, schedq.Phase, str]]]


@dataclass(frozen=True)
class UncertainJob:
    id: int
    scheduler: str
    nodes: int
    filters: dict[str, Any]
    host: str
    sched_cluster: str | None
    token: str
    stale: bool

    @property
    def comment(self) -> str:
        """The mark the submission carried (Slurm's comment, PBS's BALSAM_SUBMIT)."""
        return marks.mark_of(self.id, self.token)

    def mark_named(self, article: str = "the") -> str:
        return marks.named(self.scheduler, self.comment, article)


@dataclass(frozen=True)
class Resolved:
    """found: (row, scheduler job id, phase, state); gone: rows no job will appear for;
    waiting and unasked: (row, why) left QUEUED."""

    found: list[tuple[UncertainJob, str, schedq.Phase, str]]
    gone: list[UncertainJob]
    waiting: list[tuple[UncertainJob, str]]
    unasked: list[tuple[UncertainJob, str]]


def uncertain_jobs(conn: Any, age: float) -> list[UncertainJob]:
    return [UncertainJob(int(r[0]), str(r[1]), int(r[2]), dict(r[3] or {}), str(r[4] or ""),
                         r[5], str(r[6]), bool(r[7]))
            for r in conn.execute(sql.query("jobs_uncertain_own"), {"age": age})]


def resolve(rows: Sequence[UncertainJob], here: str, here_cluster: Callable[[str], str | None],
            find: Find = schedq.find_by_mark) -> Resolved:
    """What the scheduler says of each row's mark; changes nothing (the caller records
    what was found). ``here_cluster``: the identity of this host's scheduler cluster."""
    found: list[tuple[UncertainJob, str, schedq.Phase, str]] = []
    gone: list[UncertainJob] = []
    waiting: list[tuple[UncertainJob, str]] = []
    unasked: list[tuple[UncertainJob, str]] = []
    askable: list[UncertainJob] = []
    for row in rows:
        if row.scheduler not in marks.MARKED:
            unasked.append((row, f"cannot look for a {row.scheduler} job by its mark"))
        elif not clusterid.may_close(row.host, row.sched_cluster, here,
                                     here_cluster(row.scheduler) if row.sched_cluster
                                     else None):
            unasked.append((row, f"its submission's outcome is uncertain and it was "
                                 f"submitted from {row.host}"
                                 + (f" to {row.sched_cluster}" if row.sched_cluster else "")
                                 + ", whose scheduler this host may not share: run "
                                 "`balsam-mpi job sync` there"))
        else:
            askable.append(row)
    for scheduler in sorted({r.scheduler for r in askable}):
        mine = [r for r in askable if r.scheduler == scheduler]
        try:
            said = find(scheduler, [r.comment for r in mine])
        except schedq.SchedulerQueryError as exc:
            unasked.extend((r, f"its submission's outcome is uncertain: {exc}") for r in mine)
            continue
        for row in mine:
            if row.comment in said:
                job, phase, state = said[row.comment]
                found.append((row, job, phase, state))
            elif row.stale:
                gone.append(row)
            else:
                waiting.append((row, f"its submission's outcome is uncertain and no job "
                                     f"with {row.mark_named()} is listed yet; looked for "
                                     "again at every sync"))
    return Resolved(found, gone, waiting, unasked)
