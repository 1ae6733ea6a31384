"""One node's tasks: a queue, the running processes, their capacity — no MPI, no database.

Shared by worker ranks and the leader's in-process local worker. The node starts queued
tasks in order while the head fits (no backfill, so a task that needs the whole node is
not starved by a stream of small ones), notices exits through pidfds in ``epoll`` (so it
can sleep and still wake the instant a task ends), enforces each task's own wall time,
and kills on request: SIGTERM to the task's process group, SIGKILL after the grace.
Everything that happened is collected in :attr:`changes` for the next report.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import time
from collections import deque
from collections.abc import Iterable, Mapping

from . import pdeath, runner
from .protocol import Assign, Changes, EndKind, Finished, Report, Started, TaskSpec
from .resources import EPS, NodeResources

log = logging.getLogger(__name__)


class Node:
    def __init__(self, *, environ: Mapping[str, str] | None = None, db_path: str = "",
                 gpus: int = 0, die_with_parent: bool = True, kill_grace_s: float = 10.0
                 ) -> None:
        self.res = NodeResources(gpus=gpus)
        self.queue: deque[TaskSpec] = deque()
        self.running: dict[int, runner.TaskProcess] = {}
        self.changes = Changes()
        self.acked = 0
        self.db_path = db_path
        self.die_with_parent = die_with_parent
        self.kill_grace_s = kill_grace_s
        self._env = runner.base_environment(os.environ if environ is None else environ)
        self._epoll = select.epoll()
        self._by_fd: dict[int, int] = {}
        self._wake_fd = -1
        self._watch: set[int] = set()  # running tasks with a deadline or a pending SIGKILL
        self.started_total = 0
        self.finished_total = 0
        self.done_share = 0.0  # node shares finished so far: the node's pace
        # Starts per call, 0 = all that fit: the leader's own node starts a few at a time
        # so that answering the other ranks never waits for a burst of spawns.
        self.max_starts = 0
        if die_with_parent:
            pdeath.trampoline()  # built (once per user) now, not at the first task

    # -- state ------------------------------------------------------------------------
    @property
    def queued_share(self) -> float:
        return sum(s.need for s in self.queue)

    def free(self) -> float:
        """Free share counting queued tasks as taken (negative when over-assigned)."""
        return self.res.free - self.queued_share

    def busy(self) -> bool:
        return bool(self.running or self.queue)

    def report(self, rank: int) -> Report:
        started, finished = self.changes.take()
        return Report(rank=rank, acked=self.acked, free=self.free(),
                      running=len(self.running), queued=len(self.queue),
                      started=started, finished=finished, done_share=self.done_share)

    # -- orders -----------------------------------------------------------------------
    def apply(self, msg: Assign) -> None:
        self.queue.extend(msg.tasks)
        self.acked = max(self.acked, msg.seq)
        if msg.kill:
            self.kill(msg.kill, EndKind.KILLED)

    def kill(self, ids: Iterable[int], kind: EndKind) -> None:
        """Stop these tasks. Queued ones are dropped without a report: they never started,
        so their claims are simply released when the batch job closes (or they are
        USER_KILLED already)."""
        wanted = set(ids)
        if not wanted:
            return
        if self.queue:
            self.queue = deque(s for s in self.queue if s.id not in wanted)
        for task_id in wanted & self.running.keys():
            self._stop(self.running[task_id], kind)

    def cut_all(self, kind: EndKind = EndKind.CUT) -> None:
        """Stop everything (drain at the end of the batch job)."""
        self.kill([s.id for s in self.queue] + list(self.running), kind)

    def _stop(self, proc: runner.TaskProcess, kind: EndKind) -> None:
        if proc.end_kind is None:
            proc.end_kind = kind
            proc.kill_at = time.monotonic() + self.kill_grace_s
            self._watch.add(proc.spec.id)
            runner.signal_group(proc, signal.SIGTERM)

    # -- the work ---------------------------------------------------------------------
    def step(self) -> bool:
        """Reap what ended, enforce time limits, start what fits; True if anything did."""
        did = self.reap(0.0)
        if self._watch:
            self._check_deadlines()
        return self.start_ready() or did

    def start_ready(self) -> bool:
        did = False
        budget = self.max_starts or len(self.queue)
        while self.queue and budget > 0:
            budget -= 1
            spec = self.queue[0]
            if not self.res.fits(min(spec.need, self.res.capacity), spec.gpus):
                break
            self.queue.popleft()
            self._start(spec)
            did = True
        return did

    def _start(self, spec: TaskSpec) -> None:
        need = min(spec.need, self.res.capacity)  # a task never needs more than a node
        gpu_ids = self.res.take(spec.id, need, spec.gpus)
        env = runner.task_environment(self._env, spec, self.db_path, gpu_ids)
        try:
            proc = runner.start(spec, env, die_with_parent=self.die_with_parent)
        except (runner.StartError, OSError) as exc:
            self.res.release(spec.id)
            now = time.time()
            self.changes.started.append(Started(spec.id, spec.epoch, now))
            self.changes.finished.append(
                Finished(spec.id, spec.epoch, int(EndKind.ERROR), 127, now, now, str(exc)))
            self.started_total += 1
            self.finished_total += 1
            return
        self.running[spec.id] = proc
        self._by_fd[proc.pidfd] = spec.id
        self._epoll.register(proc.pidfd, select.EPOLLIN)
        if proc.deadline:
            self._watch.add(spec.id)
        self.changes.started.append(Started(spec.id, spec.epoch, proc.started_at))
        self.started_total += 1

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` s, waking when a task ends; True if one did."""
        return self.reap(timeout)

    def wake_on(self, fd: int) -> None:
        """Also wake from :meth:`wait` when ``fd`` (an eventfd) is signalled: the leader's
        database thread uses it to say a result is ready."""
        self._wake_fd = fd
        self._epoll.register(fd, select.EPOLLIN)

    def reap(self, timeout: float) -> bool:
        # epoll's resolution is 1 ms; round up so a short wait still sleeps, never spins.
        ms = 0 if timeout <= 0 else max(1, int(timeout * 1000 + 0.999))
        if not self._by_fd and self._wake_fd < 0:
            if ms:
                time.sleep(ms / 1000.0)
            return False
        events = self._epoll.poll(ms / 1000.0 if ms else 0)
        for fd, _mask in events:
            task_id = self._by_fd.get(fd)
            if task_id is not None:
                self._finish(self.running[task_id])
            elif fd == self._wake_fd:
                try:
                    os.eventfd_read(fd)
                except BlockingIOError:
                    pass
        return bool(events)

    def _finish(self, proc: runner.TaskProcess) -> None:
        rc = runner.reap(proc)
        if rc is None:
            return
        ended = time.time()
        spec = proc.spec
        self._epoll.unregister(proc.pidfd)
        del self._by_fd[proc.pidfd]
        runner.close(proc)
        del self.running[spec.id]
        self.res.release(spec.id)
        self.done_share += spec.need
        self._watch.discard(spec.id)
        kind = proc.end_kind if proc.end_kind is not None else (
            EndKind.DONE if rc == 0 else EndKind.ERROR)
        tail = "" if kind == EndKind.DONE else runner.output_tail(spec.cwd)
        self.changes.finished.append(
            Finished(spec.id, spec.epoch, int(kind), rc, proc.started_at, ended, tail))
        self.finished_total += 1

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        for task_id in list(self._watch):
            proc = self.running[task_id]
            if proc.end_kind is None and proc.deadline and now >= proc.deadline:
                self._stop(proc, EndKind.TIMEOUT)
            elif proc.end_kind is not None and now >= proc.kill_at:
                runner.signal_group(proc, signal.SIGKILL)
                proc.kill_at = now + self.kill_grace_s

    def kill_everything_now(self) -> None:
        """SIGKILL every task group (on a crash, before MPI_Abort)."""
        for proc in self.running.values():
            runner.signal_group(proc, signal.SIGKILL)

    def close(self) -> None:
        self.kill_everything_now()
        for proc in list(self.running.values()):
            runner.close(proc)
        self._epoll.close()

    def has_room(self) -> bool:
        return self.free() > EPS


class NullNode(Node):
    """A node whose tasks end the moment they start, without a process: measures the
    leader and the protocol alone (``--null-runner``, benchmarks)."""

    def _start(self, spec: TaskSpec) -> None:
        now = time.time()
        self.changes.started.append(Started(spec.id, spec.epoch, now))
        self.changes.finished.append(
            Finished(spec.id, spec.epoch, int(EndKind.DONE), 0, now, now))
        self.done_share += spec.need
        self.started_total += 1
        self.finished_total += 1
