"""Removing the MPICH start-up segments killed jobs leave (node/shmleft.py): only regular
files of that name, this user's, old enough, that no process holds; and when a node sweeps."""

from __future__ import annotations

import mmap
import os
import time
from pathlib import Path

import pytest

from balsam_mpi.node import shmleft
from balsam_mpi.node.node import Node
from balsam_mpi.protocol import EndKind
from tests.unit.test_node import order, run_until

OLD = time.time() - 3600


def _segment(directory: Path, name: str, *, age_s: float = 3600.0) -> Path:
    path = directory / name
    path.write_bytes(b"\0" * 64)
    at = time.time() - age_s
    os.utime(path, (at, at))
    return path


def _no_holders(_directory: str, _proc: str) -> set[str]:
    return set()


def test_only_old_regular_files_of_mpichs_name_are_candidates(tmp_path: Path) -> None:
    _segment(tmp_path, "mpich_shm_1a2b_0")
    _segment(tmp_path, "mpich_shm_young_0", age_s=1.0)
    _segment(tmp_path, "other")
    _segment(tmp_path, "sem.mpich_shm_not_0")
    (tmp_path / "mpich_shm_dir_0").mkdir()
    (tmp_path / "mpich_shm_link_0").symlink_to(tmp_path / "other")
    assert shmleft.candidates(str(tmp_path)) == ["mpich_shm_1a2b_0"]
    assert sorted(shmleft.candidates(str(tmp_path), min_age_s=0.0)) == [
        "mpich_shm_1a2b_0", "mpich_shm_young_0"]


def test_open_mpis_segments_are_candidates_too(tmp_path: Path) -> None:
    # Open MPI 4.1's names, as a killed 2-rank job left them (host "vm", uid 0).
    _segment(tmp_path, "vader_segment.vm.0.7bfa0001.0")
    _segment(tmp_path, "vader_segment.vm.0.7bfa0001.1")
    _segment(tmp_path, "vader_segment.vm.0.7c000001.0", age_s=1.0)
    (tmp_path / "vader_segment.vm.0.link.0").symlink_to(tmp_path / "vader_segment.vm.0.7bfa0001.0")
    assert sorted(shmleft.candidates(str(tmp_path))) == [
        "vader_segment.vm.0.7bfa0001.0", "vader_segment.vm.0.7bfa0001.1"]
    assert sorted(shmleft.sweep(str(tmp_path), holders=_no_holders)) == [
        "vader_segment.vm.0.7bfa0001.0", "vader_segment.vm.0.7bfa0001.1"]
    assert sorted(os.listdir(tmp_path)) == [
        "vader_segment.vm.0.7c000001.0", "vader_segment.vm.0.link.0"]


def test_a_segment_adopted_while_the_processes_were_read_stays(tmp_path: Path) -> None:
    """A job started after the listing may take up a leftover of its name (Open MPI's
    ranks open it with O_CREAT and ftruncate it; a peer then opens it by name): the sweep
    removes a file only if it is still as listed."""
    adopted = _segment(tmp_path, "vader_segment.vm.0.7bfa0001.0")
    replaced = _segment(tmp_path, "mpich_shm_replaced_0")
    left = _segment(tmp_path, "vader_segment.vm.0.7bfa0001.1")

    def holders(_directory: str, _proc: str) -> set[str]:
        with open(adopted, "r+b") as f:
            os.ftruncate(f.fileno(), 4096)  # what a rank at the old job's pid does
        replaced.unlink()
        _segment(tmp_path, replaced.name)  # another file, as old, under that name
        return set()

    assert shmleft.sweep(str(tmp_path), holders=holders) == [left.name]
    assert adopted.exists() and replaced.exists() and not left.exists()


def test_another_users_file_is_never_a_candidate(tmp_path: Path) -> None:
    path = _segment(tmp_path, "mpich_shm_theirs_0")
    assert shmleft.candidates(str(tmp_path), uid=os.getuid() + 1) == []
    if os.getuid() == 0:
        os.chown(path, 12345, -1)
        assert shmleft.candidates(str(tmp_path)) == []


def test_sweep_removes_what_nobody_holds_and_keeps_the_rest(tmp_path: Path) -> None:
    left = _segment(tmp_path, "mpich_shm_left_0")
    busy = _segment(tmp_path, "mpich_shm_busy_0")
    young = _segment(tmp_path, "mpich_shm_young_0", age_s=0.5)
    removed = shmleft.sweep(str(tmp_path), holders=lambda d, p: {"mpich_shm_busy_0"})
    assert removed == ["mpich_shm_left_0"]
    assert not left.exists() and busy.exists() and young.exists()


