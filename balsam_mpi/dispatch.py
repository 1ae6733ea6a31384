"""Which node gets which claimed task: the leader's pool, its picture of every node, and
the ASSIGN messages (tasks to start, ids to kill).

A node is sent at most its free share plus a margin that follows its pace
(``resources.Pace``); assignments it had not yet acknowledged when it wrote its last
report are counted as taken, so crossing messages never overcommit it. The leader's own
local node is fed the same way, directly.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable

from .config import Settings
from .kills import LOCAL, KillTracker
from .node import Node
from .protocol import Assign, EndKind, Report, TaskSpec
from .resources import EPS, Pace, WorkerView, room


class Dispatcher:
    def __init__(self, settings: Settings, local: Node,
                 send: Callable[[int, Assign], None]) -> None:
        self.s = settings
        self.local = local
        self.local_pace = Pace()
        self.send = send
        self.pool: deque[TaskSpec] = deque()
        self.workers: dict[int, WorkerView] = {}
        self.seq = 0
        self.kills = KillTracker(settings.kill_poll_s)
        self.local_open = True  # False once draining

    def margin(self, pace: Pace) -> float:
        """The share a node may hold beyond its free capacity (see resources.Pace)."""
        return pace.margin(time.monotonic(), initial=self.s.claim_margin,
                           horizon_s=self.s.claim_horizon_s,
                           cap=max(self.s.claim_margin, self.s.claim_margin_max))

    def demand(self) -> float:
        """How much (in node shares) the nodes could take now beyond the pool."""
        self.local_pace.record(self.local.done_share, time.monotonic())
        total = 0.0
        if self.local_open:
            total = max(0.0, self.local.free() + self.margin(self.local_pace))
        total += sum(room(v, self.margin(v.pace)) for v in self.workers.values())
        return total - sum(t.need for t in self.pool)

    def reported(self, rank: int, msg: Report) -> WorkerView:
        view = self.workers.setdefault(rank, WorkerView(rank))
        view.update(msg.free, msg.acked, msg.running, msg.queued, msg.done_share,
                    time.monotonic())
        return view

    def _take(self, space: float) -> list[TaskSpec]:
        out: list[TaskSpec] = []
        while self.pool and self.pool[0].need <= space + EPS:
            spec = self.pool.popleft()
            space -= spec.need
            out.append(spec)
        return out

    def assign_to(self, view: WorkerView, always: bool = False) -> None:
        tasks = self._take(room(view, self.margin(view.pace)))
        if not tasks and not always:
            return
        self.seq += 1
        view.sent(self.seq, sum(t.need for t in tasks))
        self.kills.placed((t.id for t in tasks), view.rank)
        self.send(view.rank, Assign(self.seq, tuple(tasks)))

    def fill_local(self) -> None:
        if not self.local_open:
            return
        space = self.local.free() + self.margin(self.local_pace)
        if self.pool and self.pool[0].need <= space + EPS:
            tasks = self._take(space)
            self.kills.placed((t.id for t in tasks), LOCAL)
            self.local.queue.extend(tasks)
            self.local.start_ready()

    def push(self) -> None:
        """Unprompted ASSIGNs to workers with room (after a claim found new work)."""
        for view in self.workers.values():
            if not self.pool:
                return
            if view.alive and room(view, self.margin(view.pace)) >= self.pool[0].need - EPS:
                self.assign_to(view)

    def kill(self, killed: Iterable[int]) -> int:
        """Stop these tasks wherever they are; returns how many were out."""
        gone = set(killed)
        self.pool = deque(t for t in self.pool if t.id not in gone)
        n = 0
        for rank, ids in self.kills.by_rank(gone).items():
            n += len(ids)
            if rank == LOCAL:
                self.local.kill(ids, EndKind.KILLED)
            elif rank in self.workers and self.workers[rank].alive:
                self.seq += 1
                self.send(rank, Assign(self.seq, (), tuple(ids)))
        return n

    def all_idle(self) -> bool:
        return (not self.pool and not self.local.busy()
                and all(v.idle() or not v.alive for v in self.workers.values()))
