"""Where a Python call runs (pypool, taskplace): its task directory, made and opened by
the node as for a process task, never through a planted link; queued calls' directories
opened ahead while the node waits; calls of an app without task directories, in their
workflow's directory with their output in memory."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from balsam_mpi.node.node import Node
from balsam_mpi.protocol import Assign, EndKind, RunOrder
from tests.unit.pykit import call, ok, python_node, run, until_ended

pytestmark = pytest.mark.timeout(120)


def _open_below(path: Path) -> list[str]:
    """This process's descriptors of what is inside ``path`` (the node holds the
    directories above a task's own open: base/taskfiles)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(f"{path}/"):
            found.append(target)
    return found


@pytest.fixture()
def node() -> Iterator[Node]:
    n = python_node()
    yield n
    n.close()


def test_a_planted_symlink_is_not_followed(node: Node, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("")
    (tmp_path / "t1").mkdir()
    (tmp_path / "t1/task.err").symlink_to(victim)
    out = run(node, call(tmp_path, 1, "say", text="x"))
    # Refused by the runner's own walk, as for a process task: one line, nothing written.
    assert out[1].rc == 127 and "planted" in out[1].tail and victim.read_text() == ""
    assert ok(run(node, call(tmp_path, 2, "noop"))[2]) is None


def test_a_symlink_planted_as_the_task_directory_is_not_entered(
        node: Node, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "t1").symlink_to(elsewhere)
    out = run(node, call(tmp_path, 1, "say", text="x"))[1]
    assert out.rc == 127 and "planted" in out.tail and list(elsewhere.iterdir()) == []


def test_queued_calls_have_their_directories_made_while_they_wait(
        node: Node, tmp_path: Path) -> None:
    """While a node's slots are busy, it opens the next calls' directories and output
    files, so that a slot that frees starts its next call with a message alone."""
    busy = [call(tmp_path, i, "sleep", s=0.5) for i in range(1, 5)]  # 4 slots of 0.25
    queued = [call(tmp_path, i, "where") for i in (5, 6)]
    node.apply(Assign(node.acked + 1, (*busy, *queued)))
    node.step()
    node.wait(0.01)  # the node's idle time
    assert sorted(node.running) == [1, 2, 3, 4]
    for i in (5, 6):
        assert sorted(p.name for p in (tmp_path / f"t{i}").iterdir()) == [
            "task.err", "task.out"]
    out = until_ended(node, set(range(1, 7)))
    assert ok(out[5])["cwd"] == str(tmp_path / "t5") and ok(out[6])["cwd"] == str(
        tmp_path / "t6")
    assert _open_below(tmp_path) == []


def test_a_queued_call_killed_or_given_back_keeps_no_descriptor(
        node: Node, tmp_path: Path) -> None:
    busy = [call(tmp_path, i, "sleep", s=0.3) for i in range(1, 5)]
    node.apply(Assign(node.acked + 1, (*busy, call(tmp_path, 5, "noop"),
                                       call(tmp_path, 6, "noop"))))
    node.step()
    node.wait(0.01)
    assert any("/t5/" in p for p in _open_below(tmp_path))
    node.kill([5], EndKind.KILLED)
    assert [o.id for o in node.give_back([6])] == [6]
    node.step()
    node.wait(0.01)
    assert not [p for p in _open_below(tmp_path) if "/t5/" in p or "/t6/" in p]
    out = until_ended(node, {1, 2, 3, 4})
    assert 5 not in out and 6 not in out


def test_a_link_planted_for_a_queued_call_fails_that_call_alone(
        node: Node, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "t5").symlink_to(tmp_path / "elsewhere")
    busy = [call(tmp_path, i, "sleep", s=0.2) for i in range(1, 5)]
    out = run(node, *busy, call(tmp_path, 5, "noop"), call(tmp_path, 6, "noop"))
    assert out[5].rc == 127 and "symbolic link" in out[5].tail
    assert list((tmp_path / "elsewhere").iterdir()) == []
    assert all(ok(out[i]) == 0.2 for i in range(1, 5)) and ok(out[6]) is None


def test_a_stopping_node_opens_no_queued_calls_directory(node: Node, tmp_path: Path) -> None:
    busy = [call(tmp_path, i, "sleep", s=0.2) for i in range(1, 5)]
    node.apply(Assign(node.acked + 1, (*busy, call(tmp_path, 5, "noop"))))
    node.step()
    node.begin_stop(cut=False)  # drain: what runs finishes, nothing more starts
    node.wait(0.01)
    assert not (tmp_path / "t5").exists()
    out = until_ended(node, {1, 2, 3, 4})
    assert all(ok(out[i]) == 0.2 for i in range(1, 5)) and 5 not in out


def test_a_queued_call_is_opened_ahead_and_runs_in_that_directory(node: Node,
                                                                   tmp_path: Path) -> None:
    node.apply(Assign(node.acked + 1, (call(tmp_path, 1, "sleep", need=1.0, s=0.3),
                                       call(tmp_path, 2, "say", need=1.0, text="hi"))))
    node.step()
    assert list(node.running) == [1]
    node.wait(0.0)  # the slot is busy: the next call's directory is opened meanwhile
    assert sorted(p.name for p in (tmp_path / "t2").iterdir()) == ["task.err", "task.out"]
    ended = until_ended(node, {1, 2})
    ok(ended[2])
    assert (tmp_path / "t2" / "task.out").read_text() == "hi\nchild: hi\n"


def test_a_call_without_a_directory_runs_in_its_workflows_and_keeps_only_its_tail(
        node: Node, tmp_path: Path) -> None:
    """An app with task_dirs off: the call's cwd is its workflow's directory, its output
    is in memory (the failure tail is kept as for any task), and nothing is made for it."""
    data = tmp_path / "data"
    wf = data / "wf"
    wf.mkdir(parents=True)

    def nodir(i: int, fn: str, **kwargs: Any) -> RunOrder:
        return call(tmp_path, i, fn, own_dir=False, **kwargs)._replace(
            cwd=str(wf / "0" / f"t_{i}"))

    ended = run(node, nodir(1, "where"), nodir(2, "say", text="hello"),
                nodir(3, "boom", msg="no luck"))
    assert ok(ended[1])["cwd"] == str(wf)
    assert ok(ended[2]) == 5
    assert ended[3].kind == EndKind.ERROR and "no luck" in ended[3].tail
    assert sorted(p.name for p in wf.iterdir()) == []  # no shard, no task directory
    before = len(os.listdir("/proc/self/fd"))
    ok(run(node, nodir(4, "noop"))[4])
    assert len(os.listdir("/proc/self/fd")) == before  # its descriptors were closed


def test_a_planted_link_at_the_workflow_of_a_call_without_a_directory_is_refused(
        node: Node, tmp_path: Path) -> None:
    """The workflow directory is walked as a task's own is: a link planted there fails
    the call with one line, and nothing is made or run through it."""
    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    data.mkdir()
    elsewhere.mkdir()
    (data / "wf").symlink_to(elsewhere)
    order = call(tmp_path, 1, "where", own_dir=False)._replace(cwd=str(data / "wf" / "0" / "t_1"))
    [fin] = run(node, order).values()
    assert fin.kind == EndKind.ERROR and "symbolic link" in fin.tail
    assert "\n" not in fin.tail.strip()
    assert list(elsewhere.iterdir()) == []