def test_sweep_asks_about_processes_only_when_there_is_a_candidate(tmp_path: Path) -> None:
    asked: list[str] = []

    def holders(directory: str, proc: str) -> set[str]:
        asked.append(directory)
        return set()

    _segment(tmp_path, "unrelated")
    assert shmleft.sweep(str(tmp_path), holders=holders) == []
    assert asked == []


def test_a_file_open_or_mapped_by_a_process_is_held(tmp_path: Path) -> None:
    opened = _segment(tmp_path, "mpich_shm_open_0")
    mapped = _segment(tmp_path, "mpich_shm_mapped_0")
    _segment(tmp_path, "mpich_shm_free_0")
    fd = os.open(opened, os.O_RDONLY)
    with open(mapped, "r+b") as f:
        view = mmap.mmap(f.fileno(), 64)
    try:  # the descriptor behind the mapping is closed: only /proc/PID/maps shows it
        held = shmleft.held(str(tmp_path))
        assert {"mpich_shm_open_0", "mpich_shm_mapped_0"} <= held
        assert "mpich_shm_free_0" not in held
        assert shmleft.sweep(str(tmp_path)) == ["mpich_shm_free_0"]
    finally:
        view.close()
        os.close(fd)


def test_a_held_file_removed_meanwhile_is_still_known_by_its_name(tmp_path: Path) -> None:
    path = _segment(tmp_path, "mpich_shm_gone_0")
    fd = os.open(path, os.O_RDONLY)
    try:
        path.unlink()
        assert "mpich_shm_gone_0" in shmleft.held(str(tmp_path))
    finally:
        os.close(fd)


def test_sweeper_sweeps_at_once_then_after_bad_ends_spaced(tmp_path: Path) -> None:
    sweeper = shmleft.Sweeper(str(tmp_path), session_bases=[])
    _segment(tmp_path, "mpich_shm_a_0")
    assert sweeper.tick(100.0) == ["mpich_shm_a_0"]  # the first: at the node's start
    assert sweeper.due < 0
    _segment(tmp_path, "mpich_shm_b_0")
    sweeper.ended_badly(101.0)  # within SWEEP_GAP_S of the first sweep
    assert sweeper.due == 100.0 + shmleft.SWEEP_GAP_S
    assert sweeper.tick(101.0 + shmleft.AFTER_END_S) == []
    assert sweeper.tick(sweeper.due) == ["mpich_shm_b_0"]
    # A bad end long after: swept AFTER_END_S later (the ranks are gone by then).
    sweeper.ended_badly(500.0)
    assert sweeper.due == 500.0 + shmleft.AFTER_END_S


def test_a_bad_end_just_before_a_sweep_gets_one_more(tmp_path: Path) -> None:
    sweeper = shmleft.Sweeper(str(tmp_path))
    sweeper.tick(0.0)
    sweeper.ended_badly(100.0)
    due = sweeper.due
    sweeper.ended_badly(due - 0.5)  # its ranks may still be dying at `due`
    sweeper.tick(due)
    assert sweeper.due == max(due - 0.5 + shmleft.AFTER_END_S, due + shmleft.SWEEP_GAP_S)


def test_no_directory_no_sweeps(tmp_path: Path) -> None:
    sweeper = shmleft.Sweeper(str(tmp_path / "none"))
    sweeper.ended_badly(1.0)
    assert sweeper.due < 0 and sweeper.tick(1e9) == []


@pytest.mark.timeout(30)
def test_a_node_sweeps_at_its_first_step_and_after_a_killed_task(tmp_path: Path) -> None:
    shm = tmp_path / "shm"
    shm.mkdir()
    left = _segment(shm, "mpich_shm_earlier_job_0")
    with Node(die_with_parent=False) as node:
        node.shm = shmleft.Sweeper(str(shm), session_bases=[])
        node.step()
        assert not left.exists()
        node.enqueue([order(tmp_path, 1, ("/bin/sleep", "30"))])
        node.step()
        later = _segment(shm, "mpich_shm_killed_task_0")
        node.kill([1], EndKind.KILLED)
        run_until(node, 1)
        assert node.shm.due > 0
        node.shm.tick(node.shm.due)
        assert not later.exists()
