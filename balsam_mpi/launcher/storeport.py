"""The launcher's store port: every database call the leader makes, as one protocol.

The leader, its report buffer, its add service, its app cache, its lease watch, its
claims and its close talk to a :class:`StorePort`, never to a connection. Two adapters
implement it: ``launcher/store.py`` (PostgreSQL: each method one statement calling a SECURITY
DEFINER function, the real thing) and ``launcher/memstore.py`` (in memory, for unit tests of the
leader's logic without a server; it is not the database and promises nothing the
database does not). The records that cross the port are defined here, once.

Every method may raise :class:`~balsam_mpi.base.errors.ServerError` (the server away: retry
later) or another :class:`~balsam_mpi.base.errors.BalsamError`; ``report`` raises
:class:`BadReport` when the server refuses a batch for what it carries.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from ..base.errors import DatabaseError
from ..protocol import Finished, Started
from .division import TagFilter, Taker


@dataclass(frozen=True)
class Lease:
    """The batch job this leader runs under, and the epoch that fences its reports."""

    job_id: int
    epoch: int
    adopted: bool


@dataclass(frozen=True)
class ClaimFilter:
    workflows: tuple[str, ...] = ()
    tags: tuple[tuple[str, str], ...] = ()
    owners: tuple[str, ...] = ()
    # A planned claim's tag filters that no row it takes may match (division.sig_filters):
    # another launcher's share. Never part of a launcher's own filters (as_json).
    not_tags: tuple[tuple[tuple[str, str], ...], ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {"workflows": list(self.workflows), "tags": dict(self.tags),
                "owners": list(self.owners)}


class Claimed(NamedTuple):
    """One claimed task, as the claim returns it."""

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
    priority: int = 0
    input_files: list[str] | None = None
    parents: str | None = None  # jsonb text: [[workflow, id, name], ...] (input_files only)


class AppExtras(NamedTuple):
    """What the claim does not bring about an app: its pre/postprocess scripts and, for
    a Python app, its import path and whether its calls get directories of their own
    (docs/mpi-tasks.md, docs/python-tasks.md)."""

    preprocess: str = ""
    postprocess: str = ""
    on_error: bool = False
    on_timeout: bool = False
    python: str = ""
    task_dirs: bool = True


class Held(NamedTuple):
    """Work another running batch job holds that this launcher's filters match."""

    job_id: int
    tasks: int  # 1: it holds some (not counted, to keep the question cheap)
    heartbeat_at: float  # epoch seconds, the server's clock
    silent_s: float  # since that heartbeat
    lease_s: float
    queued: bool = False  # some of it single-node and unstarted there: it may hand it back

    @property
    def overdue(self) -> bool:
        """A live leader beats at least every half lease: this one has probably died."""
        return self.silent_s > self.lease_s / 2


class Ended(NamedTuple):
    """A collaborator's session the database ended for filling a shared structure of the
    server (migration 0031): ``reason`` is ``locks`` or ``notifications``."""

    pid: int
    user: str
    reason: str
    held: int  # its entries in the lock table


class Expired(NamedTuple):
    """A batch job whose lease ran out, marked LOST, and what happened to its tasks; or,
    ``superseded``, a job started again whose earlier run's tasks were requeued once that
    run's lease ran out (the job itself stays as it is)."""

    job_id: int
    user: str
    requeued: int  # were running: lost counter +1, runnable again
    failed: int  # were running with the lost counter at its limit
    released: int  # claimed but never started: free again, nothing counted
    superseded: bool = False


class Peers(NamedTuple):
    """What the claim preference reads (launcher/preference.py)."""

    runnable: tuple[str, ...]  # workflows with runnable, unclaimed rows (at most 65)
    named: frozenset[str]  # workflows other live launchers name in their filters
    # Only while more than one launcher is live and one has a workflow, an owner or a tag
    # filter (else empty): each runnable workflow's rows (per workflow, owner and tag
    # signature, keyed by division.kind, while one has an owner or a tag filter), counted
    # up to a cap, and every live launcher, this one included, as the division sees it
    # (launcher/division.py); the live launchers' distinct tag filters, in the order of a
    # signature's digits.
    counts: Mapping[str, int] = {}
    takers: tuple[Taker, ...] = ()
    tag_filters: tuple[TagFilter, ...] = ()


