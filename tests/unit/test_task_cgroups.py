"""The per-task cgroups (node/cgroup.py): names never collide within one launcher process,
even when an earlier set of task cgroups left one behind (the CI run that found it: a task
7 cgroup from an earlier test in the same process made the next task 7 run uncontained)."""

from __future__ import annotations

import os

import pytest

from balsam_mpi.node.cgroup import TaskCgroups


@pytest.fixture
def cgroups() -> TaskCgroups:
    found = TaskCgroups.detect()
    if found is None:
        pytest.skip("no delegated cgroup v2 here")
    return found


def test_a_cgroup_left_by_an_earlier_set_does_not_block_the_next(cgroups: TaskCgroups) -> None:
    left, fd = cgroups.create(7)
    os.close(fd)
    cgroups.close()  # the directory stays: its task cgroup was never released
    again = TaskCgroups.detect()
    assert again is not None
    try:
        name, fd2 = again.create(7)
        os.close(fd2)
        assert name != left and os.path.isdir(os.path.join(again.path, name))
        again.release(name)
    finally:
        os.rmdir(os.path.join(again.path, left))
        again.close()
    assert not os.path.exists(os.path.join(again.path, name))


def test_two_tasks_with_one_id_get_two_cgroups(cgroups: TaskCgroups) -> None:
    try:
        first, fd1 = cgroups.create(3)
        second, fd2 = cgroups.create(3)
        os.close(fd1)
        os.close(fd2)
        assert first != second
        cgroups.release(first)
        cgroups.release(second)
    finally:
        cgroups.close()
