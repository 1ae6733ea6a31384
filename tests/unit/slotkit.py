"""Nodes with slots, for the leader's unit tests about *where* tasks wait: a real ``Node``
(its queue, its capacity, its ASSIGN handling) whose tasks run until the test ends them,
and a worker rank that drives one such node the way ``worker.py`` does — apply every
ASSIGN, step the node, REPORT what changed — over leaderkit's fake comm. No processes:
a "running" task is an entry in :attr:`SlotNode.sim` until :meth:`SlotNode.end_all`.
"""

from __future__ import annotations

import time
from collections import Counter

from balsam_mpi.node.node import Node
from balsam_mpi.node.shmleft import Sweeper
from balsam_mpi.protocol import Assign, Bye, Drain, EndKind, Finished, RunOrder, Started
from tests.unit.leaderkit import FakeComm, FakeWorker


class SlotNode(Node):
    """A node whose tasks take their share and hold it until :meth:`end_all`."""

    def __init__(self) -> None:
        super().__init__(die_with_parent=False)
        self.shm = Sweeper(enabled=False)  # no process: its /proc read would only slow it
        self.sim: dict[int, RunOrder] = {}
        self.starts: Counter[int] = Counter()  # every start, to catch a task run twice

    def _start(self, order: RunOrder) -> None:
        self.res.take(order.id, order.need, order.gpus)
        self.sim[order.id] = order
        self.starts[order.id] += 1
        self.changes.started.append(Started(order.id, order.epoch, time.time()))
        self.started_total += 1

    def busy(self) -> bool:
        return bool(self.sim) or super().busy()

    def kill(self, ids: object, kind: EndKind) -> None:  # type: ignore[override]
        wanted = set(ids)  # type: ignore[call-overload]
        super().kill(wanted, kind)
        now = time.time()
        for task_id in wanted & self.sim.keys():
            order = self.sim.pop(task_id)
            self._end(order, Finished(order.id, order.epoch, int(kind), -15, now, now))

    def cut_all(self, kind: EndKind = EndKind.CUT) -> None:
        self.kill([o.id for o in self.queue] + list(self.sim), kind)

    def end_all(self, n: int | None = None) -> list[int]:
        """Every running task (or the first ``n``) ends now (DONE); the queue's next ones
        start at the next step."""
        now = time.time()
        ended = list(self.sim)[:n]
        for task_id in ended:
            order = self.sim.pop(task_id)
            self._end(order, Finished(order.id, order.epoch, 0, 0, now, now))
        return ended


class SlotWorker(FakeWorker):
    """A worker rank around a :class:`SlotNode`, answering as ``worker.py`` does."""

    def __init__(self, comm: FakeComm, rank: int) -> None:
        super().__init__(comm, rank, finish=False)
        self.node = SlotNode()
        self.hold = False  # while set, ASSIGNs wait unread (a message still on its way)
        self.last_report = 0.0

    def answer(self) -> None:
        if self.silent or self.gone:
            return
        if not self.hold:
            sent = [m for r, m in self.comm.sent if r == self.rank
                    and isinstance(m, (Assign, Drain))]
            new, self.seen = sent[self.seen:], len(sent)
            for msg in new:
                if isinstance(msg, Drain):
                    self.node.begin_stop(cut=msg.cut)
                    if msg.cut:
                        self.node.cut_all(EndKind.CUT)
                    else:  # finish what runs; what waits in the queue goes back
                        self.node.kill([o.id for o in self.node.queue], EndKind.CUT)
                else:
                    self.node.apply(msg)
        self.node.step()
        if self.node.stopping and not self.node.busy():
            self.comm.inbox.append((self.rank, Bye(self.rank, self.node.report(self.rank))))
            self.gone = True
            return
        now = time.monotonic()
        if self.node.changes or self.node.poked or now - self.last_report > 0.05:
            self.comm.inbox.append((self.rank, self.node.report(self.rank)))
            self.last_report = now  # the report is also the heartbeat
