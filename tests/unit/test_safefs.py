"""The primitives of safefs: the trusted root, the walk, output files, fresh names, tails."""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

import pytest

from balsam_mpi.base import safefs, taskfiles


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    path = tmp_path / "p" / "data"
    path.mkdir(parents=True)
    return path


def _nobody() -> int:
    return pwd.getpwnam("nobody").pw_uid


def test_split_task_dir() -> None:
    assert safefs.split_task_dir("/p/data/wf/3/t_3001/") == ("/p/data", ("wf", "3", "t_3001"))


def test_the_root_must_be_a_real_directory_of_its_parents_owner(data: Path) -> None:
    root = safefs.Root.open(str(data))
    assert root.label == "data" and root.trust.owner == os.geteuid()
    root.close()
    other = data.parent / "other"
    other.symlink_to(data)
    with pytest.raises(safefs.UnsafePath, match="symbolic link"):
        safefs.Root.open(str(other))
    if os.geteuid() == 0:
        os.chown(data, _nobody(), -1)
        with pytest.raises(safefs.UnsafePath, match="not by the owner of"):
            safefs.Root.open(str(data))
    with pytest.raises(safefs.UnsafePath, match="does not exist"):
        safefs.Root.open(str(data.parent / "missing"))


def test_the_walk_makes_missing_levels_and_refuses_odd_names(data: Path) -> None:
    root = safefs.Root.open(str(data))
    try:
        fd = root.open_dir(["wf", "0", "t_1"])
        os.close(fd)
        assert (data / "wf" / "0" / "t_1").is_dir()
        for bad in ("..", ".", "a/b", ""):
            with pytest.raises(safefs.UnsafePath, match="not a plain name"):
                root.open_dir(["wf", bad])
        with pytest.raises(safefs.UnsafePath, match="does not exist"):
            root.open_dir(["nope"], create=False)
        (data / "file").write_text("x")
        with pytest.raises(safefs.UnsafePath, match="a regular file, not a directory"):
            root.open_dir(["file", "0"])
    finally:
        root.close()


def test_output_files(data: Path) -> None:
    trust = safefs.Trust(os.geteuid(), os.geteuid(), os.getegid())
    dfd = os.open(data, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = taskfiles.open_output(dfd, "task.out", trust, "data/task.out")
        os.write(fd, b"one\n")
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o660
        assert os.fstat(fd).st_size == 4 and taskfiles.read_tail([fd], 2) == "e\n"
        os.close(fd)
        again = taskfiles.open_output(dfd, "task.out", trust, "data/task.out")  # a retry
        os.write(again, b"two\n")
        os.close(again)
        assert (data / "task.out").read_text() == "one\ntwo\n"
        os.link(data / "task.out", data / "second-name")
        with pytest.raises(safefs.UnsafePath, match="2 hard links"):
            taskfiles.open_output(dfd, "task.out", trust, "data/task.out")
        os.mkfifo(data / "fifo")
        with pytest.raises(safefs.UnsafePath, match="a FIFO"):
            taskfiles.open_output(dfd, "fifo", trust, "data/fifo")
        (data / "link").symlink_to(data / "second-name")
        with pytest.raises(safefs.UnsafePath, match="a symbolic link"):
            taskfiles.open_output(dfd, "link", trust, "data/link")
        assert (data / "second-name").read_text() == "one\ntwo\n"
    finally:
        os.close(dfd)


def test_fresh_names_never_reuse_or_follow(data: Path) -> None:
    dfd = os.open(data, os.O_RDONLY | os.O_DIRECTORY)
    try:
        (data / "a.log").symlink_to(data / "victim")
        (data / "a.1.log").write_text("earlier\n")
        fd, name = safefs.create_new(dfd, "a.log", 0o640, "data")
        os.close(fd)
        assert name == "a.2.log" and not (data / "victim").exists()
        assert stat.S_IMODE((data / name).stat().st_mode) == 0o640
        fd, name = safefs.create_new(dfd, "noext", 0o600, "data")
        os.close(fd)
        fd, name2 = safefs.create_new(dfd, "noext", 0o600, "data")
        os.close(fd)
        assert (name, name2) == ("noext", "noext.1")
    finally:
        os.close(dfd)


def test_trust() -> None:
    me = os.geteuid()
    trust = safefs.Trust(me, 4242, 999_999, frozenset({4243}))
    assert trust.allows(0) and trust.allows(me) and trust.allows(4242)
    assert not trust.allows(4243)  # barred
    assert not trust.allows(_nobody())  # not in the project's group
