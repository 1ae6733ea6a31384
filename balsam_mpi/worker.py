"""Ranks ≥ 1: one node behind the MPI protocol.

HELLO, then a loop: start what fits, notice exits, REPORT on every change and at least
every ``report_interval_s`` (the report is also the heartbeat), apply ASSIGNs, obey DRAIN,
and end with BYE. Idle waiting sleeps in ``epoll`` on the node's tasks with a capped
backoff, so an idle rank neither spins (MPICH's blocking calls would) nor misses an exit.
"""

from __future__ import annotations

import logging
import os
import time

from .comm import Backoff, Comm
from .config import Settings
from .node import Node
from .protocol import AddTasks, Assign, Bye, Drain, EndKind, Hello
from .taskchan import TaskChannel

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, settings: Settings, comm: Comm, node: Node) -> None:
        self.s = settings
        self.comm = comm
        self.node = node
        self.rank = comm.rank
        self.draining: Drain | None = None
        self.cut_deadline = 0.0
        self.stop_reason: str | None = None  # set by a signal handler
        self.chan: TaskChannel | None = None  # task_api requests of this node's tasks

    def run(self) -> None:
        if not self.s.null_runner:
            self.chan = TaskChannel(self.rank)
            self.node.extra_env.update(self.chan.env())
            self.node.watch(self.chan.fileno())
        try:
            self._run()
        finally:
            if self.chan is not None:
                self.chan.close()

    def _run(self) -> None:
        comm, node = self.comm, self.node
        comm.send(0, Hello(rank=self.rank, host=node.host, pid=os.getpid(),
                           cores=os.cpu_count() or 1, gpus=self.s.gpus_per_node))
        backoff = Backoff(first=0.001, cap=self.s.poll_cap_s)
        last_report = time.monotonic()
        while True:
            did = self._receive()
            if self.chan is not None:
                for req in self.chan.poll():  # to the leader, which writes them
                    comm.send(0, AddTasks(self.rank, req.parent, req.tasks, req.id))
                    did = True
            if self.stop_reason and self.draining is None:
                self.draining = Drain(self.stop_reason, self.s.drain_grace_s, cut=True)
                node.cut_all()
            if node.step():
                did = True
            now = time.monotonic()
            if self.draining is not None and not node.busy():
                comm.send(0, Bye(self.rank, node.report(self.rank)))
                comm.flush_sends()
                return
            if node.changes or node.poked or now - last_report >= self.s.report_interval_s:
                comm.send(0, node.report(self.rank))
                last_report = now
                did = True
            if did:
                backoff.reset()
            else:
                comm.progress()
                node.wait(backoff.next())

    def _receive(self) -> bool:
        did = False
        while True:
            got = self.comm.poll(0)
            if got is None:
                return did
            did = True
            msg = got[1]
            if isinstance(msg, Assign):
                self.node.apply(msg)
                if msg.added and self.chan is not None:
                    for req, ids, error in msg.added:
                        self.chan.reply(req, ids, error)
            elif isinstance(msg, Drain):
                self.draining = msg
                self.node.begin_stop(cut=msg.cut)
                if msg.cut:
                    self.node.cut_all(EndKind.CUT)
                else:  # finish what runs; what waits in the queue goes back
                    self.node.kill([s.id for s in self.node.queue], EndKind.CUT)
            else:
                raise TypeError(f"worker got an unexpected {type(msg).__name__}")
