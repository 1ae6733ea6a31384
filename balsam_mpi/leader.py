"""Rank 0: the only process that talks to Postgres.

One loop, never blocking. Each turn: serve worker messages (every REPORT is answered at
once with an ASSIGN, maybe empty), take in the database calls that finished (``launcher/calls.py``:
each runs its callback here, on this thread), account for the workers that left or stopped
answering (``launcher/departures.py``), place claimed tasks (``launcher/dispatch.py``: the leader's own node first),
step the in-process local node (the one place it is driven), then start what is due in
the background: a claim for what the nodes can start soon (``launcher/claims.py``), a flush of
buffered reports (``launcher/reports.py``), the kill poll (``launcher/kills.py``), the heartbeat and the
sweep of other jobs' leases (``launcher/lease.py``). When nothing is left for this launcher's
filters it drains the workers, writes what it holds and closes its batch job
(``launcher/closing.py``) — still in a loop that heartbeats, so a slow or failing final write
never lets the lease run out unnoticed. Waiting sleeps in ``epoll`` on the local tasks
and the database thread's eventfd with a capped backoff, so an idle leader costs a
fraction of a percent of a core.

Every database call goes through the store port (``launcher/storeport.py``), so this loop runs
as well over the in-memory store of the unit tests as over PostgreSQL.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from .base.pacing import Backoff, Periodic
from .base.project import Project
from .launcher.adds import AddService
from .launcher.calls import Calls
from .launcher.claims import Claims
from .launcher.closing import Closing
from .launcher.comm import Comm
from .launcher.config import Settings
from .launcher.departures import Departures
from .launcher.dispatch import Dispatcher
from .launcher.giveback import GiveBack
from .launcher.journal import Journal
from .launcher.lease import LeaseWatch
from .launcher.orders import ClaimResult, OrderBuilder
from .launcher.preference import Preference
from .launcher.reports import ReportBuffer
from .launcher.storeport import ClaimFilter, Lease, StorePort
from .launcher.watchdog import Watchdog
from .launcher.workerview import WorkerView
from .node.channel import TaskChannel
from .node.node import Node
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
    RemoteTraceback,
    Report,
    Started,
    WorkerFailed,
)

log = logging.getLogger(__name__)

# The heartbeat's period at most while this launcher holds tasks: a launcher whose claims
# find nothing waits to see it renew before it ends (claims.py), so this is the most such
# a launcher idles at the end of the work. One small UPDATE a beat. At 0.5 s, in 5
# launchers' runs, a finished launcher idled 0.09 s on average before its job closed
# (at most 0.39 s); at 0.1 s, 0.05 s (at most 0.16): docs/launcher.md, *Leases*.
HOLDER_BEAT_S = 0.1


class Leader:
    def __init__(self, settings: Settings, comm: Comm | None, project: Project,
                 store: StorePort, calls: Calls, lease: Lease, local: Node, *,
                 deadline: float | None = None, journal: Journal | None = None,
                 chan: TaskChannel | None = None,
                 claim_store: StorePort | None = None,
                 watchdog: Watchdog | None = None) -> None:
        s = self.settings = settings
        self.comm = comm
        self.store = store
        self.calls = calls
        self.lease = lease
        self.local = local
        if calls.wake_fd >= 0:
            local.procs.wake_on(calls.wake_fd)  # a finished call wakes the loop
        self.deadline = deadline  # wall-clock end of this launcher's time, if any
        self.expected = (comm.size - 1) if comm else 0
        self.journal = journal
        self.dispatch = Dispatcher(local, self._send, margin=s.claim_margin,
                                   margin_max=s.claim_margin_max,
                                   horizon_s=s.claim_horizon_s, kill_poll_s=s.kill_poll_s)
        self.workers = self.dispatch.workers
        self.kills = self.dispatch.kills
        self.buffer = ReportBuffer(lease, store, calls, size=s.flush_size,
                                   interval_s=s.flush_interval_s, journal=journal)
        filters = ClaimFilter(s.workflows, s.tags, s.owners)
        self.claims = Claims(
            calls, store, lease, OrderBuilder(project, lease.epoch), self.dispatch,
            self.buffer, self._claimed, filters=filters, limit=s.claim_limit,
            max_tasks=s.max_tasks, idle_s=s.claim_idle_s, look_for_held=not s.persistent,
            remaining_min=self.remaining_min,
            preference=Preference(calls, store, lease, filters), claim_store=claim_store)
        self.buffer.on_ends_written = self.claims.soon  # children may have become READY
        self.claims.warm()
        self.giveback = GiveBack(calls, store, lease, self.dispatch)
        self.adds = AddService(calls, store, self.dispatch.answer_adds, chan)
        self.lease_watch = LeaseWatch(
            calls, store, lease, lease_s=s.lease_s, heartbeat_s=s.heartbeat_s,
            expire_check_s=s.expire_check_s, log_dir=project.log_dir,
            on_lost=lambda: self.start_drain("lease lost", cut=True),
            on_beat=watchdog.beat if watchdog is not None else lambda _at: None,
            beat_store=claim_store)
        self.watchdog = watchdog  # cuts the local tasks should this loop freeze
        if watchdog is not None:
            watchdog.beat(self.lease_watch.last_beat)
        self.departures = Departures(
            self.expected, self.dispatch, self.buffer, lease.epoch,
            worker_timeout_s=s.worker_timeout_s, report_interval_s=s.report_interval_s,
            on_lost=self._not_idle)
        self.liveness = self.departures.liveness
        # Recalls of queued tasks to free slots (dispatch.rebalance) when work runs out:
        # often enough for a tail of short tasks, rare enough for thousands of ranks.
        self.rebalances = Periodic(0.02, now=True)
        self.holder_beats = Periodic(HOLDER_BEAT_S, jitter=0.0)
        self.idle_checks = Periodic(0.01, jitter=0.0)
        self.idle_since: float | None = None
        self.draining: str | None = None
        self.byes = self.departures.byes  # said BYE, or not waited for
        self.dead = self.departures.dead  # declared dead: not listened to
        self.first_start: float | None = None
        self.stop_reason: str | None = None  # set by a signal handler
        self.ended: str | None = None  # why the loop ended, once it has

    def remaining_min(self) -> float | None:
        if self.deadline is None:
            return None
        return max(0.0, (self.deadline - time.time()) / 60.0)

    # -- the loop ---------------------------------------------------------------------
    def run(self) -> str:
        """Serve until idle (or stopped); returns the reason the launcher ended."""
        idle = Backoff(0.001, self.settings.leader_poll_cap_s)
        while True:
            did = self.turn()
            if self.ended is not None:
                return self.ended
            if did:
                idle.reset()
            else:
                if self.comm is not None:
                    self.comm.progress()
                self.local.wait(idle.next())

    def turn(self) -> bool:
        """One turn of the loop; True if anything happened. Sets :attr:`ended` (the
        reason) once everything has drained."""
        if self._watchdog_cut():
            self.start_drain("this loop was frozen: its watchdog cut this node's tasks",
                             cut=True)
        if self.stop_reason and not self.draining:  # set by a signal handler
            self.start_drain(self.stop_reason, cut=True)
        did = self._poll_messages()
        did = self.adds.step() or did
        did = self.calls.collect() or did
        self.departures.check(self.comm.gone if self.comm is not None else {})
        if not self.draining and self.dispatch.scarce and self.rebalances.due():
            self.dispatch.rebalance()
        if not self.draining:
            self.giveback.step()  # queued tasks another launcher could start now
            if self.claims.preference is not None:
                self.claims.preference.step()  # what to claim first (preference.py)
        self.dispatch.fill_local()
        did = self._step_local() or did
        if not self.draining:
            self.claims.refill()
        if not self.buffer.flush() and self.buffer and self.idle_checks.due():
            # Nothing runs anywhere (the end of a run): the batch will not grow, write it
            # now rather than after the flush interval. A pass over every worker, so
            # at most every 10 ms.
            self.buffer.flush(idle=self.dispatch.all_idle())
        self._poll_kills()
        if (self.kills.where and not self.lease_watch.failing
                and not self.calls.busy("heartbeat") and self.holder_beats.due()):
            # Other launchers whose claims find nothing wait to see every job that holds
            # work their filters match renew its heartbeat before they end (claims.py):
            # while this one holds tasks, renew often, so they end soon after their work.
            # Only while heartbeats succeed: from the first that fails, the usual period
            # stands (no flood of failing calls ahead of the writes that wait, nor of
            # warnings: gating on the silence let ten a second through for heartbeat_s).
            self.lease_watch.beats.soon()
        self.lease_watch.heartbeat()
        self._watch_lease()
        if self._check_end():
            self.ended = self.draining or "done"
        return did

    def _watchdog_cut(self) -> bool:
        """The watchdog cut this node's tasks while this loop was frozen (said once, in
        the first turn after: the node holds their deaths until then, node/deaths.py)."""
        ago = self.watchdog.newly_cut() if self.watchdog is not None else None
        if ago is None:
            return False
        log.error("this loop was frozen: the watchdog cut this node's tasks %.1f s ago "
                  "(launcher/watchdog.py)", ago)
        return True

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

    def _step_local(self) -> bool:
        """The leader's own node: start what was queued, notice exits, take its news."""
        did = self.local.step()
        if self.local.changes:
            self._absorb(*self.local.changes.take())
        return did

    # -- messages ---------------------------------------------------------------------
    def handle(self, source: int, msg: object) -> None:
        if source in self.dead:
            # Declared dead, then woke up: what it says now is about tasks already
            # written as lost or handed to other nodes; its DRAIN is on its way.
            if isinstance(msg, (Bye, ErrorMsg)):
                self.byes.add(source)
            return
        self.liveness.heard_from(source)
        if isinstance(msg, Report):
            self._absorb(msg.started, msg.finished)
            view = self.dispatch.reported(source, msg)
            back = self.dispatch.took_back(source, msg.returned, msg.acked) if (
                msg.returned or self.dispatch.recall_seq) else 0
            if not self.draining:
                self.claims.refill()
            self.dispatch.fill_local(margin=False)  # a free slot here before a queue there
            self.dispatch.assign_to(view, always=True)
            if back and not self.draining:
                self.dispatch.push()  # given back: to the nodes with free slots
        elif isinstance(msg, Hello):
            self._hello(source, msg)
        elif isinstance(msg, Bye):
            self._absorb(msg.report.started, msg.report.finished)
            view = self.workers.setdefault(source, WorkerView(source))
            view.alive = False
            self.departures.said_bye(source)
        elif isinstance(msg, AddTasks):
            self.adds.received(msg)
        elif isinstance(msg, ErrorMsg):
            if msg.report is not None:
                self._absorb(msg.report.started, msg.report.finished)
            log.critical("rank %s on %s failed (%s):\n%s", msg.rank, msg.host, msg.exc_type,
                         msg.traceback)
            raise WorkerFailed.of(msg) from RemoteTraceback.of(msg)
        else:
            raise TypeError(f"unexpected {type(msg).__name__} from rank {source}")

    def _hello(self, source: int, msg: Hello) -> None:
        if msg.version != PROTOCOL_VERSION:
            raise WorkerFailed(f"rank {source} on {msg.host} speaks protocol {msg.version}, "
                               f"this leader {PROTOCOL_VERSION}: install the same "
                               "balsam_mpi on every node")
        self.workers[source] = WorkerView(source, host=msg.host)
        log.info("rank %s on %s (pid %s) joined", source, msg.host, msg.pid)
        if self.draining:
            self._send(source, Drain(self.draining, self.settings.drain_grace_s))
            self.workers[source].draining = True

    def _absorb(self, started: Iterable[Started], finished: Iterable[Finished]) -> None:
        started, finished = tuple(started), tuple(finished)
        if started:
            if self.first_start is None:
                self.first_start = min(s.at for s in started)
            self.kills.began(s.id for s in started)
        self.buffer.add(started, finished)
        if finished:
            self.idle_since = None
            self.kills.ended(f.id for f in finished)
            self.dispatch.ended(finished)  # multi-node tasks: free their other nodes

    def _send(self, rank: int, msg: Assign | Drain) -> None:
        assert self.comm is not None
        self.comm.send(rank, msg)

    # -- what the database calls bring back ------------------------------------------------
    def _claimed(self, got: ClaimResult) -> None:
        """Claimed tasks to the nodes; rows that cannot run fail at once (kind 15)."""
        t = time.time()
        for task_id, why in got.bad:
            log.error("task %s cannot run: %s", task_id, why)
            self.buffer.add((Started(task_id, self.lease.epoch, t),),
                            (Finished(task_id, self.lease.epoch, int(EndKind.REFUSED), 127,
                                      t, t, why),))
        self.dispatch.pool.extend(got.orders)
        self.idle_since = None
        self.dispatch.push()

    def _poll_kills(self) -> None:
        if self.kills.due():
            self.calls.start("kills", self.store.kills, self.lease, self.kills.candidates(),
                             then=self._send_kills, failed=lambda exc: log.warning(
                                 "could not look for killed tasks (%s); will retry", exc))

    def _send_kills(self, killed: list[int]) -> None:
        if killed:
            log.info("stopping %s killed task(s)", self.dispatch.kill(killed))

    # -- workers that stopped answering, the lease, the end ---------------------------------
    def _watch_lease(self) -> None:
        """Requeue other jobs' expired leases now and then; stop this leader's tasks
        once it has gone half its lease without renewing it (launcher/lease.py)."""
        if self.draining:
            return
        silent = self.lease_watch.silent_for()
        if silent is not None:
            log.error("no heartbeat for %.0f s, half the %g s lease: stopping this "
                      "launcher's tasks before others may requeue them", silent,
                      self.settings.lease_s)
            self.start_drain(f"no heartbeat for {silent:.0f} s", cut=True)
            return
        self.lease_watch.sweep()

    def start_drain(self, reason: str, cut: bool = False) -> None:
        if self.draining:
            return
        self.draining = reason
        self.giveback.stop()
        self.dispatch.local_open = False
        self.local.begin_stop(cut=cut)
        log.info("draining: %s", reason)
        grace = self.settings.drain_grace_s
        for view in self.workers.values():
            if view.alive:
                view.draining = True
                self._send(view.rank, Drain(reason, grace, cut))
        if cut:
            # Every rank cuts at once: SIGTERM, SIGKILL after the kill grace, then BYE.
            self.liveness.drain_started(self.settings.kill_grace_s)
            self.local.cut_all()
            # Claimed but never assigned: give them back (the close releases them too).
            self.dispatch.pool.clear()

    def _check_end(self) -> bool:
        s = self.settings
        if self.draining:
            workers_done = all(not v.alive for v in self.workers.values()) and (
                self.departures.none_awaited)
            return workers_done and not self.local.busy() and not self.local.changes
        if self.deadline is not None and time.time() >= self.deadline - s.drain_grace_s:
            self.start_drain("wall time", cut=True)
            return False
        if not self.dispatch.all_idle() or self.buffer.pending or self.giveback.busy:
            self.idle_since = None
            return False
        if self.claims.in_flight:
            return False  # wait for its answer (it does not end the idle time)
        if s.max_tasks and self.claims.total >= s.max_tasks:
            self.start_drain("max tasks")
            return False
        # Idle: the last claim, sent after the last flush of ended tasks (whose children
        # may have become runnable), found nothing, and no dead job holds work for us.
        if self.claims.last_empty and self.claims.covers == self.buffer.flushes:
            now = time.monotonic()
            if self.idle_since is None:
                self.idle_since = now
            if not s.persistent and now - self.idle_since >= s.idle_timeout_s:
                self.start_drain("idle")
        return False

    def _not_idle(self) -> None:
        self.idle_since = None

    def settle(self, timeout: float | None = None) -> None:
        """Wait for the database calls in flight and take in their results."""
        self.calls.settle(timeout)

    def finish(self, reason: str) -> bool:
        """Write everything held and close the batch job; True once it is closed (a loop
        that keeps heartbeating: ``launcher/closing.py``)."""
        log.info("%s claims brought %s tasks", self.claims.sent, self.claims.total)
        return Closing(self.calls, self.store, self.lease, self.buffer, self.lease_watch,
                       self.local, journal=self.journal,
                       lease_s=self.settings.lease_s,
                       patience_s=self.settings.close_patience_s).run(reason)
