"""A worker whose leader has gone silent (worker.py, config.leader_silence_s): a frozen
leader renews no lease, so once it may run out another launcher may requeue the tasks
this node still runs. The worker cuts them and leaves after ``leader_silence_s`` without
a word — counted from the leader's first ASSIGN, since a leader's start-up (journal
replays, the database) may be long — and never while the leader answers. The clock is
the test's: each idle sleep of the worker advances it by the sleep."""

from __future__ import annotations

from typing import Any

import pytest

from balsam_mpi import worker as worker_mod
from balsam_mpi.launcher.config import Settings, leader_silence_s
from balsam_mpi.protocol import Assign, Bye, EndKind, RunOrder
from balsam_mpi.worker import Worker
from tests.unit.fakeclock import Clock
from tests.unit.slotkit import SlotNode
from tests.unit.test_worker_polls import ScriptedComm

pytestmark = pytest.mark.timeout(60)


class ScriptedNode(SlotNode):
    """Sleeps on the test's clock; ``script`` maps a clock time to a message from the
    leader delivered once that time has passed."""

    def __init__(self, comm: ScriptedComm, clock: Clock,
                 script: list[tuple[float, Any]]) -> None:
        super().__init__()
        self.comm, self.clock, self.script = comm, clock, sorted(script, key=lambda x: x[0])

    def wait(self, timeout: float) -> bool:
        self.clock.now += max(timeout, 0.001)
        while self.script and self.script[0][0] <= self.clock.now:
            self.comm.inbox.append(self.script.pop(0)[1])
        return False


def order(task_id: int) -> RunOrder:
    return RunOrder(task_id, 1, ("/bin/true",), "/nonexistent", need=0.5)


def ends_then_bye(comm: ScriptedComm) -> list[tuple[int, int]]:
    """(task, end kind) of every end the worker reported, its last message a BYE."""
    bye = comm.sent[-1]
    assert isinstance(bye, Bye)
    ends = [f for r in comm.sent if hasattr(r, "finished") for f in r.finished] + list(
        bye.report.finished)
    return sorted((f.id, f.kind) for f in ends)


def run(script: list[tuple[float, Any]], monkeypatch: pytest.MonkeyPatch,
        silence: float = 10.0) -> tuple[Worker, ScriptedComm, ScriptedNode, Clock]:
    clock = Clock()
    monkeypatch.setattr(worker_mod.time, "monotonic", clock)
    comm = ScriptedComm()
    node = ScriptedNode(comm, clock, script)
    worker = Worker(comm, node, report_interval_s=1.0, poll_cap_s=0.05,  # type: ignore[arg-type]
                    leader_silence_s=silence)
    worker.run()
    return worker, comm, node, clock


def test_a_silent_leader_makes_the_worker_cut_its_tasks_and_leave(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Answers every second for 30 s, then nothing: the leader froze at 130.
    script = [(101.0, Assign(1, (order(1), order(2))))]
    script += [(101.0 + k, Assign(1 + k, ())) for k in range(1, 30)]
    worker, comm, node, clock = run(script, monkeypatch)
    assert 140.0 < clock.now < 141.0  # 10 s after the last word, not before
    assert worker.stop_reason is not None and "said nothing for 10 s" in worker.stop_reason
    assert ends_then_bye(comm) == [(1, int(EndKind.CUT)), (2, int(EndKind.CUT))]
    assert not node.sim  # nothing runs here any more
    assert node.stopping  # and nothing would start


def test_no_silence_is_counted_before_the_first_assign(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A leader that takes 60 s to start, then sends one ASSIGN and freezes.
    worker, _comm, _node, clock = run([(160.0, Assign(1, (order(1),)))], monkeypatch)
    assert 170.0 < clock.now < 171.0


def test_the_default_bound_ends_the_tasks_before_the_lease_can_run_out() -> None:
    s = Settings()
    # Heard at T: the leader's lease runs out after T + lease/2 at the earliest.
    assert leader_silence_s(s) + s.kill_grace_s + s.heartbeat_s <= s.lease_s / 2
    assert leader_silence_s(s) >= 3 * s.report_interval_s
    tight = Settings(lease_s=8.0, kill_grace_s=2.0, heartbeat_s=1.0)
    assert leader_silence_s(tight) == 3 * tight.report_interval_s  # the floor


class FakeWatchdog:
    """A watchdog (launcher/watchdog.py) that cuts at ``cut_after`` on the test's clock
    and notes every proof of life the worker gives it."""

    def __init__(self, clock: Clock, cut_after: float) -> None:
        self.clock, self.cut_after = clock, cut_after
        self.beats: list[float] = []

    def beat(self, monotonic: float) -> None:
        self.beats.append(monotonic)

        self.asked_after_cut = 0

    def newly_cut(self) -> float | None:
        if self.clock.now < self.cut_after:
            return None
        self.asked_after_cut += 1
        return self.clock.now - self.cut_after if self.asked_after_cut == 1 else None


def test_a_worker_whose_watchdog_cut_writes_its_tasks_as_cut_and_leaves(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Its loop froze and the watchdog killed the tasks: woken, the worker drains with a
    cut, so those deaths are cuts (requeued, nothing counted), not errors, and it says
    BYE. Until then each REPORT it sent was a proof of life."""
    clock = Clock()
    monkeypatch.setattr(worker_mod.time, "monotonic", clock)
    comm = ScriptedComm()
    script = [(101.0, Assign(1, (order(1), order(2))))]
    script += [(101.0 + k, Assign(1 + k, ())) for k in range(1, 30)]  # a live leader
    node = ScriptedNode(comm, clock, script)
    dog = FakeWatchdog(clock, cut_after=105.0)
    worker = Worker(comm, node, report_interval_s=1.0, poll_cap_s=0.05,  # type: ignore[arg-type]
                    leader_silence_s=10.0, watchdog=dog)  # type: ignore[arg-type]
    worker.run()
    assert 105.0 <= clock.now < 106.0
    assert worker.stop_reason == "this rank was frozen: its watchdog cut its tasks"
    assert ends_then_bye(comm) == [(1, int(EndKind.CUT)), (2, int(EndKind.CUT))]
    reports = [m for m in comm.sent if hasattr(m, "finished")]
    assert len(dog.beats) >= len(reports) - 1 >= 3  # every REPORT but the BYE's
