"""The leader's side of ``task_api``: tasks that running tasks add, written in batches.

Requests come from workers (ADD_TASKS over MPI) and from the tasks of the leader's own
node (its :class:`~balsam_mpi.taskchan.TaskChannel`). Whatever waits is written in one
database-thread call through the leader's own connection (each request its own
transaction, with ``Client.add_tasks``' checks and DAG planning), then every request is
answered with its ids: a worker gets them in an ASSIGN, a local task on its socket.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from typing import Any

from .buffer import DbThread
from .dispatch import Dispatcher
from .errors import BalsamError
from .node import Node
from .project import Project
from .protocol import LOCAL, AddTasks
from .store import Store
from .taskadd import TaskWriter
from .taskchan import TaskChannel

log = logging.getLogger(__name__)

# (rank or LOCAL, request id, tasks) in; (rank, request id, ids, error) out.
Pending = tuple[int, int, tuple[dict[str, Any], ...]]
Answer = tuple[int, int, tuple[int, ...], str]


def write(store: Store, project: Project, batch: list[Pending]) -> list[Answer]:
    """Add every request's tasks (database thread); one request's error is its own."""
    writer = TaskWriter(store.conn)
    out: list[Answer] = []
    for rank, req, tasks in batch:
        try:
            out.append((rank, req, tuple(writer.add(tasks)), ""))
        except BalsamError as exc:
            out.append((rank, req, (), str(exc)))
    return out


class AddService:
    def __init__(self, db: DbThread, project: Project, nodes: Dispatcher, local: Node,
                 enabled: bool = True) -> None:
        self.db = db
        self.project = project
        self.nodes = nodes
        self.waiting: list[Pending] = []
        self.writing: tuple[list[Pending], Future[list[Answer]]] | None = None
        self.added = 0
        self.chan: TaskChannel | None = None
        if enabled:
            self.chan = TaskChannel(0)
            local.extra_env.update(self.chan.env())
            local.watch(self.chan.fileno())

    def received(self, msg: AddTasks) -> None:
        self.waiting.append((msg.rank, msg.req, msg.tasks))

    def step(self) -> bool:
        """Take local requests, answer written ones, start the next write; True if any."""
        did = False
        if self.chan is not None:
            for req in self.chan.poll():
                self.waiting.append((LOCAL, req.id, req.tasks))
                did = True
        if self.writing is not None and self.writing[1].done():
            (batch, future), self.writing = self.writing, None
            did = True
            self._answer(batch, future)
        if self.writing is None and self.waiting:
            batch, self.waiting = self.waiting, []
            self.writing = (batch, self.db.submit(write, self.db.store, self.project, batch))
            did = True
        return did

    def _answer(self, batch: list[Pending], future: Future[list[Answer]]) -> None:
        try:
            answers = future.result()
        except Exception as exc:
            # Every waiting task must get an answer, even when the write itself failed.
            log.error("could not add tasks for running tasks: %s", exc)
            answers = [(rank, req, (), f"the launcher could not add them: {exc}")
                       for rank, req, _tasks in batch]
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
            self.nodes.answer_adds(rank, tuple(added))

    def close(self) -> None:
        if self.chan is not None:
            self.chan.close()
