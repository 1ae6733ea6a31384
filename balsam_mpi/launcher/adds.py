"""The leader's side of ``task_api``: tasks that running tasks add, written in batches.

Requests come from workers (ADD_TASKS over MPI) and from the tasks of the leader's own
node (its :class:`~balsam_mpi.node.channel.TaskChannel`). Whatever waits is written by one
background call (``"adds"``) through the store (``StorePort.add_tasks``: each request its
own transaction, through the task writer the client uses too, with its checks and DAG
planning), then every request is answered with its ids: a worker gets them in an ASSIGN,
a local task on its socket.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..base.errors import BalsamError
from ..node.channel import TaskChannel
from ..protocol import LOCAL, AddTasks
from .calls import Calls
from .storeport import StorePort

log = logging.getLogger(__name__)

# (rank or LOCAL, request id, tasks) in; (rank, request id, ids, error) out.
Pending = tuple[int, int, tuple[dict[str, Any], ...]]
Answer = tuple[int, int, tuple[int, ...], str]
# What a worker is sent: (request id, ids, error) per request (protocol.Assign.added).
Added = tuple[tuple[int, tuple[int, ...], str], ...]


def write(store: StorePort, batch: list[Pending]) -> list[Answer]:
    """Add every request's tasks (database thread); one request's error is its own."""
    out: list[Answer] = []
    for rank, req, tasks in batch:
        try:
            out.append((rank, req, tuple(store.add_tasks(tasks)), ""))
        except BalsamError as exc:
            out.append((rank, req, (), str(exc)))
    return out


class AddService:
    def __init__(self, calls: Calls, store: StorePort,
                 answer: Callable[[int, Added], object],
                 chan: TaskChannel | None = None) -> None:
        self.calls = calls
        self.store = store
        self.answer = answer  # to a worker rank (Dispatcher.answer_adds)
        self.chan = chan  # the local node's tasks' requests, if they may make any
        self.waiting: list[Pending] = []
        self.added = 0

    def received(self, msg: AddTasks) -> None:
        self.waiting.append((msg.rank, msg.req, msg.tasks))

    def step(self) -> bool:
        """Take local requests and start the next write; True if any."""
        did = False
        if self.chan is not None:
            for req in self.chan.poll():
                self.waiting.append((LOCAL, req.id, req.tasks))
                did = True
        if self.waiting and not self.calls.busy("adds"):
            batch, self.waiting = self.waiting, []
            self.calls.start("adds", write, self.store, batch, then=self._answer,
                             failed=lambda exc: self._refuse(batch, exc))
            did = True
        return did

    def _refuse(self, batch: list[Pending], exc: BalsamError) -> None:
        # Every waiting task must get an answer, even when the write itself failed.
        log.error("could not add tasks for running tasks: %s", exc)
        self._answer([(rank, req, (), f"the launcher could not add them: {exc}")
                      for rank, req, _tasks in batch])

    def _answer(self, answers: list[Answer]) -> None:
        by_rank: dict[int, list[tuple[int, tuple[int, ...], str]]] = {}
        for rank, req, ids, error in answers:
            self.added += len(ids)
            if error:
                log.warning("a task's add_tasks was refused: %s", error)
            if rank == LOCAL:
                if self.chan is not None:
                    self.chan.reply(req, ids, error)
            else:
                by_rank.setdefault(rank, []).append((req, ids, error))
        for rank, added in by_rank.items():
            self.answer(rank, tuple(added))
