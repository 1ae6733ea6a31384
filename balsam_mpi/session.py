"""One rank's life around its loop: set up, run, and what to do on a signal or a crash.

The leader's session first requeues the tasks of batch jobs whose lease ran out (so a
launcher started after a crash picks them up at once, and a row it adopts is swept
first if it expired), then opens (or adopts) the batch job, builds the local node and the
leader, and closes the batch job at the end; on a crash it writes what it holds and
closes the row as FAILED before the abort. A worker's session tells the leader about its
crash (ERROR, with its last report) before the abort.
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
from .leader import Leader
from .lease import log_expired
from .node import Node, NullNode
from .project import Project
from .protocol import ErrorMsg
from .store import ClaimFilter, Store
from .worker import Worker

log = logging.getLogger(__name__)


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
    return cls(db_path=db_path, gpus=settings.gpus_per_node,
               die_with_parent=settings.die_with_parent, kill_grace_s=settings.kill_grace_s)


def launcher_deadline(settings: Settings, started: float) -> float | None:
    """Wall-clock end of this launcher: --time-limit-min, else the scheduler's, else none."""
    if settings.time_limit_min > 0:
        return started + settings.time_limit_min * 60.0
    from .platform import detect, time_limit_min

    left = time_limit_min(detect())
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
            log_expired(self.store.expire_leases())
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
        self.node = make_node(settings, project)
        self.node.max_starts = 4
        self.db = DbThread(self.store)
        self.leader = Leader(settings, comm, project, self.db, lease, self.node, deadline)

    def run(self) -> None:
        assert self.leader is not None
        leader = self.leader
        try:
            reason = leader.run()
            leader.finish(reason)
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

    def stop(self, reason: str) -> None:
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
        self.worker.stop_reason = reason

    def crashed(self, text: str) -> None:
        self.node.kill_everything_now()
        self.comm.send(0, ErrorMsg(self.comm.rank, socket.gethostname(), text,
                                   self.node.report(self.comm.rank)))
        self.comm.flush_sends(timeout=5.0)
        # Give the leader a moment to write what it holds before this rank aborts.
        time.sleep(3.0)
