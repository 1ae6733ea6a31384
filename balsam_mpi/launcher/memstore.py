"""The store port in memory: for unit tests of the leader's logic, not a database.

:class:`MemStore` keeps tasks, apps, batch jobs and journals in dictionaries and does
what ``launcher/store.py``'s SQL functions do, as far as the leader can see: claims in priority
order (then id) under a job that holds its lease, skipping rows another transaction holds
(:meth:`MemStore.lock`, for SKIP LOCKED), within ``limit``, the node shares of
``capacity`` and the filters; reports fenced on (batch job, epoch, expected state) with
the end kinds' states and retry counters; kills; heartbeats and lease expiry on an
injectable clock; close; journal bookkeeping (keys, ``through``, replays checked by MAC
and order); task adds with parents. Faults are injected by hand: :meth:`MemStore.fail`
(the next calls of a method raise), :attr:`MemStore.down` (the server away),
:attr:`MemStore.poison` (reports the "server" refuses for their data).

What it is not: no roles or row security (every caller is the job's user), no events,
no DAG beyond readying children whose parents all finished, no concurrency beyond one
process, no checks of what a task may hold. Tests of those live in ``tests/db``; the
claim and report semantics here are held to the SQL by the same contract tests there.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ..base.errors import InputError, ServerError
from ..protocol import EndKind, Finished, Started
from . import memleases
from .division import Taker, kind, signature, workflow_set
from .memjournal import JournalsInMemory
from .memrows import Job, Task, requeue, takes
from .storeport import (
    AppExtras,
    BadReport,
    Claimed,
    ClaimFilter,
    Ended,
    Expired,
    Held,
    Lease,
    Peers,
    StorePort,
    Written,
)

RUNNABLE = ("READY", "RESTART_READY")
HELD = (*RUNNABLE, "PREPROCESSED", "RUNNING")  # a claimed row, not finished
HUNGER_FRESH_S = 3.0  # as 0015: a launcher that died hungry stops counting
_DONE, _POST = {0, 5, 6}, {5, 7, 10}
_TIMEOUT, _BAD, _FAILS = {2, 10, 11, 12}, {1, 2, 8, 11}, {6, 9, 12, 15}


class MemStore(JournalsInMemory):
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock  # the "server's" clock (leases, heartbeats)
        self.tasks: dict[int, Task] = {}
        self.apps: dict[str, tuple[str, AppExtras]] = {}  # name -> (command, extras)
        self.jobs: dict[int, Job] = {}
        self.journals: dict[tuple[int, int], dict[str, Any]] = {}
        self.locked: set[int] = set()  # rows another transaction holds (SKIP LOCKED)
        self.poison: set[int] = set()  # ends of these tasks are refused (BadReport)
        self.down = False  # the server away: every call raises ServerError
        self.calls: list[str] = []  # what was called, in order
        self._faults: dict[str, list[BaseException]] = {}
        self.closed = False

    # -- faults and set-up (tests) -------------------------------------------------------
    def fail(self, method: str, exc: BaseException, times: int = 1) -> None:
        """The next ``times`` calls of ``method`` raise ``exc``."""
        self._faults.setdefault(method, []).extend([exc] * times)

    def _enter(self, method: str) -> None:
        self.calls.append(method)
        if self.down:
            raise ServerError("lost the database connection: server closed the connection")
        pending = self._faults.get(method)
        if pending:
            raise pending.pop(0)

    def add_app(self, name: str, command: str = "true", **extras: Any) -> None:
        self.apps[name] = (command, AppExtras(**extras))

    def kill(self, task_id: int) -> None:
        """``balsam-mpi task kill``: USER_KILLED, keeping the claim's batch job."""
        self.tasks[task_id].state = "USER_KILLED"

    # -- the connection ---------------------------------------------------------------
    @property
    def broken(self) -> bool:
        return self.down

    def reconnect(self) -> None:
        self._enter("reconnect")

    def close(self) -> None:
        self.closed = True

    # -- the batch job ----------------------------------------------------------------
    def open_job(self, *, job_id: int | None, scheduler: str, scheduler_job_id: str | None,
                 host: str, nodes: int, ranks: int, filters: ClaimFilter,
                 wall_time_min: float | None, lease_sec: float) -> Lease:
        self._enter("open_job")
        job = self.jobs.get(job_id) if job_id is not None else None
        if job is not None:  # adopted: a new epoch fences the old leader's reports
            memleases.supersede(self, job)
            job.epoch, job.state, job.lease_s = job.epoch + 1, "RUNNING", lease_sec
            job.heartbeat_at = self.clock()
            return Lease(job.id, job.epoch, True)
        new = Job(max(self.jobs, default=0) + 1, 1, lease_sec, self.clock(), filters=filters,
                  nodes=nodes)
        self.jobs[new.id] = new
        return Lease(new.id, 1, False)

    def _holds(self, lease: Lease) -> Job:
        job = self.jobs.get(lease.job_id)
        if job is None or job.epoch != lease.epoch or job.state != "RUNNING":
            raise ServerError(f"lost the database connection: batch job {lease.job_id} "
                              f"(epoch {lease.epoch}) no longer holds its lease")
        return job

    def heartbeat(self, lease: Lease) -> bool:
        self._enter("heartbeat")
        job = self.jobs.get(lease.job_id)
        if job is None or job.epoch != lease.epoch or job.state != "RUNNING":
            return False
        job.heartbeat_at = self.clock()
        return True

    def close_job(self, lease: Lease, state: str, reason: str) -> tuple[int, int]:
        self._enter("close_job")
        released = requeued = 0
        for t in self._mine(lease):
            if t.state in RUNNABLE:
                t.batch_job_id, released = None, released + 1
            elif t.state == "RUNNING":
                self._requeue(t, counted=state == "FAILED",
                              why=("lost: " if state == "FAILED" else "requeued: ") + reason)
                requeued += 1
        job = self.jobs[lease.job_id]
        if job.epoch == lease.epoch and job.state == "RUNNING":
            job.state, job.end_reason = state, reason
        return released, requeued

    def _mine(self, lease: Lease) -> list[Task]:
        return [t for t in self.tasks.values()
                if t.batch_job_id == lease.job_id and t.lease_epoch == lease.epoch]

    _requeue = staticmethod(requeue)

    # -- tasks ------------------------------------------------------------------------
    def claim(self, lease: Lease, *, limit: int, capacity: float, max_need: float,
              filters: ClaimFilter, remaining_min: float | None = None,
              max_nodes: int = 1) -> list[Claimed]:
        self._enter("claim")
        self._holds(lease)
        rows = sorted((t for t in self.tasks.values()
                       if t.state in RUNNABLE and t.batch_job_id is None
                       and t.id not in self.locked and t.num_nodes <= max_nodes
                       and 1.0 / t.node_packing_count <= max_need + 1e-9
                       and (remaining_min is None or t.wall_time_min <= remaining_min)
                       and takes(filters, t)),
                      key=lambda t: (-t.priority, t.id))[:limit]
        out: list[Claimed] = []
        used = 0.0
        for t in rows:  # the prefix whose running sum of shares fits
            used += 1.0 / t.node_packing_count
            if used > capacity + 1e-9:
                break
            t.batch_job_id, t.lease_epoch = lease.job_id, lease.epoch
            command, _extras = self.apps[t.app]
            out.append(Claimed(t.id, t.workflow, t.name, t.state, t.app, command, False, "",
                               json.dumps(t.params), [], "{}", t.num_nodes,
                               t.ranks_per_node, 1, 0, t.node_packing_count,
                               t.wall_time_min, t.priority))
        return out

    def app_extras(self, names: Iterable[str]) -> dict[str, AppExtras]:
        self._enter("app_extras")
        return {n: self.apps[n][1] for n in names if n in self.apps}

    def kills(self, lease: Lease, ids: Iterable[int]) -> list[int]:
        self._enter("kills")
        return [i for i in ids if i not in self.tasks
                or self.tasks[i].batch_job_id != lease.job_id
                or self.tasks[i].state == "USER_KILLED"]

    def add_tasks(self, tasks: Sequence[Mapping[str, Any]]) -> list[int]:
        self._enter("add_tasks")
        for n, spec in enumerate(tasks):
            if spec.get("app") not in self.apps:
                raise InputError(f"task {n + 1}: app: no app named {spec.get('app')!r}")
            for p in spec.get("parents", ()):
                if p not in self.tasks:
                    raise InputError(f"task {n + 1}: parents: no task with id {p}")
        ids = []
        for spec in tasks:
            new = Task(max(self.tasks, default=0) + 1, **dict(spec))
            new.parents = tuple(new.parents)
            if any(self.tasks[p].state != "JOB_FINISHED" for p in new.parents):
                new.state = "AWAITING_PARENTS"
            self.tasks[new.id] = new
            ids.append(new.id)
        return ids

    # -- reports ----------------------------------------------------------------------
    def report(self, lease: Lease, started: Sequence[Started],
               finished: Sequence[Finished], through: int = 0) -> dict[str, int]:
        self._enter("report")
        bad = [f.id for f in finished if f.id in self.poison and f.kind != EndKind.REFUSED]
        if bad or any("\x00" in f.tail for f in finished):
            raise BadReport(f"cannot store the report of task {bad[0] if bad else '?'}")
        journal = self.journals.get((lease.job_id, lease.epoch))
        if journal is not None and through > 0:
            journal["through"] = max(journal["through"], through)
        counts = self._apply(lease, started, finished)
        stored = 0
        for f in finished:
            t = self.tasks.get(f.id)
            if (f.result is not None and f.kind == EndKind.DONE and t is not None
                    and t.state == "JOB_FINISHED" and t.batch_job_id == lease.job_id):
                t.result, stored = f.result, stored + 1
        if any(f.result is not None and f.kind == EndKind.DONE for f in finished):
            counts["results"] = stored
        return counts

    def report_unlocked(self, lease: Lease, started: Sequence[Started],
                        finished: Sequence[Finished], through: int = 0,
                        groups: Sequence[int] = ()) -> Written:
        # No other session holds a row here: everything is written.
        return Written(self.report(lease, started, finished, through))

    def _fenced(self, lease: Lease, task_id: int, *states: str) -> Task | None:
        t = self.tasks.get(task_id)
        if t is None or t.batch_job_id != lease.job_id or t.lease_epoch != lease.epoch:
            return None
        return t if t.state in states else None

    def _apply(self, lease: Lease, started: Sequence[Started],
               finished: Sequence[Finished]) -> dict[str, int]:
        counts: dict[str, int] = {}
        if started:
            n = 0
            for s in started:
                t = self._fenced(lease, s.id, *RUNNABLE, "PREPROCESSED")
                if t is not None:
                    t.state, t.started_at, t.state_message, n = "RUNNING", s.at, "", n + 1
            counts["started"] = n
        if not finished:
            return counts
        ended = 0
        for f in finished:
            kind = EndKind(f.kind)
            want = "READY" if kind == EndKind.PRE_FAILED else "RUNNING"
            t = self._fenced(lease, f.id, want)
            if t is None or kind == EndKind.KILLED:
                continue
            ended += 1
            t.ended_at, t.exit_code = f.ended_at, f.rc
            if kind in (EndKind.PRE_FAILED, EndKind.LOST):
                if kind == EndKind.LOST:
                    self._requeue(t, counted=True, why="lost: " + f.tail)
                else:
                    t.state, t.batch_job_id = "FAILED", None
                continue
            t.started_at = t.started_at or f.started_at
            t.state_message = f.tail if kind == EndKind.REFUSED else t.state_message
            if kind == EndKind.CUT:
                t.state, t.batch_job_id = "RESTART_READY", None
            elif f.kind in _FAILS:
                t.state, t.batch_job_id = "FAILED", None
            elif f.kind in _DONE | _POST:
                t.state = "JOB_FINISHED"
                self._ready_children(t.id)
            elif f.kind in _BAD:
                timeout = f.kind in _TIMEOUT
                tries, limit = ((t.timeout_retries, t.timeout_retry_limit) if timeout
                                else (t.error_retries, t.error_retry_limit))
                t.state = "RESTART_READY" if tries < limit else "FAILED"
                if tries < limit:
                    t.timeout_retries += int(timeout)
                    t.error_retries += int(not timeout)
                t.batch_job_id = None
        counts["ended"] = ended
        return counts

    def _ready_children(self, parent: int) -> None:
        for c in self.tasks.values():
            if c.state == "AWAITING_PARENTS" and parent in c.parents and all(
                    self.tasks[p].state == "JOB_FINISHED" for p in c.parents):
                c.state = "READY"

    # -- other batch jobs, journals -----------------------------------------------------
    def _expired(self, job: Job) -> bool:
        return memleases.expired(self, job)

    def expire_leases(self, job_id: int | None = None) -> list[Expired]:
        self._enter("expire_leases")
        return memleases.expire(self, job_id)

    def end_hogging_sessions(self) -> list[Ended]:
        self._enter("end_hogging_sessions")
        return []  # no server, no shared lock table

    def held_elsewhere(self, lease: Lease, filters: ClaimFilter,
                       max_nodes: int) -> list[Held]:
        self._enter("held_elsewhere")
        return memleases.held_elsewhere(self, lease, filters, max_nodes)

    # -- hand back (0015) -----------------------------------------------------------------
    def _hungry(self, lease: Lease) -> list[Job]:
        """The other live jobs whose hunger is fresh."""
        now = self.clock()
        return [j for j in self.jobs.values()
                if j.state == "RUNNING" and j.id != lease.job_id and j.hungry_at is not None
                and now - j.hungry_at < HUNGER_FRESH_S]

    def _hungry_for(self, lease: Lease, t: Task) -> bool:
        return t.num_nodes == 1 and any(takes(j.filters, t) for j in self._hungry(lease))

    def hunger(self, lease: Lease, *, hungry: bool, holding: bool) -> bool:
        self._enter("hunger")
        job = self.jobs.get(lease.job_id)
        if job is not None and job.epoch == lease.epoch and job.state == "RUNNING":
            job.hungry_at = self.clock() if hungry else None
        if not holding:
            return bool(self._hungry(lease))
        return any(t.state in RUNNABLE and self._hungry_for(lease, t)
                   for t in self._mine(lease))

    def claim_peers(self, lease: Lease) -> Peers:
        self._enter("claim_peers")
        runnable = sorted({t.workflow for t in self.tasks.values()
                           if t.state in RUNNABLE and t.batch_job_id is None})[:65]
        live = sorted((j for j in self.jobs.values()
                       if j.state == "RUNNING" and not self._expired(j)), key=lambda j: j.id)
        named = {w for j in live if j.id != lease.job_id for w in j.filters.workflows}
        if len(live) < 2 or not any(j.filters.workflows or j.filters.owners or j.filters.tags
                                    for j in live):
            return Peers(tuple(runnable), frozenset(named))
        by_owner = any(j.filters.owners for j in live)
        tag_filters = tuple(sorted({tuple(sorted(j.filters.tags)) for j in live
                                    if j.filters.tags}))
        scanned = set(runnable)
        free = [t for t in self.tasks.values() if t.state in RUNNABLE and t.batch_job_id is None
                and t.workflow in scanned]
        counts = Counter(kind(t.workflow, t.owner if by_owner else None,
                              signature(t.tags, tag_filters) if tag_filters else None)
                         for t in free)
        return Peers(tuple(runnable), frozenset(named), dict(sorted(counts.items())),
                     tuple(Taker(j.id, workflow_set(j.filters.workflows), float(j.nodes),
                                 float(sum(1 for t in self.tasks.values()
                                           if t.batch_job_id == j.id and t.state in HELD)),
                                 workflow_set(j.filters.owners),
                                 tag_filters.index(tuple(sorted(j.filters.tags)))
                                 if j.filters.tags else None)
                           for j in live), tag_filters)

    def give_back(self, lease: Lease, ids: Iterable[int]) -> list[int]:
        self._enter("give_back")
        out = []
        for i in ids:
            t = self.tasks.get(i)
            if (t is not None and t.batch_job_id == lease.job_id
                    and t.lease_epoch == lease.epoch and t.state in RUNNABLE
                    and self._hungry_for(lease, t)):
                t.batch_job_id = None
                out.append(i)
        return out


_ADAPTER: type[StorePort] = MemStore  # mypy holds the adapter to the port
