"""Where each of the leader's tasks is, and the kill poll.

``balsam-mpi task kill`` only writes USER_KILLED in the database (keeping the claim's
batch_job_id). Every ``interval_s`` (with jitter) the leader asks, in the background
call ``"kills"``, which of the tasks it has out are killed (one indexed lookup over their
ids) and sends each node the ids to stop in its next ASSIGN; the node's SIGTERM →
SIGKILL does the rest. A kill sent is the last the
leader needs to know about a task: it is forgotten then (a queued task is dropped by its
node without a report, and must not be polled for the rest of the run).

The same record answers "what did that rank have" when a worker stops answering
(``launcher/liveness.py``): the order of every task out on a worker, and whether it started.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..base.pacing import Periodic
from ..protocol import LOCAL, RunOrder


class KillTracker:
    def __init__(self, interval_s: float = 1.5) -> None:
        self.where: dict[int, int] = {}  # task id -> rank it was sent to
        self.orders: dict[int, RunOrder] = {}  # ... and what was sent (workers only)
        self.started: set[int] = set()  # of those, the ones whose start was reported
        self.polls = Periodic(interval_s)

    def placed(self, tasks: Iterable[RunOrder], rank: int) -> None:
        for t in tasks:
            self.where[t.id] = rank
            if rank != LOCAL:
                self.orders[t.id] = t

    def began(self, ids: Iterable[int]) -> None:
        where = self.where
        self.started.update(i for i in ids if i in where)

    def ended(self, ids: Iterable[int]) -> None:
        for i in ids:
            self.forget(i)

    def forget(self, task_id: int) -> None:
        self.where.pop(task_id, None)
        self.orders.pop(task_id, None)
        self.started.discard(task_id)

    def due(self) -> bool:
        """Time for the kill poll (only while tasks are out)."""
        return bool(self.where) and self.polls.due()

    def candidates(self) -> list[int]:
        return list(self.where)

    def by_rank(self, killed: Iterable[int]) -> dict[int, list[int]]:
        """Group newly killed ids by the rank that has them; each is sent once and then
        forgotten (its end, if it was running, is still reported and written)."""
        out: dict[int, list[int]] = {}
        for i in killed:
            rank = self.where.get(i)
            if rank is not None:
                out.setdefault(rank, []).append(i)
                self.forget(i)
        return out

    def on_rank(self, rank: int) -> tuple[list[int], list[RunOrder]]:
        """A rank's tasks: (started ids, orders never reported started); forgets them."""
        ids = [i for i, r in self.where.items() if r == rank]
        started = [i for i in ids if i in self.started]
        waiting = [self.orders[i] for i in ids if i not in self.started and i in self.orders]
        for i in ids:
            self.forget(i)
        return started, waiting
