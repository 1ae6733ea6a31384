"""The end of a batch job on one node: nothing starts after the stop, and a task that dies
of a signal while the node stops — or just before, since a scheduler signals every process
of the job at once, in any order — is cut (requeued for free), not failed."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from balsam_mpi.node.node import Node
from balsam_mpi.protocol import Assign, EndKind, Finished, RunOrder


def order(tmp_path: Path, i: int, argv: tuple[str, ...]) -> RunOrder:
    return RunOrder(i, 1, argv, str(tmp_path / str(i)), need=0.25)


def node_with(tmp_path: Path, *argvs: tuple[str, ...], hold_s: float = 5.0) -> Node:
    node = Node(environ={"PATH": "/usr/bin:/bin"}, kill_grace_s=0.5, signal_hold_s=hold_s)
    node.apply(Assign(1, tuple(order(tmp_path, i, a) for i, a in enumerate(argvs, 1))))
    node.step()
    return node


def ends(node: Node, n: int, timeout: float = 10.0) -> list[Finished]:
    out: list[Finished] = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        assert time.monotonic() < deadline, f"only {len(out)} of {n} ended: {out}"
        node.step()
        out += node.changes.take()[1]
        node.wait(0.01)
    return out


def wait_file(path: Path, timeout: float = 10.0) -> None:
    """Until the task says it is ready (its trap is set), however loaded the machine."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def wait_reaped(node: Node, task_id: int, timeout: float = 10.0) -> None:
    """Until the node has noticed the task's process is gone."""
    deadline = time.monotonic() + timeout
    while task_id in node.running:
        assert time.monotonic() < deadline
        node.step()
        node.wait(0.01)


def test_a_stopping_node_starts_nothing_queued_or_newly_assigned(tmp_path: Path) -> None:
    node = node_with(tmp_path, ("sleep", "30"))
    node.apply(Assign(2, tuple(order(tmp_path, i, ("true",)) for i in range(10, 20))))
    node.begin_stop()
    node.step()
    node.apply(Assign(3, (order(tmp_path, 30, ("true",)),)))
    node.step()
    assert list(node.running) == [1]
    assert not node.queue  # dropped: never started, their claims go back at the close
    assert not (tmp_path / "10").exists() and not (tmp_path / "30").exists()
    node.close()


def test_a_signal_death_while_stopping_is_cut(tmp_path: Path) -> None:
    node = node_with(tmp_path, ("sleep", "30"), ("sleep", "30"))
    node.begin_stop()
    for proc in list(node.running.values()):
        os.killpg(proc.pid, signal.SIGTERM)  # the scheduler, not the node, kills them
    done = ends(node, 2)
    assert sorted((f.id, f.kind) for f in done) == [(1, EndKind.CUT), (2, EndKind.CUT)]
    node.close()


def test_a_signal_death_just_before_the_stop_is_cut(tmp_path: Path) -> None:
    node = node_with(tmp_path, ("sleep", "30"))
    os.killpg(node.running[1].pid, signal.SIGUSR1)  # arrives before the launcher's own
    wait_reaped(node, 1)
    assert not node.changes.finished  # held: the stop may be on its way
    assert node.busy()  # the slot stays taken while the death is held
    node.begin_stop()
    [fin] = ends(node, 1)
    assert (fin.kind, fin.rc) == (EndKind.CUT, -signal.SIGUSR1)
    node.close()


def test_a_signal_death_with_no_stop_is_an_error_after_the_hold(tmp_path: Path) -> None:
    node = node_with(tmp_path, ("sleep", "30"), hold_s=0.3)
    os.killpg(node.running[1].pid, signal.SIGTERM)
    [fin] = ends(node, 1)
    assert (fin.kind, fin.rc) == (EndKind.ERROR, -signal.SIGTERM)
    assert not node.busy()
    node.close()


def test_a_shell_that_reports_the_signal_in_its_exit_code_is_held_too(tmp_path: Path) -> None:
    # `sh -c 'sleep 30; exit'` would exit 128+15 when its child is killed by TERM.
    node = node_with(tmp_path, ("sh", "-c", "sleep 30 & wait $!; exit 143"))
    os.killpg(node.running[1].pid, signal.SIGTERM)
    wait_reaped(node, 1)
    assert not node.changes.finished
    node.begin_stop()
    [fin] = ends(node, 1)
    assert fin.kind == EndKind.CUT
    node.close()


def test_an_ordinary_failure_is_not_held(tmp_path: Path) -> None:
    node = node_with(tmp_path, ("sh", "-c", "exit 3"))
    [fin] = ends(node, 1, timeout=3.0)
    assert (fin.kind, fin.rc) == (EndKind.ERROR, 3)
    node.close()


def test_work_that_finished_while_stopping_is_done(tmp_path: Path) -> None:
    node = node_with(tmp_path, ("sh", "-c", "trap 'exit 0' TERM; touch ready; "
                                            "sleep 30 & wait $!"))
    wait_file(tmp_path / "1" / "ready")
    node.begin_stop()
    os.killpg(node.running[1].pid, signal.SIGTERM)
    [fin] = ends(node, 1)
    assert (fin.kind, fin.rc) == (EndKind.DONE, 0)
    node.close()


def test_cut_all_after_the_stop_uses_the_short_grace(tmp_path: Path) -> None:
    # A task that ignores TERM: the node must SIGKILL it within the stop's grace, so the
    # launcher can close its batch job before the scheduler's own SIGKILL.
    node = Node(environ={"PATH": "/usr/bin:/bin"}, kill_grace_s=30.0, stop_grace_s=0.3)
    node.apply(Assign(1, (order(tmp_path, 1, ("sh", "-c",
                                             "trap '' TERM; touch ready; sleep 30")),)))
    node.step()
    wait_file(tmp_path / "1" / "ready")
    node.begin_stop()
    node.cut_all()
    [fin] = ends(node, 1)  # within its 10 s watchdog, though kill_grace_s is 30 s
    assert (fin.kind, fin.rc) == (EndKind.CUT, -signal.SIGKILL)
    node.close()
