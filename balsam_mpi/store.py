"""The launcher's database operations: open/adopt the batch job, claim, report, heartbeat,
close, and lease expiry (also `balsam-dbctl recover`). Only the leader calls these, over one
autocommit connection; each is one statement calling a SECURITY DEFINER function of
``migrations/0004_launcher.sql`` / ``0005_leases.sql``. Driver errors are translated here
(through ``db.translated``) and nowhere else in the launcher.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from . import db, sql
from .project import Project
from .protocol import EndKind, Finished, Started

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lease:
    """The batch job this leader runs under, and the epoch that fences its reports."""

    job_id: int
    epoch: int
    adopted: bool


class Claimed(NamedTuple):
    """One claimed task, as the claim statement returns it."""

    id: int
    workflow: str
    name: str
    state: str
    app: str
    command: str
    shell: bool
    env_script: str
    params: str  # jsonb as text ('{}' mostly: parsed only when needed)
    args: list[str]
    env: str
    num_nodes: int
    ranks_per_node: int
    threads_per_rank: int
    gpus_per_rank: int
    node_packing_count: int
    wall_time_min: float


class Expired(NamedTuple):
    """A batch job whose lease ran out, marked LOST, and what happened to its tasks."""

    job_id: int
    user: str
    requeued: int  # were running: lost counter +1, runnable again
    failed: int  # were running with the lost counter at its limit
    released: int  # claimed but never started: free again, nothing counted


@dataclass(frozen=True)
class ClaimFilter:
    workflows: tuple[str, ...] = ()
    tags: tuple[tuple[str, str], ...] = ()
    owners: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {"workflows": list(self.workflows), "tags": dict(self.tags),
                "owners": list(self.owners)}


# Numeric arrays go as array literals ('{1,2,3}', cast in the SQL): adapting Python lists
# element by element cost the leader more than the rest of a flush. Only ints and floats
# ever go this way, so the text cannot carry anything but numbers.
def _ints(values: Iterable[int]) -> str:
    return "{" + ",".join(map(str, map(int, values))) + "}"


def _floats(values: Iterable[float]) -> str:
    return "{" + ",".join(map(repr, map(float, values))) + "}"


def _connect(project: Project) -> psycopg.Connection[Any]:
    conn = db.connect(project, autocommit=True, application_name="balsam-launcher")
    # A collaborator's role has a statement_timeout (dbctl/rolelimits.py); a lease sweep or
    # a bulk report over a large DAG is the launcher's own long work, so its connection
    # lifts it. Its lock_timeout stays: a lock held too long fails the flush, which retries.
    with db.translated():
        conn.execute(sql.query("launcher_session"))
    return conn


class Store:
    def __init__(self, conn: psycopg.Connection[Any], project: Project | None = None) -> None:
        self.conn = conn
        self.project = project

    @classmethod
    def connect(cls, project: Project) -> Store:
        return cls(_connect(project), project)

    def reconnect(self) -> None:
        """A fresh connection after the server went away (raises while it is still away)."""
        if self.project is None:
            raise RuntimeError("this store was made without a project; cannot reconnect")
        try:
            self.conn.close()
        finally:
            self.conn = _connect(self.project)

    @property
    def broken(self) -> bool:
        return bool(self.conn.closed or self.conn.broken)

    def close(self) -> None:
        self.conn.close()

    def _rows(self, name: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        with db.translated():
            return self.conn.execute(sql.query(name), params, prepare=True).fetchall()

    def open_job(self, *, job_id: int | None, scheduler: str, scheduler_job_id: str | None,
                 host: str, nodes: int, ranks: int, filters: ClaimFilter,
                 wall_time_min: float | None, lease_sec: float) -> Lease:
        from psycopg.types.json import Jsonb

        row = self._rows("launcher_open_job", {
            "job_id": job_id, "scheduler": scheduler, "scheduler_job_id": scheduler_job_id,
            "host": host, "nodes": nodes, "ranks": ranks,
            "filters": Jsonb(filters.as_json()), "wall_time_min": wall_time_min,
            "lease_sec": lease_sec})[0]
        return Lease(int(row[0]), int(row[1]), bool(row[2]))

    def claim(self, lease: Lease, *, limit: int, capacity: float, max_need: float,
              filters: ClaimFilter, remaining_min: float | None = None,
              max_nodes: int = 1) -> list[Claimed]:
        from psycopg.types.json import Jsonb

        rows = self._rows("launcher_claim", {
            "job": lease.job_id, "epoch": lease.epoch, "limit": limit,
            "capacity": capacity, "max_need": max_need,
            "workflows": list(filters.workflows) or None,
            "tags": Jsonb(dict(filters.tags)) if filters.tags else None,
            "owners": list(filters.owners) or None,
            "remaining_min": remaining_min, "max_nodes": max_nodes})
        claimed = [Claimed(*r) for r in rows]
        claimed.sort(key=lambda c: c.id)  # RETURNING order is not guaranteed
        return claimed

    def report(self, lease: Lease, started: Sequence[Started],
               finished: Sequence[Finished]) -> dict[str, int]:
        """Write a batch of node reports; returns rows changed per step."""
        ends = [f for f in finished if f.kind != EndKind.KILLED]  # already USER_KILLED
        # Transposed with zip (in C): one pass per column instead of a Python loop each.
        s_ids, _s_epochs, s_at = zip(*started, strict=True) if started else ((), (), ())
        f_ids, _f_epochs, f_kind, f_rc, f_started, f_ended, f_tail = (
            zip(*ends, strict=True) if ends else ((),) * 7)
        rows = self._rows("launcher_report", {
            "job": lease.job_id, "epoch": lease.epoch,
            "s_ids": _ints(s_ids), "s_at": _floats(s_at),
            "f_ids": _ints(f_ids), "f_kind": _ints(f_kind), "f_rc": _ints(f_rc),
            "f_started": _floats(f_started), "f_ended": _floats(f_ended),
            "f_tail": list(f_tail)})
        return {str(step): int(n) for step, n in rows}

    def heartbeat(self, lease: Lease) -> bool:
        rows = self._rows("launcher_heartbeat", {"job": lease.job_id, "epoch": lease.epoch})
        return bool(rows[0][0])

    def kills(self, lease: Lease, ids: Iterable[int]) -> list[int]:
        """Which of these tasks (claimed by this batch job) were killed meanwhile."""
        rows = self._rows("launcher_kills", {"job": lease.job_id, "ids": _ints(ids)})
        return [int(r[0]) for r in rows]

    def close_job(self, lease: Lease, state: str, reason: str) -> tuple[int, int]:
        row = self._rows("launcher_close_job", {"job": lease.job_id, "epoch": lease.epoch,
                                                "state": state, "reason": reason})[0]
        return int(row[0]), int(row[1])

    def expire_leases(self, job_id: int | None = None) -> list[Expired]:
        """Mark batch jobs whose lease ran out LOST and requeue their tasks (any member
        may: only expired leases are touched). ``job_id`` limits it to that job."""
        rows = self._rows("launcher_expire_leases", {"job": job_id})
        return [Expired(int(r[0]), str(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in rows]
