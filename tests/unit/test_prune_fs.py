"""Removing task directories under data/ by descriptor: planted symlinks, FIFOs and deep
trees never take the removal outside data/ (issue 15 case 13)."""

from __future__ import annotations

import os
from pathlib import Path

from balsam_mpi.dbctl.prune_fs import MAX_DEPTH, DataDir


def _tree(root: Path) -> None:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "task.out").write_text("x" * 100)
    (root / "sub" / "a").write_text("y" * 10)
    (root / "sub" / "deeper" / "b").write_text("")


def _outside(tmp_path: Path) -> Path:
    victim = tmp_path / "home"
    victim.mkdir()
    (victim / "precious").write_text("keep me")
    return victim


def test_a_task_directory_is_removed_and_counted(tmp_path: Path) -> None:
    data = tmp_path / "data"
    leaf = data / "wf" / "0" / "t_1"
    leaf.mkdir(parents=True)
    _tree(leaf)
    with DataDir(data) as d:
        dry = d.remove(("wf", "0", "t_1"), dry_run=True)
        assert (dry.dirs, dry.files, dry.bytes, dry.errors) == (3, 3, 110, [])
        assert leaf.exists()  # a dry run removes nothing
        done = d.remove(("wf", "0", "t_1"))
        assert (done.dirs, done.files, done.bytes, done.errors) == (3, 3, 110, [])
        assert not leaf.exists()
        assert d.remove(("wf", "0", "t_2")).missing == 1
        assert d.prune_empty(("wf", "0")) and d.prune_empty(("wf",))
    assert not (data / "wf").exists() and data.exists()


def test_symlinks_are_removed_as_links_never_followed(tmp_path: Path) -> None:
    victim = _outside(tmp_path)
    data = tmp_path / "data"
    shard = data / "wf" / "0"
    shard.mkdir(parents=True)
    (shard / "t_1").symlink_to(victim)  # the task directory itself is a link
    leaf = shard / "t_2"
    leaf.mkdir()
    (leaf / "escape").symlink_to(victim)  # a link inside a task directory
    (leaf / "file_link").symlink_to(victim / "precious")
    os.link(victim / "precious", leaf / "hard")  # a hard link: only this name goes
    with DataDir(data) as d:
        one, two = d.remove(("wf", "0", "t_1")), d.remove(("wf", "0", "t_2"))
    assert one.errors == [] and two.errors == [] and two.files == 3
    assert not (shard / "t_1").is_symlink() and not leaf.exists()
    assert (victim / "precious").read_text() == "keep me"


def test_a_planted_workflow_or_shard_symlink_is_reported_and_left(tmp_path: Path) -> None:
    victim = _outside(tmp_path)
    (victim / "0" / "t_1").mkdir(parents=True)
    data = tmp_path / "data"
    data.mkdir()
    (data / "wf").symlink_to(victim)
    with DataDir(data) as d:
        out = d.remove(("wf", "0", "t_1"))
        again = d.remove(("wf", "0", "t_2"))
    assert len(out.errors) == 1 and "symlink" in out.errors[0]
    assert again.errors == []  # reported once, not once per task
    assert (victim / "0" / "t_1").is_dir() and (victim / "precious").exists()


def test_fifos_and_sockets_are_unlinked_without_being_opened(tmp_path: Path) -> None:
    leaf = tmp_path / "data" / "wf" / "0" / "t_1"
    leaf.mkdir(parents=True)
    os.mkfifo(leaf / "pipe")  # opening it would block forever
    with DataDir(tmp_path / "data") as d:
        out = d.remove(("wf", "0", "t_1"))
    assert out.errors == [] and not leaf.exists()


def test_a_tree_deeper_than_the_cap_is_reported_not_recursed(tmp_path: Path) -> None:
    leaf = tmp_path / "data" / "wf" / "0" / "t_1"
    deep = leaf
    for _ in range(MAX_DEPTH + 5):
        deep = deep / "d"
    deep.mkdir(parents=True)
    with DataDir(tmp_path / "data") as d:
        out = d.remove(("wf", "0", "t_1"))
    assert any(f"deeper than {MAX_DEPTH}" in e for e in out.errors)
    assert leaf.exists()  # what is left is left, and said


def test_what_cannot_be_removed_is_reported(tmp_path: Path) -> None:
    if os.geteuid() == 0:  # root ignores modes; an immutable flag would need chattr
        import pytest

        pytest.skip("root may remove anything; the permission case needs another user")
    leaf = tmp_path / "data" / "wf" / "0" / "t_1"
    (leaf / "locked").mkdir(parents=True)
    (leaf / "locked" / "f").write_text("")
    os.chmod(leaf / "locked", 0o500)
    try:
        with DataDir(tmp_path / "data") as d:
            out = d.remove(("wf", "0", "t_1"))
        assert out.errors and leaf.exists()
    finally:
        os.chmod(leaf / "locked", 0o700)
