"""`balsam-dbctl recover`: requeue the tasks of batch jobs whose lease ran out.

Every leader already does this every few seconds; the command is for when no launcher
runs (a crashed campaign, before resubmitting, or to see at once what a dead job held).
Any member may run it, not only the owner: the function it calls touches only batch jobs
whose heartbeat is older than their lease by the server's clock, whose leaders have
stopped their own tasks by then, so nobody can take work away from a live launcher.
"""

from __future__ import annotations

from typing import Any

from .. import db
from ..project import Project
from ..store import Expired, Store


def recover(project: Project, job_id: int | None = None) -> list[Expired]:
    """Mark expired batch jobs LOST (all, or only ``job_id``) and requeue their tasks."""
    with db.connect(project, autocommit=True,
                    application_name="balsam-dbctl recover") as conn:
        return Store(conn).expire_leases(job_id)


def as_dicts(found: list[Expired]) -> list[dict[str, Any]]:
    return [e._asdict() for e in found]


def format_recovered(found: list[Expired]) -> str:
    if not found:
        return "no batch job has an expired lease"
    lines = []
    for e in found:
        lines.append(f"batch job {e.job_id} ({e.user}) marked LOST: {e.requeued} task(s) "
                     f"requeued, {e.failed} failed (lost too often), {e.released} "
                     "unstarted claim(s) released")
    return "\n".join(lines)
