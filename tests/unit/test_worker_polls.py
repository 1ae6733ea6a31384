"""The worker rank's idle sleeps (worker.py): a capped backoff, except that until its
first ASSIGN it polls every few milliseconds, so no rank starts its first wave up to the
cap later than the others."""

from __future__ import annotations

from typing import Any

from balsam_mpi.node.nullnode import NullNode
from balsam_mpi.protocol import Assign, Drain
from balsam_mpi.worker import FIRST_ASSIGN_POLL_S, Worker


class ScriptedComm:
    """Rank 1's side of MPI: nothing to read until the test's script says so."""

    rank = 1

    def __init__(self) -> None:
        self.inbox: list[Any] = []
        self.sent: list[Any] = []
        self.gone: dict[int, str] = {}

    def send(self, dest: int, msg: Any) -> None:
        self.sent.append(msg)

    def poll(self, source: int | None = None) -> tuple[int, Any] | None:
        return (0, self.inbox.pop(0)) if self.inbox else None

    def progress(self) -> None:
        pass

    def flush_sends(self, timeout: float | None = None) -> None:
        pass


class CountingNode(NullNode):
    """Records every idle sleep instead of sleeping; the script delivers an ASSIGN after
    40 sleeps and a DRAIN after 80."""

    def __init__(self, comm: ScriptedComm) -> None:
        super().__init__(die_with_parent=False)
        self.comm = comm
        self.sleeps: list[float] = []

    def wait(self, timeout: float) -> bool:
        self.sleeps.append(timeout)
        if len(self.sleeps) == 40:
            self.comm.inbox.append(Assign(1, ()))
        if len(self.sleeps) == 80:
            self.comm.inbox.append(Drain("done", 0.0))
        return False


def test_a_worker_polls_fast_until_its_first_assign_then_backs_off() -> None:
    comm = ScriptedComm()
    node = CountingNode(comm)
    Worker(comm, node, poll_cap_s=0.05, report_interval_s=3600.0).run()  # type: ignore[arg-type]
    before, after = node.sleeps[:40], node.sleeps[40:80]
    assert max(before) <= FIRST_ASSIGN_POLL_S
    assert max(after) > 0.02  # the usual backoff, up to its cap, once work has come
