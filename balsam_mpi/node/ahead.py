"""Queued tasks' directories and output files, opened while the node waits.

A slot that frees starts its next task with a spawn (or, for a Python call, a message)
alone when the task's directory and ``task.out``/``task.err`` are already open: at the
end of a wave, 16 slots freeing at once no longer have the 16th wait for the other 15
directories. That matters wherever making a file is slow: a parallel file system, or an
ext4 whose creates cost 20–700 µs of CPU from one hour to the next on the development
machine (docs/launcher.md, *Task processes*). The node's wait (``Node.wait``)
opens them one at a time, between looks at its tasks, for the head of its queue, exactly
as a start would (``taskplace.open_task_dir``: the walk from ``data/``, the same refusals,
which are kept and raised at the task's start). What left the queue without starting —
killed, given back, dropped at the stop — is closed at the next look; a stopping node
opens nothing ahead. A task with stage-in or a preprocess is opened at its start, as
before: its directory must show the linked inputs and the preprocess's outputs first; a
Python call without a directory of its own has nothing to make.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice

from ..protocol import RunOrder
from . import taskplace

AHEAD = 32  # queued tasks opened ahead at most (three descriptors each)
PER_WAIT = 4  # opened per wait before the node looks at its messages (~0.1 ms each)

Opened = tuple[int, int, int] | taskplace.StartError  # (directory, task.out, task.err)


class Ahead:
    def __init__(self) -> None:
        self.ready: dict[int, Opened] = {}

    def take(self, order: RunOrder) -> tuple[int, int, int] | None:
        """The task's descriptors if they were opened ahead (the caller owns them now);
        raises what opening them raised."""
        ready = self.ready.pop(order.id, None)
        if isinstance(ready, taskplace.StartError):
            raise ready
        return ready

    def prepare(self, queue: Iterable[RunOrder]) -> bool:
        """Open the next queued task's directory and output files (from the head of the
        queue; tasks with stage-in or a preprocess start as usual), after closing what
        left the queue. True if it opened one (there may be more)."""
        wanted = [o for o in islice(queue, AHEAD)
                  if not o.inputs and not o.preprocess and o.own_dir]
        todo = [o for o in wanted if o.id not in self.ready]
        if len(self.ready) + len(todo) > len(wanted):
            keep = {o.id for o in wanted}
            for task_id in [t for t in self.ready if t not in keep]:
                _close(self.ready.pop(task_id))
        if not todo:
            return False
        order = todo[0]
        try:
            self.ready[order.id] = taskplace.open_task_dir(order)
        except taskplace.StartError as exc:  # raised again at its start, as without this
            self.ready[order.id] = exc
        return True

    def close(self) -> None:
        for ready in self.ready.values():
            _close(ready)
        self.ready.clear()


def _close(ready: Opened) -> None:
    if not isinstance(ready, taskplace.StartError):
        taskplace.close(ready)
