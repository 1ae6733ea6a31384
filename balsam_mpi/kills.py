"""Kills reaching running tasks: where each of the leader's tasks is, and the poll.

``balsam-mpi task kill`` only writes USER_KILLED in the database (keeping the claim's
batch_job_id). The leader asks every ``interval_s`` which of the tasks it has out are
killed (one indexed lookup over their ids) and sends each node the ids to stop in its
next ASSIGN; the node's SIGTERM → SIGKILL does the rest, and the task's own late report
cannot overwrite the kill (the report function only moves tasks still RUNNING).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

LOCAL = 0  # the leader's own node


class KillTracker:
    def __init__(self, interval_s: float = 1.5) -> None:
        self.interval_s = interval_s
        self.where: dict[int, int] = {}  # task id -> rank it was sent to
        self.next_poll = time.monotonic() + interval_s
        self.sent: set[int] = set()

    def placed(self, ids: Iterable[int], rank: int) -> None:
        for i in ids:
            self.where[i] = rank

    def ended(self, ids: Iterable[int]) -> None:
        for i in ids:
            self.where.pop(i, None)
            self.sent.discard(i)

    def due(self) -> bool:
        now = time.monotonic()
        if not self.where or now < self.next_poll:
            return False
        self.next_poll = now + self.interval_s
        return True

    def candidates(self) -> list[int]:
        return [i for i in self.where if i not in self.sent]

    def by_rank(self, killed: Iterable[int]) -> dict[int, list[int]]:
        """Group newly killed ids by the rank that has them (each sent once)."""
        out: dict[int, list[int]] = {}
        for i in killed:
            rank = self.where.get(i)
            if rank is not None and i not in self.sent:
                self.sent.add(i)
                out.setdefault(rank, []).append(i)
        return out
