"""One rank's life around its loop: set up, run, and what to do on a signal or a crash.

The leader's session first replays the journals of batch jobs that ended without writing
everything and requeues the tasks of those whose lease ran out (so a launcher started
after a crash picks them up at once, and a row it adopts is swept first if it expired),
then opens (or adopts) the batch job, opens its own journal, builds the local node and
the leader, and closes the batch job at the end; on a crash it writes what it holds and
closes the row as FAILED before the abort. A worker's session tells the leader about its
crash (ERROR, with its last report) before the abort.

If the leader declared a worker dead, it ends with an MPI abort once its batch job is
closed: a frozen rank would otherwise hold ``mpiexec`` (and the allocation) forever.
"""

from __future__ import annotations

import logging
import os
import resource
import socket
import time

from . import runner
from .buffer import DbThread
from .comm import Comm
from .config import Settings
from .errors import BalsamError, DatabaseError
from .journal import Journal, open_journal
from .leader import Leader
from .lease import log_expired, sweep_once
from .node import Node, NullNode
from .project import Project
from .protocol import ErrorMsg
from .pypool import PoolConfig
from .replay import log_replayed
from .store import ClaimFilter, Lease, Store
from .worker import Worker

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


def make_node(settings: Settings, project: Project | None) -> Node:
    cls = NullNode if settings.null_runner else Node
    db_path = str(project.root) if project else os.environ.get("BALSAM_DB_PATH", "")
    runner.configure(output_cap_mb=settings.output_cap_mb, cgroups=settings.task_cgroups)
    node = cls(db_path=db_path, gpus=settings.gpus_per_node,
               die_with_parent=settings.die_with_parent, kill_grace_s=settings.kill_grace_s,
               signal_hold_s=settings.signal_hold_s, stop_grace_s=settings.stop_grace_s)
    node.python = PoolConfig.from_settings(settings)  # Python tasks' interpreters
    return node


def launcher_deadline(settings: Settings, started: float) -> float | None:
    """Wall-clock end of this launcher: --time-limit-min, else the scheduler's, else none."""
    if settings.time_limit_min > 0:
        return started + settings.time_limit_min * 60.0
    from .platform import detect, time_limit_min, with_end_time

    left = time_limit_min(with_end_time(detect()))
    return None if left is None else time.time() + left * 60.0


class LeaderSession:
    def __init__(self, settings: Settings, comm: Comm, project: Project,
                 t_init: float) -> None:
        from .platform import batch_job_id, detect

        self.settings = settings
        self.t_init = t_init
        self.leader: Leader | None = None
        sched = detect()
        deadline = launcher_deadline(settings, t_init)
        self.store = Store.connect(project)
        filters = ClaimFilter(settings.workflows, settings.tags, settings.owners)
        try:
            replayed, expired = sweep_once(self.store, project.log_dir)
            log_replayed(replayed)
            log_expired(expired)
        except DatabaseError as exc:  # e.g. a schema without 0005: the rest still works
            log.warning("could not look for expired leases: %s (balsam-dbctl migrate?)", exc)
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
        self.node = make_node(settings, project)
        self.node.max_starts = 4
        self.db = DbThread(self.store)
        self.leader = Leader(settings, comm, project, self.db, lease, self.node, deadline,
                             self.journal)

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
            self.node.close()
        log_usage(self.node)
        done = leader.buffer.written_finished
        first = leader.first_start
        log.info("done (%s): %s tasks claimed, %s ended; first start %.3f s after MPI init",
                 reason, leader.claimed_total, done,
                 (first - self.t_init) if first else float("nan"))
        self.db.close()
        self.store.close()
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

    def crashed(self, text: str) -> None:
        self.node.kill_everything_now()
        if self.leader is None:
            return
        leader = self.leader
        try:
            leader.settle()
            leader.buffer.flush_now(self.db, patience_s=10.0)
        except BalsamError as exc:
            log.error("could not write the last reports: %s", exc)
        if self.journal is not None:  # whatever the flush could not write is there
            self.journal.close(complete=True)
        first_line = text.strip().splitlines()[-1] if text.strip() else "error"
        try:
            self.db.submit(self.store.close_job, leader.lease, "FAILED",
                           f"launcher error: {first_line}"[:500]).result(timeout=30)
        except BalsamError as exc:
            log.error("could not close the batch job: %s", exc)


class WorkerSession:
    def __init__(self, settings: Settings, comm: Comm, project: Project) -> None:
        self.comm = comm
        self.node = make_node(settings, project)
        self.worker = Worker(settings, comm, self.node)

    def run(self) -> None:
        try:
            self.worker.run()
        finally:
            self.node.close()
        log_usage(self.node)

    def stop(self, reason: str) -> None:
        # From a signal handler: flags only. The node starts nothing from this instant.
        self.node.begin_stop()
        self.worker.stop_reason = reason

    def crashed(self, text: str) -> None:
        self.node.kill_everything_now()
        self.comm.send(0, ErrorMsg(self.comm.rank, socket.gethostname(), text,
                                   self.node.report(self.comm.rank)))
        self.comm.flush_sends(timeout=5.0)
        # Give the leader a moment to write what it holds before this rank aborts.
        time.sleep(3.0)
