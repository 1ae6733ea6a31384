"""One node's side of issue 7: holds for multi-node tasks, GPU visibility, the launch
prefix of multi-rank tasks, and the app's pre/postprocess phases — real processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from balsam_mpi.node.node import Node, prepost
from balsam_mpi.protocol import Assign, EndKind, RunOrder
from tests.unit.test_node import run_until

ENV = {"PATH": "/usr/bin:/bin"}


def order(tmp_path: Path, i: int, argv: tuple[str, ...], **kw: object) -> RunOrder:
    return RunOrder(i, 1, argv, str(tmp_path / str(i)), **kw)  # type: ignore[arg-type]


def test_a_hold_takes_the_whole_node_until_released(tmp_path: Path) -> None:
    node = Node(environ=ENV, gpus=2, die_with_parent=False)
    big = order(tmp_path, 7, ("true",), num_nodes=2, gpus=2, gpus_per_rank=1,
               ranks_per_node=2)
    node.apply(Assign(1, hold=(big,)))
    assert node.free() == 0.0 and node.busy() and node.res.pool.free == 0
    assert node.report(1).running == 1  # the leader sees it busy, not idle
    node.apply(Assign(2, release=(7,)))
    assert node.poked and node.free() == 1.0 and node.res.pool.free == 2
    assert not node.busy()
    node.close()


def test_gpu_tasks_see_only_their_devices(tmp_path: Path) -> None:
    node = Node(environ={**ENV, "BALSAM_GPU_VENDOR": "amd"}, gpus=2, die_with_parent=False)
    tasks = tuple(order(tmp_path, i, ("sh", "-c", "echo $ROCR_VISIBLE_DEVICES"), need=0.25,
                       gpus=1, env=(("ROCR_VISIBLE_DEVICES", "0,1"),)) for i in range(3))
    node.apply(Assign(1, tasks))
    node.step()
    assert len(node.running) == 2 and len(node.queue) == 1  # two GPUs, two tasks
    run_until(node, 3)
    seen = [(tmp_path / str(i) / "task.out").read_text().strip() for i in range(3)]
    assert sorted(seen[:2]) == ["0", "1"] and seen[2] in ("0", "1")  # the task's own env lost
    node.close()


def test_a_multi_rank_task_runs_under_the_launch_prefix(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # A stand-in "srun" that prints its argv shows the prefix without running MPI.
    fake = tmp_path / "bin" / "srun"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "$@"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("BALSAM_MPI_LAUNCHER", "srun")
    monkeypatch.setenv("PATH", f"{fake.parent}:/usr/bin:/bin")
    node = Node(environ=ENV, die_with_parent=False)
    node.apply(Assign(1, (order(tmp_path, 1, ("app", "x"), num_nodes=2, ranks_per_node=2,
                               hosts=("n1", "n2")),)))
    [fin] = run_until(node, 1)
    assert fin.kind == EndKind.DONE
    out = (tmp_path / "1" / "task.out").read_text().split()
    assert out[-2:] == ["app", "x"] and "--nodelist=n1,n2" in out and "--ntasks=4" in out
    node.close()


@pytest.mark.parametrize(("argv", "pre", "post", "flags", "kind", "files"), [
    (("true",), "echo p > p.txt", "echo q > q.txt", {}, EndKind.DONE_POST, ["p.txt", "q.txt"]),
    (("true",), "exit 4", "", {}, EndKind.PRE_FAILED, []),
    (("true",), "", "exit 2", {}, EndKind.DONE_POST_FAILED, []),
    (("false",), "", 'echo "$BALSAM_JOB_ERROR" > e.txt', {"post_on_error": True},
     EndKind.ERROR_HANDLED, ["e.txt"]),
    (("false",), "", "exit 75", {"post_on_error": True}, EndKind.ERROR_RETRY, []),
    (("false",), "", "exit 1", {"post_on_error": True}, EndKind.ERROR_HANDLER_FAILED, []),
    (("false",), "", "echo no > e.txt", {}, EndKind.ERROR, []),  # not asked on errors
    (("sleep", "5"), "", 'echo "$BALSAM_JOB_TIMEOUT" > t.txt', {"post_on_timeout": True},
     EndKind.TIMEOUT_HANDLED, ["t.txt"]),
])
def test_pre_and_postprocess_decide_the_kind(tmp_path: Path, argv: tuple[str, ...], pre: str,
                                             post: str, flags: dict[str, bool], kind: EndKind,
                                             files: list[str]) -> None:
    node = Node(environ=ENV, die_with_parent=False, kill_grace_s=1.0)
    node.apply(Assign(1, (order(tmp_path, 1, argv, preprocess=pre, postprocess=post,
                               wall_time_s=0.3, **flags),)))
    [fin] = run_until(node, 1)
    assert EndKind(fin.kind) == kind
    made = sorted(p.name for p in (tmp_path / "1").iterdir() if p.name.endswith(".txt"))
    assert made == sorted(files)
    for name in files:
        assert (tmp_path / "1" / name).read_text().strip() in ("p", "q", "TRUE")
    assert node.free() == 1.0 and not node.running  # the slot is free again
    node.close()


def test_outcome_rules() -> None:
    assert prepost.outcome(EndKind.DONE, 0) == EndKind.DONE_POST
    assert prepost.outcome(EndKind.DONE, 75) == EndKind.DONE_POST_FAILED  # no retry of a success
    assert prepost.outcome(EndKind.TIMEOUT, 75) == EndKind.TIMEOUT_RETRY
    assert prepost.outcome(EndKind.ERROR, 9) == EndKind.ERROR_HANDLER_FAILED


def test_a_task_wanting_more_gpus_than_the_node_has_fails_at_once(tmp_path: Path) -> None:
    node = Node(environ=ENV, gpus=1, die_with_parent=False)
    node.apply(Assign(1, (order(tmp_path, 1, ("true",), gpus=2), order(tmp_path, 2, ("true",)))))
    done = {f.id: f for f in run_until(node, 2)}
    assert done[1].kind == EndKind.ERROR and "--gpus-per-node" in done[1].tail
    assert done[2].kind == EndKind.DONE  # the queue behind it was not held up
    node.close()