class Written(NamedTuple):
    """What a flush wrote (``StorePort.report_unlocked``): rows changed per step, and the
    reported tasks whose rows another session held locked — none of their reports was
    written; the caller keeps them, in order, for its next flush."""

    counts: dict[str, int]
    deferred: frozenset[int] = frozenset()


class BadReport(DatabaseError):
    """The server (or the driver) refused a report for what it carries: a value it cannot
    store. Retrying the same rows fails the same way; connection trouble is not this."""


class StorePort(Protocol):
    # -- the connection ---------------------------------------------------------------
    @property
    def broken(self) -> bool: ...

    def reconnect(self) -> None: ...

    def close(self) -> None: ...

    # -- the batch job ----------------------------------------------------------------
    def open_job(self, *, job_id: int | None, scheduler: str, scheduler_job_id: str | None,
                 host: str, nodes: int, ranks: int, filters: ClaimFilter,
                 wall_time_min: float | None, lease_sec: float) -> Lease: ...

    def heartbeat(self, lease: Lease) -> bool:
        """Renew the lease; False when the row is no longer this leader's."""

    def close_job(self, lease: Lease, state: str, reason: str) -> tuple[int, int]:
        """(claims released, running tasks requeued)."""

    def hunger(self, lease: Lease, *, hungry: bool, holding: bool) -> bool:
        """Record whether this launcher is hungry (its claims find less than its free
        slots); with ``holding``, is another live launcher hungry for a task this one
        holds claimed and unstarted; without, is another hungry at all
        (launcher/giveback.py)?"""

    # -- tasks ------------------------------------------------------------------------
    def claim(self, lease: Lease, *, limit: int, capacity: float, max_need: float,
              filters: ClaimFilter, remaining_min: float | None = None,
              max_nodes: int = 1) -> list[Claimed]:
        """Up to ``limit`` runnable unclaimed tasks, priority first, whose node shares
        fit ``capacity``; in the claim's order."""

    def claim_peers(self, lease: Lease) -> Peers:
        """Workflows with runnable rows, and those other live launchers' filters name."""

    def give_back(self, lease: Lease, ids: Iterable[int]) -> list[int]:
        """Release those of these claimed, unstarted tasks that a hungry launcher's
        filters take; the ids released."""

    def app_extras(self, names: Iterable[str]) -> dict[str, AppExtras]:
        """The extras of these apps (apps without any may be left out)."""

    def report(self, lease: Lease, started: Sequence[Started],
               finished: Sequence[Finished], through: int = 0) -> dict[str, int]:
        """Write node reports (and Python results), fenced on (batch job, epoch, expected
        state); rows changed per step. ``through``: the journal group this completes."""

    def report_unlocked(self, lease: Lease, started: Sequence[Started],
                        finished: Sequence[Finished], through: int = 0,
                        groups: Sequence[int] = ()) -> Written:
        """As :meth:`report`, but never waiting on a row another session holds (a
        member's bulk kill or retry): every report of such a task is left out and named
        in ``Written.deferred``. ``groups``: the journal group of each report, starts
        then ends; the journal's mark stops before the first report left out."""

    def kills(self, lease: Lease, ids: Iterable[int]) -> list[int]:
        """Which of these tasks were killed, deleted or taken from this batch job."""

    def add_tasks(self, tasks: Sequence[Mapping[str, Any]]) -> list[int]:
        """Add tasks (a running task's ``task_api`` request), one transaction; their ids."""

    # -- other batch jobs, journals -----------------------------------------------------
    def expire_leases(self, job_id: int | None = None) -> list[Expired]: ...

    def end_hogging_sessions(self) -> list[Ended]: ...

    def held_elsewhere(self, lease: Lease, filters: ClaimFilter,
                       max_nodes: int) -> list[Held]: ...

    def journal_key(self, lease: Lease) -> bytes: ...

    def journal_done(self, lease: Lease) -> None: ...

    def journals_due(self) -> list[tuple[int, int, str, int]]:
        """(job, epoch, job's user, lines replayed so far) of journals to replay."""

    def replay(self, job_id: int, epoch: int, lines: Sequence[str],
               macs: Sequence[str]) -> dict[str, int]: ...
