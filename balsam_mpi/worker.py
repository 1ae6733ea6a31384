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

from .base.errors import BalsamError
from .base.pacing import Backoff
from .launcher.comm import Comm
from .launcher.watchdog import Watchdog
from .node.channel import TaskChannel
from .node.node import Node
from .protocol import LOCAL, AddTasks, Assign, Bye, Drain, EndKind, Hello

log = logging.getLogger(__name__)


class LeaderGone(BalsamError):
    """A send to the leader failed: it has left (or died) while this rank ran."""


# Until its first ASSIGN a worker polls at least this often: the leader's first claim
# lands within tens of milliseconds of the start, and a rank whose backoff had grown to
# poll_cap_s would start its first wave up to that much later than the others.
FIRST_ASSIGN_POLL_S = 0.002
# A node that wants work (a share free, nothing queued for it) polls this often for this
# long after it began to: the leader's answer — tasks from its pool or a claim, or at the
# end of the work the DRAIN — comes within tens of milliseconds, when the backoff would
# have grown to 16-50 ms (the DRAIN read up to 50 ms late held every run's close back).
HUNGRY_POLL_S = 0.002
HUNGRY_FOR_S = 0.25


class Worker:
    def __init__(self, comm: Comm, node: Node, *, gpus: int = 0,
                 report_interval_s: float = 1.0, drain_grace_s: float = 30.0,
                 poll_cap_s: float = 0.05, leader_silence_s: float = 10.0,
                 chan: TaskChannel | None = None, watchdog: Watchdog | None = None) -> None:
        self.comm = comm
        self.node = node
        self.rank = comm.rank
        self.gpus = gpus
        self.report_interval_s = report_interval_s  # a report is also the heartbeat
        self.drain_grace_s = drain_grace_s
        self.idle = Backoff(0.001, poll_cap_s)  # the idle sleep between probes
        self.chan = chan  # task_api requests of this node's tasks (node/channel.py)
        self.draining: Drain | None = None
        self.stop_reason: str | None = None  # set by a signal handler
        self.assigned = False  # the first ASSIGN has come
        self.hungry_since: float | None = None  # when the node began to want work
        # A frozen or hung leader (SIGSTOP, a process stuck on a file system) answers
        # nothing and renews no lease: once its lease may run out, another launcher may
        # requeue this node's tasks. So after this long without a word from it (counted
        # from its first ASSIGN: its start-up may be long) the worker cuts them and leaves
        # (config.leader_silence_s says why this bound).
        self.leader_silence_s = leader_silence_s
        self.last_heard = time.monotonic()
        # Outside this process (launcher/watchdog.py): each REPORT sent tells it this
        # loop is alive; it cuts the node's tasks should the loop freeze, before the
        # leader, hearing nothing, writes them as lost for others to run.
        self.watchdog = watchdog

    def run(self) -> None:
        comm, node = self.comm, self.node
        comm.send(LOCAL, Hello(rank=self.rank, host=node.host, pid=os.getpid(),
                               cores=len(os.sched_getaffinity(0)), gpus=self.gpus))
        last_report = time.monotonic()
        while True:
            did = self._receive()
            if self.chan is not None:
                for req in self.chan.poll():  # to the leader, which writes them
                    comm.send(LOCAL, AddTasks(self.rank, req.parent, req.tasks, req.id))
                    did = True
            cut = self._cut_why() if self.draining is None else None
            if cut is not None:
                self.stop_reason = cut
                log.error("%s: cutting this node's tasks", cut)
                node.begin_stop()  # and starting nothing it might still send
            if self.stop_reason and self.draining is None:
                self.draining = Drain(self.stop_reason, self.drain_grace_s, cut=True)
                node.cut_all()
            if node.step():
                did = True
            now = time.monotonic()
            if self.draining is not None and not node.busy():
                comm.send(LOCAL, Bye(self.rank, node.report(self.rank)))
                comm.flush_sends()
                return
            if node.changes or node.poked or now - last_report >= self.report_interval_s:
                comm.send(LOCAL, node.report(self.rank))
                last_report = now
                if self.watchdog is not None:
                    self.watchdog.beat(now)
                did = True
            if LOCAL in comm.gone:  # the leader has gone: nobody will write what runs here
                raise LeaderGone(f"the leader (rank {LOCAL}) cannot be reached: "
                                 f"{comm.gone[LOCAL]}")
            if did:
                self.idle.reset()
            else:
                comm.progress()
                node.wait(self._pause())

    def _pause(self) -> float:
        """The next idle sleep: the backoff, but short until the first ASSIGN and while
        the node has newly begun to want work (``HUNGRY_FOR_S``), and the cap while it
        wants nothing from the leader (and no task_api request of its tasks is on its
        way). Then every slot is busy or has work queued for it, so nothing can start
        before a task ends — and an end wakes the wait (the node's epoll), after which
        the loop reads the ASSIGN that answered the last REPORT.
        Polling for that ASSIGN at 1, 2, 4 ms cost every task several turns of this
        loop; kills and a DRAIN still arrive within the cap, as on an idle rank."""
        pause = self.idle.next()
        if not self.assigned:
            return min(pause, FIRST_ASSIGN_POLL_S)
        if not self.node.wants_work():
            self.hungry_since = None
            # A task_api request on its way: its task waits for the answer an ASSIGN brings.
            return pause if self.chan is not None and self.chan.in_flight \
                else max(pause, self.idle.cap)
        now = time.monotonic()
        if self.hungry_since is None:
            self.hungry_since = now
        return min(pause, HUNGRY_POLL_S) if now - self.hungry_since < HUNGRY_FOR_S else pause

    def _cut_why(self) -> str | None:
        """Why this node's tasks must be cut now, if they must: the watchdog cut them
        while this loop was frozen, or the leader has been silent so long that its lease
        may run out (and others requeue the tasks)."""
        if self.watchdog is not None and self.watchdog.newly_cut() is not None:
            return "this rank was frozen: its watchdog cut its tasks"
        silent = time.monotonic() - self.last_heard
        if self.assigned and silent > self.leader_silence_s:
            return f"the leader has said nothing for {silent:.0f} s"
        return None

    def _receive(self) -> bool:
        did = False
        while True:
            got = self.comm.poll(LOCAL)
            if got is None:
                return did
            did = True
            self.last_heard = time.monotonic()
            msg = got[1]
            if isinstance(msg, Assign):
                self.assigned = True
                if msg.tasks:  # wanting work again later is a new episode
                    self.hungry_since = None
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
