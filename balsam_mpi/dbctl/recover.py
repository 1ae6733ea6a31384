"""`balsam-dbctl recover`: write what dead launchers' journals hold, then requeue the tasks
of batch jobs whose lease ran out.

Every leader already does this every few seconds; the command is for when no launcher
runs (a crashed campaign, before resubmitting, or to see at once what a dead job held).
Any member may run it, not only the owner: the functions it calls touch only batch jobs
whose heartbeat is older than their lease by the server's clock, whose leaders have
stopped their own tasks by then, so nobody can take work away from a live launcher; and
a journal line is applied only if the database can verify that the job's own leader
wrote it (``launcher/journal.py``). Journals go first, so a task whose success is in one is
finished, not requeued as lost.
"""

from __future__ import annotations

from typing import Any

from ..base import db
from ..base.project import Project
from ..launcher.replay import Replayed, replay_due
from ..launcher.store import Store
from ..launcher.storeport import Expired


class Recovered(list[Expired]):
    """The batch jobs marked LOST (a list, as before), and the journals written first."""

    def __init__(self, expired: list[Expired], replayed: list[Replayed]) -> None:
        super().__init__(expired)
        self.replayed = replayed


def recover(project: Project, job_id: int | None = None) -> Recovered:
    """Replay due journals, then mark expired batch jobs LOST (all, or only ``job_id``)
    and requeue their tasks."""
    with db.connect(project, autocommit=True,
                    application_name="balsam-dbctl recover") as conn:
        store = Store(conn)
        replayed = replay_due(store, project.log_dir, job_id=job_id)
        return Recovered(store.expire_leases(job_id), replayed)


def as_dicts(found: list[Expired]) -> list[dict[str, Any]]:
    return [e._asdict() for e in found]


def format_recovered(found: list[Expired]) -> str:
    lines = [f"batch job {r.job_id} (epoch {r.epoch}): {r.lines} journal line(s) written, "
             f"{r.finished} task(s) finished from them"
             for r in getattr(found, "replayed", [])]
    if not found:
        lines.append("no batch job has an expired lease")
    for e in found:
        what = ("an earlier run of it ended without closing, its lease ran out" if
                e.superseded else "marked LOST")
        lines.append(f"batch job {e.job_id} ({e.user}) {what}: {e.requeued} task(s) "
                     f"requeued, {e.failed} failed (lost too often), {e.released} "
                     "unstarted claim(s) released")
    return "\n".join(lines)
