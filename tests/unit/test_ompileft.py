"""Removing the session directories that Open MPI jobs killed with SIGKILL leave
(node/ompileft.py): only this user's ``pid.N`` trees, old, unheld, whose mpirun is gone,
unchanged since they were listed; and a node's sweeper does it."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from balsam_mpi.node import ompileft, shmleft

UID = os.getuid()
HOST = socket.gethostname().split(".")[0]  # as Open MPI 4.1 names this host
DEAD = 99_999_999  # above any pid_max: no such process


def _old(path: Path, age_s: float = 3600.0) -> None:
    at = time.time() - age_s
    for sub in sorted(path.rglob("*"), reverse=True):
        os.utime(sub, (at, at), follow_symlinks=False)
    os.utime(path, (at, at))


def _session(top: Path, pid: int, *, age_s: float = 3600.0) -> Path:
    """A session directory as a killed mpirun at ``pid`` left it (Open MPI 4.1's layout)."""
    top.mkdir(mode=0o700, exist_ok=True)
    tree = top / f"pid.{pid}"
    (tree / f"pmix_dstor_ds21_{pid}").mkdir(parents=True)
    (tree / f"pmix_dstor_ds21_{pid}" / "smseg-2079981569-0").write_bytes(b"\0" * 4096)
    (tree / "0" / "0").mkdir(parents=True)
    os.mkfifo(tree / "0" / "debugger_attach_fifo")
    (tree / "hwloc.sm").write_bytes(b"\0" * 64)
    (tree / "contact.txt").write_text(f"2079981568.0;tcp://127.0.0.1:1\n{pid}\n")
    _old(tree, age_s)
    return tree


def _sweep(base: Path, holders: ompileft.Holders = shmleft.held,
           min_age_s: float = shmleft.MIN_AGE_S) -> list[str]:
    return ompileft.sweep([str(base)], holders=holders, min_age_s=min_age_s)


def test_a_dead_mpiruns_old_unheld_tree_is_removed(tmp_path: Path) -> None:
    top = tmp_path / f"ompi.{HOST}.{UID}"
    tree = _session(top, DEAD)
    assert _sweep(tmp_path) == [str(tree)]
    assert os.listdir(top) == []


def test_live_young_held_or_unlike_trees_stay(tmp_path: Path) -> None:
    top = tmp_path / f"ompi.{HOST}.{UID}"
    alive = _session(top, os.getpid())  # a process of that pid exists
    young = _session(top, DEAD - 1, age_s=1.0)
    deep_young = _session(top, DEAD - 2)
    (deep_young / "0" / "0" / "new").write_text("")  # a rank's file, just made
    held = _session(top, DEAD - 3)
    odd = top / "jf.1234"
    odd.mkdir()
    (top / f"pid.{DEAD - 4}").symlink_to(held)
    (top / f"pid.{DEAD - 5}").write_text("")
    _old(odd)
    fd = os.open(held / "hwloc.sm", os.O_RDONLY)
    try:
        assert _sweep(tmp_path) == []
    finally:
        os.close(fd)
    for path in (alive, young, deep_young, held, odd):
        assert path.is_dir()
    assert _sweep(tmp_path) == [str(held)]  # let go: removed


def test_other_users_or_open_tops_are_never_looked_into(tmp_path: Path) -> None:
    other = tmp_path / f"ompi.{HOST}.{UID + 1}"
    _session(other, DEAD)
    assert ompileft.sweep([str(tmp_path)], holders=shmleft.held, min_age_s=5.0,
                          uid=UID + 1) == []  # as that user: its top is not its own
    writable = tmp_path / "w" / f"ompi.{HOST}.{UID}"
    writable.parent.mkdir()
    _session(writable, DEAD)
    writable.chmod(0o777)
    assert _sweep(tmp_path / "w") == []
    elsewhere = tmp_path / "e" / f"ompi.{HOST}x.{UID}"  # another host's (a container's)
    elsewhere.parent.mkdir()
    _session(elsewhere, DEAD)
    assert _sweep(tmp_path / "e") == []
    link_base = tmp_path / "l"
    link_base.mkdir()
    (link_base / f"ompi.{HOST}.{UID}").symlink_to(tmp_path / f"ompi.{HOST}.{UID + 1}")
    assert _sweep(link_base) == []
    assert (other / f"pid.{DEAD}").is_dir() and (writable / f"pid.{DEAD}").is_dir()


def test_a_tree_a_new_mpirun_writes_into_meanwhile_stays(tmp_path: Path) -> None:
    """An mpirun that gets the dead one's pid after the processes were read uses the same
    directory: it is removed only if unchanged since it was listed."""
    top = tmp_path / f"ompi.{HOST}.{UID}"
    tree = _session(top, DEAD)

    def holders(directory: str, proc: str) -> set[str]:
        (tree / "1").mkdir()  # the new mpirun's job directory
        return shmleft.held(directory, proc)

    assert _sweep(tmp_path, holders) == []
    assert (tree / "1").is_dir()


def test_a_half_removed_tree_is_finished_by_the_next_sweep(tmp_path: Path) -> None:
    top = tmp_path / f"ompi.{HOST}.{UID}"
    _session(top, DEAD)
    half = top / f"{ompileft.SWEPT}pid.{DEAD}.1"
    (top / f"pid.{DEAD}").rename(half)
    assert _sweep(tmp_path) == [str(half)]
    assert os.listdir(top) == []


def test_where_open_mpi_puts_them() -> None:
    assert ompileft.bases({"OMPI_MCA_orte_tmpdir_base": "/scratch/s", "TMPDIR": "/t"}) == [
        "/scratch/s"]
    assert ompileft.bases({"TMPDIR": "/t"}) == ["/t"]
    assert ompileft.bases({}) == ["/tmp"]
    assert ompileft.bases({"TMPDIR": "relative"}) == []


@pytest.mark.timeout(30)
def test_a_nodes_sweeper_removes_session_leftovers(tmp_path: Path) -> None:
    shm = tmp_path / "shm"
    shm.mkdir()
    tree = _session(tmp_path / f"ompi.{HOST}.{UID}", DEAD)
    sweeper = shmleft.Sweeper(str(shm), session_bases=[str(tmp_path)])
    assert sweeper.tick(100.0) == [str(tree)]
    assert not tree.exists()
