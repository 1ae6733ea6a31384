"""One node: packing, order, time limits, kills — real processes, no MPI."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from balsam_mpi.node.node import Node
from balsam_mpi.node.nullnode import NullNode
from balsam_mpi.protocol import Assign, EndKind, Finished, RunOrder


def order(tmp_path: Path, i: int, argv: tuple[str, ...], need: float = 1.0,
         wall_time_s: float = 0.0) -> RunOrder:
    return RunOrder(i, 1, argv, str(tmp_path / str(i)), need=need, wall_time_s=wall_time_s)


def run_until(node: Node, done: int, timeout: float = 20.0) -> list[Finished]:
    out: list[Finished] = []
    deadline = time.monotonic() + timeout
    while len(out) < done:
        assert time.monotonic() < deadline, f"only {len(out)} of {done} ended"
        node.step()
        out += node.changes.take()[1]
        node.wait(0.01)
    return out


def test_packing_limits_concurrency(tmp_path: Path) -> None:
    node = Node(environ={"PATH": "/usr/bin:/bin"})
    node.apply(Assign(1, tuple(order(tmp_path, i, ("sleep", "0.3"), need=0.5)
                               for i in range(4))))
    node.step()
    assert len(node.running) == 2 and len(node.queue) == 2
    assert node.free() == -1.0  # two running, two queued, all counted
    done = run_until(node, 4)
    assert sorted(f.id for f in done) == [0, 1, 2, 3]
    assert all(f.kind == EndKind.DONE and f.rc == 0 for f in done)
    assert node.report(1).acked == 1
    node.close()


def test_a_whole_node_task_is_not_overtaken(tmp_path: Path) -> None:
    node = Node(environ={"PATH": "/usr/bin:/bin"})
    node.apply(Assign(1, (order(tmp_path, 1, ("sleep", "0.2"), need=0.5),
                          order(tmp_path, 2, ("true",), need=1.0),
                          order(tmp_path, 3, ("true",), need=0.25))))
    node.step()
    assert list(node.running) == [1]  # 3 would fit, but 2 waits first (no starvation)
    done = run_until(node, 3)
    assert [f.id for f in done] == [1, 2, 3]
    node.close()


def test_own_wall_time_kills_as_timeout(tmp_path: Path) -> None:
    node = Node(environ={"PATH": "/usr/bin:/bin"}, kill_grace_s=0.5)
    node.apply(Assign(1, (order(tmp_path, 1, ("sleep", "30"), wall_time_s=0.2),)))
    t0 = time.monotonic()
    [f] = run_until(node, 1)
    assert f.kind == EndKind.TIMEOUT and time.monotonic() - t0 < 5
    node.close()


def test_kill_stops_running_and_drops_queued(tmp_path: Path) -> None:
    node = Node(environ={"PATH": "/usr/bin:/bin"}, kill_grace_s=0.5)
    node.apply(Assign(1, (order(tmp_path, 1, ("sleep", "30")),
                          order(tmp_path, 2, ("sleep", "30")))))
    node.step()
    node.apply(Assign(2, (), kill=(1, 2)))
    assert not node.queue  # never started: dropped, its claim is released at close
    [f] = run_until(node, 1)
    assert (f.id, f.kind) == (1, EndKind.KILLED)
    node.close()


def test_a_task_that_cannot_start_is_an_error_not_a_crash(tmp_path: Path) -> None:
    node = Node(environ={"PATH": "/usr/bin:/bin"})
    node.apply(Assign(1, (order(tmp_path, 1, ("no-such-program-xyz",)),)))
    [f] = run_until(node, 1)
    assert f.kind == EndKind.ERROR and f.rc != 0
    node.close()


def test_null_node_finishes_at_once(tmp_path: Path) -> None:
    node = NullNode()
    node.apply(Assign(1, tuple(order(tmp_path, i, ("x",), need=0.1) for i in range(20))))
    node.step()
    started, finished = node.changes.take()
    # Each "ends" the moment it starts, so the whole queue goes through in one step.
    assert [s.id for s in started] == [f.id for f in finished] == list(range(20))
    assert all(f.kind == EndKind.DONE for f in finished) and not node.busy()
    node.close()


def test_a_slow_wave_of_starts_is_spread_over_calls(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker's REPORTs are its proof of life (to its leader and its watchdog), so
    one call never starts for longer than ``start_budget_s``: here every start takes
    0.1 s of the node's clock (a slow file system), and a call stops after the one that
    crosses 0.25 s; the rest start in later calls, in order."""
    import balsam_mpi.node.node as node_mod

    clock = [1000.0]
    monkeypatch.setattr(node_mod.time, "monotonic", lambda: clock[0])
    node = Node(environ={"PATH": "/usr/bin:/bin"})
    node.start_budget_s = 0.25
    started: list[int] = []

    def slow_start(order: RunOrder) -> None:
        clock[0] += 0.1
        started.append(order.id)

    monkeypatch.setattr(node, "_start", slow_start)
    node.apply(Assign(1, tuple(order(tmp_path, i, ("true",), need=0.1) for i in range(7))))
    per_call = []
    while node.queue:
        before = len(started)
        assert node.start_ready()
        per_call.append(len(started) - before)
    assert per_call == [3, 3, 1] and started == list(range(7))
    node.start_budget_s = 0.0  # no bound: all at once
    node.apply(Assign(2, tuple(order(tmp_path, i, ("true",), need=0.1)
                               for i in range(10, 15))))
    assert node.start_ready() and started[-5:] == list(range(10, 15))
    node.close()
