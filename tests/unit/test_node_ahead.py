"""Queued tasks' directories and output files, opened while the node waits (node/ahead.py):
process tasks as Python calls, so a slot that frees starts its next task with a spawn
alone. Real processes, no MPI."""

from __future__ import annotations

import os
from pathlib import Path

from balsam_mpi.node.node import Node
from balsam_mpi.protocol import Assign, EndKind, RunOrder
from tests.unit.test_node import run_until


def order(tmp_path: Path, i: int, argv: tuple[str, ...], **kw: object) -> RunOrder:
    return RunOrder(i, 1, argv, str(tmp_path / f"t{i}"), **kw)  # type: ignore[arg-type]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_queued_process_task_has_its_directory_and_outputs_before_it_starts(
        tmp_path: Path) -> None:
    node = Node(environ={"PATH": "/usr/bin:/bin"})
    node.apply(Assign(1, (order(tmp_path, 1, ("sleep", "0.3")),
                          order(tmp_path, 2, ("sh", "-c", "echo two; echo err >&2")))))
    node.step()
    assert list(node.running) == [1] and [o.id for o in node.queue] == [2]
    node.wait(0.0)  # the slot is busy: the wait opens the next task's directory
    queued = tmp_path / "t2"
    assert sorted(p.name for p in queued.iterdir()) == ["task.err", "task.out"]
    assert 2 not in node.running
    done = run_until(node, 2)
    assert sorted((f.id, f.kind) for f in done) == [(1, EndKind.DONE), (2, EndKind.DONE)]
    # The task wrote through the descriptors opened ahead, not into files made again.
    assert (queued / "task.out").read_text() == "two\n"
    assert (queued / "task.err").read_text() == "err\n"
    node.close()


def test_a_planted_link_at_a_queued_task_is_refused_at_its_start(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "t2").symlink_to(elsewhere)
    node = Node(environ={"PATH": "/usr/bin:/bin"})
    node.apply(Assign(1, (order(tmp_path, 1, ("sleep", "0.2")),
                          order(tmp_path, 2, ("true",)),
                          order(tmp_path, 3, ("true",)))))
    node.step()
    node.wait(0.0)
    assert not list(elsewhere.iterdir())  # nothing made through the link
    done = {f.id: f for f in run_until(node, 3)}
    assert done[2].kind == EndKind.ERROR and "symbolic link" in done[2].tail
    assert done[1].kind == done[3].kind == EndKind.DONE  # the node kept serving
    node.close()


def test_what_leaves_the_queue_unstarted_is_closed(tmp_path: Path) -> None:
    node = Node(environ={"PATH": "/usr/bin:/bin"}, kill_grace_s=0.5)
    before = open_fds()
    node.apply(Assign(1, (order(tmp_path, 1, ("sleep", "30")),
                          *(order(tmp_path, i, ("true",)) for i in (2, 3, 4)))))
    node.step()
    for _ in range(3):
        node.wait(0.0)
    opened = open_fds()
    assert opened >= before + 9  # three queued tasks: a directory and two outputs each
    assert [o.id for o in node.give_back([2, 3])] == [2, 3]
    node.wait(0.0)  # the next look closes what left the queue
    assert open_fds() == opened - 6
    node.apply(Assign(2, (), kill=(1, 4)))
    run_until(node, 1)
    node.close()
    assert open_fds() <= before + 1  # the task's pidfd watcher may stay until collected


def test_close_closes_what_was_opened_ahead(tmp_path: Path) -> None:
    node = Node(environ={"PATH": "/usr/bin:/bin"}, kill_grace_s=0.5)
    before = open_fds()
    node.apply(Assign(1, tuple(order(tmp_path, i, ("sleep", "30")) for i in range(1, 5))))
    node.step()
    node.wait(0.0)
    node.close()
    assert open_fds() <= before + 1


def test_a_task_with_a_preprocess_opens_at_its_start_as_before(tmp_path: Path) -> None:
    node = Node(environ={"PATH": "/usr/bin:/bin"})
    node.apply(Assign(1, (order(tmp_path, 1, ("sleep", "0.2")),
                          order(tmp_path, 2, ("true",), preprocess="true"))))
    node.step()
    node.wait(0.0)
    assert not (tmp_path / "t2" / "task.out").exists()
    done = run_until(node, 2)
    assert all(f.kind == EndKind.DONE for f in done)
    node.close()
