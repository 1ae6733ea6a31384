"""One rank's life around its loop: set up, run, and what to do on a signal or a crash.

The leader's session first replays the journals of batch jobs that ended without writing
everything and requeues the tasks of those whose lease ran out (so a launcher started
after a crash picks them up at once, and a row it adopts is swept first if it expired),
then opens (or adopts) the batch job, opens its own journal, builds the local node and
the leader, and closes the batch job at the end; on a crash it writes what it holds and
closes the row as FAILED before the abort. A worker's session tells the leader about its
crash (ERROR: its host, the exception's type and message, the traceback and its last
report) before the abort. What must be closed is entered as a context: the store, the
database thread, the node (its epoll and task processes) and its task_api channel.

If the leader declared a worker dead, it ends with an MPI abort once its batch job is
closed: a frozen rank would otherwise hold ``mpiexec`` (and the allocation) forever.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import socket
import time
from contextlib import ExitStack

from ..base.errors import BalsamError, DatabaseError
from ..base.project import Project
from ..leader import Leader
from ..node import runner, trampoline
from ..node.channel import TaskChannel
from ..node.node import Node
from ..node.nullnode import NullNode
from ..node.pypool import PoolConfig
from ..protocol import LOCAL, ErrorMsg
from ..tasks.owners import check_owners
from ..worker import Worker
from .calls import leader_calls
from .comm import Comm
from .config import Settings, leader_silence_s
from .dbthread import DbThread
from .journal import Journal, open_journal
from .lease import log_expired, sweep_once
from .replay import log_replayed
from .store import Store
from .storeport import ClaimFilter, Lease, StorePort
from .watchdog import Watchdog, watch_limit, worker_watch

log = logging.getLogger(__name__)


class LauncherAborted(BalsamError):
    """The leader ends with an MPI abort on purpose, with nothing left to write."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.exit_code = code


