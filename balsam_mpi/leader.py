"""Rank 0: the only process that talks to Postgres.

One loop, never blocking: serve worker messages (every REPORT is answered at once with an
ASSIGN, maybe empty), run the in-process local node, claim what the nodes can start soon
(``claims.py``), push claimed tasks to nodes with room, flush buffered reports in bulk (on
size or age), heartbeat, watch that every worker still answers (``liveness.py``), and
notice idleness. When nothing is left for this launcher's filters it drains the workers,
writes what it holds and closes its batch job — still in a loop that heartbeats, so a
slow or failing final write never lets the lease run out unnoticed. Waiting sleeps in
``epoll`` on the local tasks with a capped backoff, so an idle leader costs a fraction of
a percent of a core.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future

from .adds import AddService
from .buffer import Batch, DbThread, ReportBuffer
from .claims import Claims
from .cleantext import one_line
from .comm import Backoff, Comm
from .config import Settings
from .dispatch import Dispatcher
from .errors import BalsamError
from .journal import Journal
from .lease import LeaseWatch
from .liveness import WorkerWatch
from .node import Node
from .orders import OrderBuilder
from .project import Project
from .protocol import (
    PROTOCOL_VERSION,
    AddTasks,
    Assign,
    Bye,
    Drain,
    EndKind,
    ErrorMsg,
    Finished,
    Hello,
    Report,
    Started,
)
from .resources import WorkerView
from .store import ClaimFilter, Lease

log = logging.getLogger(__name__)


class WorkerFailed(BalsamError):
    """A worker rank reported an unhandled error; the launcher aborts."""


class Leader:
    def __init__(self, settings: Settings, comm: Comm | None, project: Project,
                 db: DbThread, lease: Lease, local: Node,
                 deadline: float | None = None, journal: Journal | None = None) -> None:
        self.s = settings
        self.comm = comm
        self.project = project
        self.db = db
        self.store = db.store
        self.lease = lease
        self.local = local
        local.wake_on(db.wake_fd)
        self.deadline = deadline  # wall-clock end of this launcher's time, if any
        self.filters = ClaimFilter(settings.workflows, settings.tags, settings.owners)
        self.expected = (comm.size - 1) if comm else 0
        self.nodes = Dispatcher(settings, local, self._send)
        self.workers = self.nodes.workers
        self.kills = self.nodes.kills
        self.journal = journal
        self.buffer = ReportBuffer(lease, settings.flush_size, settings.flush_interval_s,
                                   journal)
        self.flushing: tuple[Batch, Future[dict[str, int]]] | None = None
        self.beating: Future[bool] | None = None
        self.flushes = 0  # flushes submitted that carried ends (children may be READY)
        self.claims = Claims(self)
        self.idle_since: float | None = None
        self.draining: str | None = None
        self.byes: set[int] = set()
        self.next_heartbeat = time.monotonic() + settings.heartbeat_s
        self.lease_lost = False
        self.first_start: float | None = None
        self.stop_reason: str | None = None  # set by a signal handler
        self.orders = OrderBuilder(project, lease.epoch)
        # Tasks that running tasks add (task_api), written through this connection.
        self.adds = AddService(db, project, self.nodes, local, not settings.null_runner)
        self.killing: Future[list[int]] | None = None
        self.lease_watch = LeaseWatch(settings, db, project.log_dir)
        self.watch = WorkerWatch(self.expected, settings.worker_timeout_s)
        self.dead: set[int] = set()  # worker ranks declared dead
        self.next_liveness = 0.0

    @property
    def claimed_total(self) -> int:
        return self.claims.total

    # -- messages ---------------------------------------------------------------------
    def handle(self, source: int, msg: object) -> None:
        if source in self.dead:
            # Declared dead, then woke up: what it says now is about tasks already
            # written as lost or handed to other nodes; its DRAIN is on its way.
            if isinstance(msg, (Bye, ErrorMsg)):
                self.byes.add(source)
            return
        self.watch.heard_from(source)
        if isinstance(msg, Report):
            self.on_report(source, msg)
        elif isinstance(msg, Hello):
            if msg.version != PROTOCOL_VERSION:
                raise WorkerFailed(f"rank {source} on {msg.host} speaks protocol "
                                   f"{msg.version}, this leader {PROTOCOL_VERSION}: install "
                                   "the same balsam_mpi on every node")
            self.workers[source] = WorkerView(source, host=msg.host)
            log.info("rank %s on %s (pid %s) joined", source, msg.host, msg.pid)
            if self.draining:
                self._send(source, Drain(self.draining, self.s.drain_grace_s))
                self.workers[source].draining = True
        elif isinstance(msg, Bye):
            self._absorb(msg.report.started, msg.report.finished)
            view = self.workers.setdefault(source, WorkerView(source))
            view.alive = False
            self.byes.add(source)
        elif isinstance(msg, AddTasks):
            self.adds.received(msg)
        elif isinstance(msg, ErrorMsg):
            if msg.report is not None:
                self._absorb(msg.report.started, msg.report.finished)
            log.critical("rank %s on %s failed:\n%s", msg.rank, msg.host, msg.traceback)
            raise WorkerFailed(f"rank {msg.rank} on {msg.host} failed (traceback in the log)")
        else:
            raise TypeError(f"unexpected {type(msg).__name__} from rank {source}")

    def on_report(self, source: int, msg: Report) -> None:
        self._absorb(msg.started, msg.finished)
        view = self.nodes.reported(source, msg)
        self.claims.refill()
        self.nodes.fill_local(margin=False)  # a free slot here before a queue there
        self.nodes.assign_to(view, always=True)

    def _absorb(self, started: tuple[Started, ...], finished: tuple[Finished, ...]) -> None:
        if started:
            if self.first_start is None:
                self.first_start = min(s.at for s in started)
            self.kills.began(s.id for s in started)
        self.buffer.add(started, finished)
        if finished:
            self.idle_since = None
            self.kills.ended(f.id for f in finished)
            self.nodes.ended(finished)  # multi-node tasks: free their other nodes

    def _send(self, rank: int, msg: Assign | Drain) -> None:
        assert self.comm is not None
        self.comm.send(rank, msg)

    def remaining_min(self) -> float | None:
        if self.deadline is None:
            return None
        return max(0.0, (self.deadline - time.time()) / 60.0)

    # -- workers that stopped answering -------------------------------------------------
    def _check_workers(self) -> None:
        # A few times a second is plenty (the timeout is several report intervals), and
        # keeps a pass over thousands of ranks out of every turn of the loop.
        now = time.monotonic()
        if not self.expected or now < self.next_liveness:
            return
        self.next_liveness = now + min(0.25, self.s.report_interval_s / 2)
        for rank, why in self.watch.check(self.byes, now):
            view = self.workers.get(rank)
            host = view.host if view is not None and view.host else "?"
            reason = f"worker rank {rank} on {host} stopped answering ({why})"
            self.dead.add(rank)
            self.byes.add(rank)
            lost, requeued = self.nodes.bury(rank, reason)
            t = time.time()
            self.buffer.add((), [Finished(i, self.lease.epoch, int(EndKind.LOST), -1, t, t,
                                          one_line(reason)) for i in lost])
            if lost:
                self.idle_since = None
            log.error("%s: declared dead; %s running task(s) written as lost, %s queued "
                      "one(s) handed to other nodes", reason, len(lost), requeued)

    # -- database results -------------------------------------------------------------
    def flush(self) -> None:
        if self.flushing is None and self.buffer.due():
            batch = self.buffer.take()
            if batch.finished:
                self.flushes += 1
            self.flushing = (batch, self.db.submit(self.buffer.write, self.store, batch))

    def collect(self) -> bool:
        """Take in finished database calls; True if any."""
        did = False
        if self.flushing is not None and self.flushing[1].done():
            batch, future = self.flushing
            self.flushing = None
            did = True
            try:
                self.buffer.written(batch, future.result())
            except BalsamError as exc:
                self.buffer.failed(batch, exc)
            else:
                if batch.finished:
                    self.claims.next_at = 0.0  # children may have become READY
        if self.claims.collect():
            did = True
        if self.killing is not None and self.killing.done():
            poll, self.killing = self.killing, None
            try:
                self._send_kills(poll.result())
            except BalsamError as exc:
                log.warning("could not look for killed tasks (%s); will retry", exc)
        if self.beating is not None and self.beating.done():
            beat, self.beating = self.beating, None
            try:
                alive = beat.result()
            except BalsamError as exc:
                log.warning("heartbeat failed (%s); will retry", exc)
            else:
                if not alive and not self.lease_lost:
                    self.lease_lost = True
                    log.error("batch job %s lost its lease; stopping its tasks",
                              self.lease.job_id)
                    self.start_drain("lease lost", cut=True)
        return did

    # -- the loop ---------------------------------------------------------------------
    def run(self) -> str:
        """Serve until idle (or stopped); returns the reason the launcher ended."""
        backoff = Backoff(first=0.001, cap=self.s.leader_poll_cap_s)
        while True:
            if self.stop_reason and not self.draining:  # set by a signal handler
                self.start_drain(self.stop_reason, cut=True)
            did = self._poll_messages()
            if self.local.step():
                did = True
            if self.local.changes:
                self._absorb(*self.local.changes.take())
            if self.adds.step():
                did = True
            if self.collect():
                did = True
            self._check_workers()
            self.nodes.fill_local()
            self.claims.refill()
            self.flush()
            self._poll_kills()
            self.heartbeat()
            self._watch_lease()
            if self._check_end():
                return self.draining or "done"
            if did:
                backoff.reset()
            else:
                if self.comm is not None:
                    self.comm.progress()
                self.local.wait(backoff.next())

    def _poll_messages(self) -> bool:
        if self.comm is None:
            return False
        did = False
        for _ in range(512):
            got = self.comm.poll()
            if got is None:
                break
            self.handle(*got)
            did = True
        return did

    def _poll_kills(self) -> None:
        if self.killing is None and self.kills.due():
            self.killing = self.db.submit(self.store.kills, self.lease,
                                          self.kills.candidates())

    def _send_kills(self, killed: list[int]) -> None:
        if killed:
            log.info("stopping %s killed task(s)", self.nodes.kill(killed))

    def heartbeat(self) -> None:
        now = time.monotonic()
        if now < self.next_heartbeat:
            return
        self.next_heartbeat = now + self.s.heartbeat_s
        if self.beating is None:
            self.beating = self.db.submit(self.lease_watch.heartbeat, self.lease,
                                          urgent=True)

    def _watch_lease(self) -> None:
        """Requeue other jobs' expired leases now and then; stop this leader's tasks
        once it has gone half its lease without renewing it (lease.py)."""
        if self.draining:
            return
        silent = self.lease_watch.silent_for()
        if silent is not None:
            log.error("no heartbeat for %.0f s, half the %g s lease: stopping this "
                      "launcher's tasks before others may requeue them", silent,
                      self.s.lease_s)
            self.start_drain(f"no heartbeat for {silent:.0f} s", cut=True)
            return
        self.lease_watch.sweep()

    def start_drain(self, reason: str, cut: bool = False) -> None:
        if self.draining:
            return
        self.draining = reason
        self.nodes.local_open = False
        self.local.begin_stop(cut=cut)
        log.info("draining: %s", reason)
        for view in self.workers.values():
            if view.alive:
                view.draining = True
                self._send(view.rank, Drain(reason, self.s.drain_grace_s, cut))
        if cut:
            # Every rank cuts at once: SIGTERM, SIGKILL after the kill grace, then BYE.
            self.watch.drain_started(self.s.kill_grace_s)
            self.local.cut_all()
            # Claimed but never assigned: give them back (the close releases them too).
            self.nodes.pool.clear()

    def _check_end(self) -> bool:
        if self.stop_reason and not self.draining:
            self.start_drain(self.stop_reason, cut=True)
        if self.draining:
            workers_done = all(not v.alive for v in self.workers.values()) and (
                len(self.byes) >= self.expected)
            return workers_done and not self.local.busy() and not self.local.changes
        if self.deadline is not None and time.time() >= self.deadline - self.s.drain_grace_s:
            self.start_drain("wall time", cut=True)
            return False
        if not self.nodes.all_idle() or self.buffer or self.flushing is not None:
            self.idle_since = None
            return False
        if self.claims.in_flight:
            return False  # wait for its answer (it does not end the idle time)
        if self.s.max_tasks and self.claims.total >= self.s.max_tasks:
            self.start_drain("max tasks")
            return False
        # Idle: the last claim, sent after the last flush of ended tasks (whose children
        # may have become runnable), found nothing, and no dead job holds work for us.
        if self.claims.last_empty and self.claims.covers == self.flushes:
            now = time.monotonic()
            if self.idle_since is None:
                self.idle_since = now
            if not self.s.persistent and now - self.idle_since >= self.s.idle_timeout_s:
                self.start_drain("idle")
        return False

    def settle(self) -> None:
        """Wait for the database calls in flight and take in their results."""
        if self.flushing is not None:
            self.flushing[1].exception()
        if self.claims.future is not None:
            self.claims.future[1].exception()
        for other in (self.beating, self.killing):
            if other is not None:
                other.exception()
        self.lease_watch.settle()
        self.collect()

    def finish(self, reason: str) -> bool:
        """Write everything held and close the batch job; True once it is closed. Runs as
        a loop that keeps heartbeating: a write that fails (the database away) is retried
        while the lease can be held, and given up (the journal keeps it) once it cannot."""
        from .closing import close_out

        return close_out(self, reason)
