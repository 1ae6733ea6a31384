"""Other batch jobs in the in-memory store (``launcher/memstore.py``): lease expiry
(migration 0005), the tasks of superseded runs (0021) and the jobs that hold work a
launcher's filters match (``launcher_held_elsewhere``), as the SQL does them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from .memrows import Job, Task, requeue, takes
from .storeport import ClaimFilter, Expired, Held, Lease


class Rows(Protocol):
    """What these functions read of the in-memory store."""

    clock: Callable[[], float]
    tasks: dict[int, Task]
    jobs: dict[int, Job]

RUNNABLE = ("READY", "RESTART_READY")
HELD_STATES = (*RUNNABLE, "PREPROCESSED", "RUNNING")


def supersede(store: Rows, job: Job) -> None:
    """An adoption (before the epoch moves on): tasks an earlier run still holds are
    stopped for sure once that run's lease has run out; never brought forward."""
    if any(t.batch_job_id == job.id for t in store.tasks.values()):
        until = job.heartbeat_at + job.lease_s
        job.superseded_until = max(job.superseded_until or until, until)


def expired(store: Rows, job: Job) -> bool:
    return job.state == "RUNNING" and store.clock() - job.heartbeat_at > job.lease_s


def expire(store: Rows, job_id: int | None) -> list[Expired]:
    now = store.clock()
    out: list[Expired] = []
    for job in store.jobs.values():
        if (job_id is not None and job.id != job_id) or not expired(store, job):
            continue
        job.state = "LOST"
        out.append(_requeue(store, job, None, "lost: lease expired"))
    for job in store.jobs.values():
        until = job.superseded_until
        if (job_id is not None and job.id != job_id) or until is None or until >= now:
            continue
        job.superseded_until = None
        out.append(_requeue(store, job, job.epoch,
                            f"lost: the run of batch job {job.id} ended without closing "
                            "it, and the job was started again"))
    return out


def _requeue(store: Rows, job: Job, before: int | None, why: str) -> Expired:
    """The job's tasks (only those of epochs before ``before``, if given) requeued."""
    requeued = failed = released = 0
    for t in store.tasks.values():
        if t.batch_job_id != job.id or (before is not None and (t.lease_epoch or 0) >= before):
            continue
        if t.state == "RUNNING":
            requeue(t, counted=True, why=why)
            failed += t.state == "FAILED"
            requeued += t.state != "FAILED"
        elif t.state in RUNNABLE:
            t.batch_job_id, released = None, released + 1
    return Expired(job.id, job.user, requeued, failed, released, before is not None)


def held_elsewhere(store: Rows, lease: Lease, filters: ClaimFilter,
                   max_nodes: int) -> list[Held]:
    now = store.clock()
    out = []
    for job in sorted(store.jobs.values(), key=lambda j: j.id):
        own = job.id == lease.job_id
        if job.state != "RUNNING" or (own and job.superseded_until is None):
            continue
        held = [t for t in store.tasks.values() if _held_by(job, t, own)
                and takes(filters, t) and t.state in HELD_STATES]
        if any(t.num_nodes <= max_nodes for t in held):
            queued = not own and any(t.num_nodes == 1 and t.state in RUNNABLE for t in held)
            beat = (job.superseded_until - job.lease_s if own and job.superseded_until
                    is not None else job.heartbeat_at)
            out.append(Held(job.id, 1, beat, now - beat, job.lease_s, queued))
    return out


def _held_by(job: Job, t: Task, own: bool) -> bool:
    return t.batch_job_id == job.id and (not own or (t.lease_epoch or 0) < job.epoch)