def log_usage(node: Node) -> None:
    """This rank's CPU time and its tasks' (benchmarks read these lines)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    log.info("usage: rank cpu %.3f s (user %.3f, sys %.3f), tasks cpu %.3f s, %s tasks "
             "started here", me.ru_utime + me.ru_stime, me.ru_utime, me.ru_stime,
             kids.ru_utime + kids.ru_stime, node.started_total)


def make_node(settings: Settings, project: Project | None, *,
              spares_now: bool = False) -> Node:
    """This rank's node. Its spare Python interpreters are forked in its idle time, or
    at once with ``spares_now`` (the leader's: see LeaderSession)."""
    cls = NullNode if settings.null_runner else Node
    db_path = str(project.root) if project else os.environ.get("BALSAM_DB_PATH", "")
    runner.configure(output_cap_mb=settings.output_cap_mb, cgroups=settings.task_cgroups)
    node = cls(db_path=db_path, gpus=settings.gpus_per_node,
               die_with_parent=settings.die_with_parent, kill_grace_s=settings.kill_grace_s,
               signal_hold_s=settings.signal_hold_s, stop_grace_s=settings.stop_grace_s,
               python=PoolConfig.from_settings(settings))  # Python tasks' interpreters
    if settings.python_prestart and not settings.null_runner:
        node.prestart_python(spares_now=spares_now)
    return node


def task_channel(settings: Settings, rank: int, node: Node) -> TaskChannel | None:
    """The task_api socket of this rank's tasks (none for the null runner)."""
    if settings.null_runner:
        return None
    chan = TaskChannel(rank)
    chan.serve(node)
    return chan


def launcher_deadline(settings: Settings, started: float) -> float | None:
    """Wall-clock end of this launcher: --time-limit-min, else the scheduler's, else none."""
    if settings.time_limit_min > 0:
        return started + settings.time_limit_min * 60.0
    from ..base.platform import detect, time_limit_min, with_end_time

    left = time_limit_min(with_end_time(detect()))
    return None if left is None else time.time() + left * 60.0


def start_watchdog(limit_s: float, grace_s: float) -> Watchdog | None:
    """This rank's watchdog (launcher/watchdog.py). A safety net, not a condition of
    running: without one (no process could be started) the rank runs as before, and the
    log says so."""
    try:
        return Watchdog(limit_s=limit_s, grace_s=grace_s, trampoline=trampoline.trampoline())
    except OSError as exc:
        log.warning("no watchdog for this rank (%s): should its loop freeze, its node's "
                    "tasks run on until it wakes", exc)
        return None


class LeaderSession:
    def __init__(self, settings: Settings, comm: Comm, project: Project,
                 t_init: float) -> None:
        from ..base.platform import batch_job_id, detect

        self.settings = settings
        self.t_init = t_init
        self.leader: Leader | None = None
        sched = detect()
        deadline = launcher_deadline(settings, t_init)
        with ExitStack() as stack:  # closed here only if setting up fails
            # The leader's node first, spares and all, before the batch job opens: made
            # later, its zygote's start and its forks held back the first claim and
            # ASSIGNs (its idle waits are the leader's turns, not a worker's).
            early = stack.enter_context(ExitStack())
            node = early.enter_context(make_node(settings, project, spares_now=True))
            store = stack.enter_context(Store.connect(project))
            # Before anything is written: a role no task can have would claim nothing
            # for the whole allocation (tasks/owners.py); launch.py refuses in one line.
            check_owners(store.conn, settings.owners)
            self.store: StorePort = store
            filters = ClaimFilter(settings.workflows, settings.tags, settings.owners)
            try:
                replayed, expired = sweep_once(self.store, project.log_dir)
                log_replayed(replayed)
                log_expired(expired)
            except DatabaseError as exc:  # e.g. a schema without 0005: the rest works
                log.warning("could not look for expired leases: %s (balsam-dbctl "
                            "migrate?)", exc)
            lease = self.store.open_job(
                job_id=batch_job_id(), scheduler=sched.scheduler,
                scheduler_job_id=sched.job_id, host=socket.gethostname(), nodes=comm.size,
                ranks=comm.size, filters=filters,
                wall_time_min=None if deadline is None else (deadline - t_init) / 60.0,
                lease_sec=settings.lease_s)
            log.info("batch job %s %s (epoch %s), %s ranks, filters %s", lease.job_id,
                     "adopted" if lease.adopted else "opened", lease.epoch, comm.size,
                     filters.as_json())
            self.journal = self._journal(project, lease)
            main = stack.enter_context(DbThread(self.store))
            claim_store = self._claim_store(settings, project, stack)
            side = None if claim_store is None else stack.enter_context(
                DbThread(claim_store, wake_fd=main.wake_fd, name="balsam-db-claims"))
            self.calls = leader_calls(main, side)
            # The node and its task channel close first, the database thread and the
            # store after the last write (run).
            self.node_stack = ExitStack()
            stack.enter_context(self.node_stack)
            self.node_stack.enter_context(early.pop_all())
            self.node = node
            self.node.max_starts = 4
            chan = task_channel(settings, LOCAL, self.node)
            if chan is not None:
                self.node_stack.enter_context(chan)
            # Outside this process: cuts the node's tasks should this process freeze
            # (a null runner's node starts none).
            watchdog = None if isinstance(node, NullNode) else self._watchdog(settings)
            self.leader = Leader(settings, comm, project, self.store, self.calls, lease,
                                 self.node, deadline=deadline, journal=self.journal,
                                 chan=chan, claim_store=claim_store, watchdog=watchdog)
            self.stack = stack.pop_all()

    def _watchdog(self, settings: Settings) -> Watchdog | None:
        dog = start_watchdog(watch_limit(settings.lease_s, settings.kill_grace_s),
                             settings.kill_grace_s)
        return None if dog is None else self.node_stack.enter_context(dog)

    @staticmethod
    def _claim_store(settings: Settings, project: Project, stack: ExitStack
                     ) -> StorePort | None:
        """The claims' own connection, unless turned off or refused (a role at its
        connection limit): then claims share the leader's one, as they can."""
        if not settings.claim_connection:
            return None
        try:
            return stack.enter_context(Store.connect(project, "balsam-launcher-claims"))
        except BalsamError as exc:
            log.warning("claims share the leader's database connection: a second one "
                        "was refused (%s)", exc)
            return None

    def _journal(self, project: Project, lease: Lease) -> Journal | None:
        try:
            key = self.store.journal_key(lease)
        except DatabaseError as exc:  # a schema without 0008
            log.warning("no journal for this batch job (%s): reports live in memory only",
                        exc)
            return None
        return open_journal(project.log_dir, lease.job_id, lease.epoch, key)

    def run(self) -> None:
        assert self.leader is not None
        leader = self.leader
        try:
            reason = leader.run()
            closed = leader.finish(reason)
        finally:
            self.node_stack.close()
        log_usage(self.node)
        done = leader.buffer.written_finished
        first = leader.first_start
        log.info("done (%s): %s tasks claimed, %s ended; first start %.3f s after MPI init",
                 reason, leader.claims.total, done,
                 (first - self.t_init) if first else float("nan"))
        # The database thread and the store stay open on a crash: crashed() writes.
        self.stack.close()
        if leader.dead or not closed:
            # Nothing is left to write; a frozen rank must not hold mpiexec, and an
            # unwritten end must show in the exit status.
            self.leader = None  # the abort's crash handler has nothing to do
            if not closed:
                where = self.journal.path if self.journal is not None else "nowhere"
                raise LauncherAborted(
                    "the last reports could not be written to the database; they are in "
                    f"the journal {where}, which the next launcher or `balsam-dbctl "
                    "recover` writes", 1)
            raise LauncherAborted(
                f"worker rank(s) {sorted(leader.dead)} stopped answering (their tasks were "
                "written as lost); ending with an MPI abort so that they stop too", 0)

    def stop(self, reason: str) -> None:
        # From a signal handler: flags only. The node starts nothing from this instant.
        self.node.begin_stop()
        if self.leader is not None:
            self.leader.stop_reason = reason

    def crashed(self, text: str, exc: BaseException | None = None) -> None:
        self.node.kill_everything_now()
        if self.leader is None:
            return
        leader = self.leader
        try:
            leader.settle(timeout=10.0)
            leader.buffer.flush_now(patience_s=10.0)
        except BalsamError as err:
            log.error("could not write the last reports: %s", err)
        if self.journal is not None:  # whatever the flush could not write is there
            self.journal.close(complete=True)
        first_line = text.strip().splitlines()[-1] if text.strip() else "error"
        try:
            self.calls.run(self.store.close_job, leader.lease, "FAILED",
                           f"launcher error: {first_line}"[:500], timeout=30)
        except (BalsamError, TimeoutError) as err:
            log.error("could not close the batch job: %s", err)


class WorkerSession:
    def __init__(self, settings: Settings, comm: Comm, project: Project) -> None:
        self.comm = comm
        self.node = make_node(settings, project)
        # However slow the starts, they hold a REPORT back by a quarter of an interval at
        # most: the watchdog cuts at half of worker_timeout_s, 1.5 intervals at least.
        self.node.start_budget_s = settings.report_interval_s / 4
        self.watchdog = None if isinstance(self.node, NullNode) else start_watchdog(
            *worker_watch(settings.worker_timeout_s, settings.kill_grace_s))
        self.worker = Worker(comm, self.node, gpus=settings.gpus_per_node,
                             report_interval_s=settings.report_interval_s,
                             drain_grace_s=settings.drain_grace_s,
                             poll_cap_s=settings.poll_cap_s,
                             leader_silence_s=leader_silence_s(settings),
                             chan=task_channel(settings, comm.rank, self.node),
                             watchdog=self.watchdog)

    def run(self) -> None:
        with self.node, self.worker.chan or ExitStack(), self.watchdog or ExitStack():
            self.worker.run()
        log_usage(self.node)
        # BYE is said and nothing runs here: what is left is MPI_Finalize, which waits for
        # the other ranks (a leader still draining, or frozen). A scheduler's TERM then
        # has nothing to stop, and dying of it (Python restores the default action of
        # the handlers it set as it exits) makes mpiexec call the whole run a bad
        # termination. SIGKILL, and a user's ^C (INT), still end the rank.
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_IGN)

    def stop(self, reason: str) -> None:
        # From a signal handler: flags only. The node starts nothing from this instant.
        self.node.begin_stop()
        self.worker.stop_reason = reason

    def crashed(self, text: str, exc: BaseException | None = None) -> None:
        self.node.kill_everything_now()
        kind = type(exc) if exc is not None else Exception
        name = kind.__qualname__ if kind.__module__ == "builtins" \
            else f"{kind.__module__}.{kind.__qualname__}"
        self.comm.send(LOCAL, ErrorMsg(self.comm.rank, socket.gethostname(), text,
                                       self.node.report(self.comm.rank), exc_type=name,
                                       message=str(exc) if exc is not None else ""))
        self.comm.flush_sends(timeout=5.0)
        # Give the leader a moment to write what it holds before this rank aborts.
        time.sleep(3.0)
