"""The worker rank's idle sleeps (worker.py): a capped backoff, except that until its
first ASSIGN it polls every few milliseconds, so no rank starts its first wave up to the
cap later than the others; so does a node that has just begun to want work, for
``HUNGRY_FOR_S``; and a node that wants nothing from the leader sleeps for the cap (an
end of one of its tasks wakes it). Time here is a fake clock that each sleep advances."""

from __future__ import annotations

import time
from typing import Any

import pytest

from balsam_mpi.node.nullnode import NullNode
from balsam_mpi.protocol import Assign, Drain, RunOrder
from balsam_mpi.worker import FIRST_ASSIGN_POLL_S, HUNGRY_FOR_S, HUNGRY_POLL_S, Worker


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


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(time, "monotonic", fake)
    return fake


class CountingNode(NullNode):
    """Records every idle sleep instead of sleeping (the fake clock moves on by it); the
    script delivers an ASSIGN after 40 sleeps and a DRAIN after 400."""

    def __init__(self, comm: ScriptedComm, clock: Clock) -> None:
        super().__init__(die_with_parent=False)
        self.comm = comm
        self.clock = clock
        self.sleeps: list[float] = []

    def wait(self, timeout: float) -> bool:
        self.sleeps.append(timeout)
        self.clock.now += timeout
        if len(self.sleeps) == 40:
            self.comm.inbox.append(Assign(1, ()))
        if len(self.sleeps) == 400:
            self.comm.inbox.append(Drain("done", 0.0))
        return False


def test_a_worker_polls_fast_until_its_first_assign_then_backs_off(clock: Clock) -> None:
    comm = ScriptedComm()
    node = CountingNode(comm, clock)
    Worker(comm, node, poll_cap_s=0.05, report_interval_s=3600.0).run()  # type: ignore[arg-type]
    before, after = node.sleeps[:40], node.sleeps[40:400]
    assert max(before) <= FIRST_ASSIGN_POLL_S
    # It wants work (a free node, nothing queued): fast polls for HUNGRY_FOR_S, in case
    # the leader's answer is on its way, then the usual backoff up to its cap.
    hungry = int(HUNGRY_FOR_S / HUNGRY_POLL_S)
    assert max(after[:hungry - 2]) <= HUNGRY_POLL_S
    assert max(after) == 0.05


def _order(task_id: int) -> RunOrder:
    return RunOrder(id=task_id, epoch=1, argv=("/bin/true",), cwd="/tmp", need=0.5)


class FedNode(CountingNode):
    """Both slots busy and a task queued behind them: nothing is wanted from the leader
    until a task ends. Sleep 60 is woken by an end that leaves a slot free and the queue
    empty (the queued task went to that slot, then the other one ended too)."""

    def __init__(self, comm: ScriptedComm, clock: Clock) -> None:
        super().__init__(comm, clock)
        self.res.take(1, 0.5)
        self.res.take(2, 0.5)
        self.queue.append(_order(3))
        self.woken = False

    def wait(self, timeout: float) -> bool:
        super().wait(timeout)
        if len(self.sleeps) == 60:
            self.queue.clear()
            self.res.release(1)
            self.woken = True
            return True
        return False

    def step(self) -> bool:
        woken, self.woken = self.woken, False
        return woken


def test_a_fed_node_sleeps_until_an_end_and_a_hungry_one_polls_for_its_assign(
        clock: Clock) -> None:
    # Every slot busy and work queued here: an end wakes the rank's wait (the node's
    # epoll), and it reads the leader's ASSIGN then. Polling at 1, 2, 4 ms for that
    # ASSIGN made a Python call of 0.1 s cost its rank ~5 turns of its loop (failed
    # before: the fed node's sleeps began at 1 ms). A node with a free slot and nothing
    # queued wants the ASSIGN at once and still polls fast.
    comm = ScriptedComm()
    node = FedNode(comm, clock)
    Worker(comm, node, poll_cap_s=0.05, report_interval_s=3600.0).run()  # type: ignore[arg-type]
    fed, hungry = node.sleeps[40:60], node.sleeps[60:100]
    assert min(fed) == 0.05
    assert max(hungry) <= HUNGRY_POLL_S
    assert node.sleeps[:40] == [min(s, FIRST_ASSIGN_POLL_S) for s in node.sleeps[:40]]


class RequestInFlight:
    """A task_api channel with one request on its way to the leader (node/channel.py)."""

    in_flight = True

    def poll(self) -> list[object]:
        return []


def test_a_fed_node_with_a_task_api_request_in_flight_polls_for_its_answer(
        clock: Clock) -> None:
    # A task waits, blocked, for the leader's answer to its request (the ASSIGN that
    # carries it): that node wants something from the leader even with every slot busy,
    # so it polls as before instead of sleeping for the cap.
    comm = ScriptedComm()
    node = FedNode(comm, clock)
    worker = Worker(comm, node, poll_cap_s=0.05,  # type: ignore[arg-type]
                    report_interval_s=3600.0, chan=RequestInFlight())  # type: ignore[arg-type]
    worker.run()
    assert node.sleeps[40:44] == [0.001, 0.002, 0.004, 0.008]
