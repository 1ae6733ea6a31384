"""The null node of ``--null-runner``: the leader and the protocol measured alone."""

from __future__ import annotations

import time
from typing import Any

from ..protocol import EndKind, Finished, RunOrder, Started
from .node import Node
from .shmleft import Sweeper


class NullNode(Node):
    """A node whose tasks end the moment they start, without a process: measures the
    leader and the protocol alone (``--null-runner``, benchmarks)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.shm = Sweeper(enabled=False)  # it starts no MPI job: nothing to sweep for

    def _start(self, order: RunOrder) -> None:
        now = time.time()
        self.changes.started.append(Started(order.id, order.epoch, now))
        self.changes.finished.append(
            Finished(order.id, order.epoch, int(EndKind.DONE), 0, now, now))
        self.done_share += order.need
        self.started_total += 1
        self.finished_total += 1

    def python_ready(self) -> bool:
        return True  # no interpreter, so no zygote to wait for (python_preload)
