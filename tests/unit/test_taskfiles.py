"""A task's directory and output files (runner.open_task_dir, base/taskfiles): the walk
from data/ keeps the workflow and shard directories open between tasks, so the next task
of a shard costs only its own directory and files — and a held directory is checked by
name again before each use, so what was moved, swapped for a link or handed to an
untrusted owner since is walked afresh and refused as by the full walk."""

from __future__ import annotations

import os
import pwd
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from balsam_mpi.node import runner
from balsam_mpi.protocol import RunOrder


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    path = tmp_path / "p" / "data"
    (path / "wf").mkdir(parents=True)
    return path


def order(data: Path, i: int, wf: str = "wf") -> RunOrder:
    return RunOrder(i, 1, ("true",), str(data / wf / str(i // 1000) / f"t_{i}"))


def opened(data: Path, i: int, wf: str = "wf") -> Path:
    for fd in runner.open_task_dir(order(data, i, wf)):
        os.close(fd)
    return data / wf / str(i // 1000) / f"t_{i}"


def count_calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Count the file-system calls made from now on (failed ones under 'NAME failed')."""
    seen: Counter[str] = Counter()

    def wrap(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            seen[name] += 1
            try:
                return real(*args, **kwargs)
            except OSError:
                seen[f"{name} failed"] += 1
                raise
        return call

    for name in ("open", "mkdir", "stat", "fstat", "close", "fchmod", "dup"):
        monkeypatch.setattr(os, name, wrap(name, getattr(os, name)))
    return seen


def test_the_next_task_of_a_shard_opens_only_its_own_directory_and_files(
        data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened(data, 1)
    seen = count_calls(monkeypatch)
    where = opened(data, 2)
    monkeypatch.undo()
    assert (where / "task.out").is_file() and (where / "task.err").is_file()
    # Its directory (made first: no failed open) and its two files; the workflow and
    # shard directories are not opened again, only checked by name.
    assert seen["open"] == 3 and seen["mkdir"] == 1, seen
    assert not any(k.endswith("failed") for k in seen), seen


def test_a_held_shard_swapped_for_a_link_is_refused(data: Path, tmp_path: Path) -> None:
    opened(data, 1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.rename(data / "wf" / "0", tmp_path / "aside")
    (data / "wf" / "0").symlink_to(elsewhere)
    with pytest.raises(runner.StartError, match=r"data/wf/0: it is a symbolic link"):
        opened(data, 2)
    assert list(elsewhere.iterdir()) == [] and not (tmp_path / "aside" / "t_2").exists()


def test_a_workflow_directory_moved_aside_and_made_again_is_walked_afresh(
        data: Path, tmp_path: Path) -> None:
    opened(data, 1)
    os.rename(data / "wf", tmp_path / "old-wf")
    (data / "wf").mkdir()
    where = opened(data, 2)
    assert (where / "task.out").is_file()  # at the task's own path, not in the moved one
    assert not (tmp_path / "old-wf" / "0" / "t_2").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_a_held_shard_given_to_an_untrusted_owner_is_refused(data: Path) -> None:
    opened(data, 1)
    os.chown(data / "wf" / "0", pwd.getpwnam("nobody").pw_uid, -1)
    with pytest.raises(runner.StartError, match=r"data/wf/0: it is owned by nobody"):
        opened(data, 2)


def test_a_task_directory_planted_as_a_link_is_refused_and_a_real_one_reused(
        data: Path, tmp_path: Path) -> None:
    opened(data, 1)
    (data / "wf" / "0" / "t_2").symlink_to(tmp_path)
    with pytest.raises(runner.StartError, match=r"data/wf/0/t_2: it is a symbolic link"):
        opened(data, 2)
    where = opened(data, 1)  # a retry: its directory and files are reused
    assert sorted(p.name for p in where.iterdir()) == ["task.err", "task.out"]


def test_many_workflows_keep_a_bounded_number_of_directories_open(data: Path) -> None:
    before = len(os.listdir("/proc/self/fd"))
    for i in range(40):
        (data / f"w{i}").mkdir()
        opened(data, i, wf=f"w{i}")
    assert len(os.listdir("/proc/self/fd")) - before <= 16
