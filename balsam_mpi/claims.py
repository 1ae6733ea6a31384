"""The leader's claims: when to ask for work, how much, and what to do with the answer.

One claim in flight at most, for what the nodes can start soon (``Dispatcher.demand``).
The claim call runs on the database thread and comes back as ready orders (``orders.py``);
rows that cannot run are written as failures of their tasks, nothing else. While the
database is away claims pause longer each time.

**No early idle exit while a dead job holds work.** When a claim finds nothing, the same
call lists the other running batch jobs that hold work these filters match, with their
last heartbeat. A launcher started right after one that crashed must not end for lack of
work while the crashed job's tasks wait for its lease to run out: so it counts itself
idle only once every such job has shown it is alive by renewing its heartbeat since this
launcher first saw it. One that does not is waited for: once its heartbeat is older than
half its lease (a live leader beats at least that often) it is said to be overdue in the
log, and when its lease has run out a sweep requeues its tasks and the next claim takes
them. The cost is at most one heartbeat interval of waiting when the holders are alive.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING

from .errors import BalsamError
from .orders import ClaimResult
from .protocol import EndKind, Finished, Started
from .resources import EPS, NODE_CAPACITY

if TYPE_CHECKING:
    from .leader import Leader

log = logging.getLogger(__name__)


class Claims:
    def __init__(self, leader: Leader) -> None:
        self.leader = leader
        self.s = leader.s
        self.future: tuple[int, Future[ClaimResult]] | None = None
        self.covers = -1  # the leader's flush count when the last claim was sent
        self.last_empty = False
        self.first_beat: dict[int, float] = {}  # holder job -> heartbeat first seen
        self.waiting_for: frozenset[int] = frozenset()  # holders not seen alive yet
        self.overdue: frozenset[int] = frozenset()
        self.next_at = 0.0
        self.pause = 0.0  # grows while claims fail
        self.total = 0
        self.max_packing = 16

    @property
    def in_flight(self) -> bool:
        return self.future is not None

    def refill(self) -> None:
        """Send a claim for what the nodes can start soon."""
        ld = self.leader
        now = time.monotonic()
        if ld.draining or self.future is not None or now < self.next_at:
            return
        if self.s.max_tasks and self.total >= self.s.max_tasks:
            return
        want = ld.nodes.demand()
        if want < 1.0 / self.max_packing - EPS:
            return
        limit = min(self.s.claim_limit, max(8, int(want * self.max_packing + 0.999)))
        if self.s.max_tasks:
            limit = min(limit, self.s.max_tasks - self.total)
        future = ld.db.submit(ld.orders.claim, ld.store, ld.lease, filters=ld.filters,
                              look_for_held=not self.s.persistent, limit=limit,
                              capacity=want, max_need=NODE_CAPACITY,
                              remaining_min=ld.remaining_min(),
                              max_nodes=ld.nodes.max_nodes())
        self.future = (ld.flushes, future)

    def collect(self) -> bool:
        if self.future is None or not self.future[1].done():
            return False
        (covers, future), self.future = self.future, None
        self._claimed(covers, future)
        return True

    def _claimed(self, covers: int, future: Future[ClaimResult]) -> None:
        ld = self.leader
        now = time.monotonic()
        try:
            got = future.result()
        except BalsamError as exc:
            # The database may be away for a while: pause longer each time (the nodes
            # keep running what they have; reports wait in the buffer).
            self.pause = min(10.0, max(self.s.claim_idle_s, self.pause * 2))
            log.warning("claim failed (%s); retrying in %.1f s", exc, self.pause)
            self.next_at = now + self.pause
            return
        if self.pause:
            log.info("claims work again")
            self.pause = 0.0
        self.covers = covers
        self._held(got)
        self.last_empty = not got.claimed and not self.waiting_for
        if not got.claimed:
            self.next_at = now + self.s.claim_idle_s
            return
        self.next_at = now
        self.total += got.claimed
        self.max_packing = max(self.max_packing, got.max_packing)
        t = time.time()
        for task_id, why in got.bad:
            log.error("task %s cannot run: %s", task_id, why)
            ld.buffer.add((Started(task_id, ld.lease.epoch, t),),
                          (Finished(task_id, ld.lease.epoch, int(EndKind.REFUSED), 127, t, t,
                                    why),))
        ld.nodes.pool.extend(got.orders)
        ld.idle_since = None
        ld.nodes.push()

    def _held(self, got: ClaimResult) -> None:
        """Which holders have not shown they are alive (see the module's docstring)."""
        if got.claimed:
            return
        waiting: set[int] = set()
        overdue: set[int] = set()
        for h in got.held:
            first = self.first_beat.setdefault(h.job_id, h.heartbeat_at)
            if h.heartbeat_at > first:
                continue  # it renewed: a live launcher, which will run its own tasks
            waiting.add(h.job_id)
            if h.overdue:
                overdue.add(h.job_id)
                if h.job_id not in self.overdue:
                    left = h.lease_s - h.silent_s
                    log.warning("batch job %s holds tasks for these filters but has not "
                                "heartbeated for %.0f s: waiting %s to take them over",
                                h.job_id, h.silent_s,
                                f"{left:.0f} s for its lease to run out" if left > 0
                                else "for its lease to be swept")
        self.waiting_for, self.overdue = frozenset(waiting), frozenset(overdue)
