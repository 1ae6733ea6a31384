"""How a node ends tasks (mixed into :class:`~balsam_mpi.node.node.Node`): kills on
request, the end of a batch job, each task's own wall time, and a crash.

A stop is SIGTERM to the task's process group and SIGKILL after a grace: ``kill_grace_s``,
or the shorter ``stop_grace_s`` when the job is ending, so the launcher has time to write
what happened before the scheduler's own SIGKILL. A task that ended on its own before its
stop came keeps its own outcome. Queued tasks are dropped without a report: they never
started, and their claims go back when the batch job closes.
"""

from __future__ import annotations

import signal
import time
from collections import deque
from collections.abc import Iterable

from ..protocol import EndKind, RunOrder
from . import pypool, runner


class Stops:
    queue: deque[RunOrder]
    running: dict[int, runner.TaskProcess]
    pool: pypool.PyPool | None
    stopping: bool
    cutting: bool
    kill_grace_s: float
    stop_grace_s: float
    _watch: set[int]

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

    def begin_stop(self, cut: bool = True) -> None:
        """The batch job is ending (``cut``) or this node is being drained: start nothing
        from now on. Only sets flags, so a signal handler may call it; :meth:`step` drops
        the queue and settles held deaths."""
        self.stopping = True
        if cut:
            self.cutting = True

    def _stop(self, proc: runner.TaskProcess, kind: EndKind) -> None:
        ended = (proc.ended() if isinstance(proc, pypool.PyCall)  # a call: not our child
                 else runner.reap(proc) is not None)
        if proc.end_kind is None and ended:
            return  # it ended on its own before the stop came: its own outcome stands
        if proc.end_kind is None:
            proc.end_kind = kind
            # At the job's end the scheduler's own SIGKILL is near: a short grace leaves
            # the launcher time to write what happened and close its batch job.
            grace = self.stop_grace_s if self.cutting and kind == EndKind.CUT \
                else self.kill_grace_s
            proc.kill_at = time.monotonic() + grace
            self._watch.add(proc.order.id)
            runner.signal_group(proc, signal.SIGTERM)

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
        if self.pool is not None:
            self.pool.kill_all()
