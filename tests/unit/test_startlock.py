"""Start and stop take turns on the project's .dbctl.lock (dbctl/startlock.py). A project
on a file system without flock (Lustre mounted without it: ENOSYS; NFS without its lock
manager: ENOLCK) made every start and stop fail there with a bare OSError; now the turn
is taken on a file of this host's own, named after the project's lock file."""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from balsam_mpi.base.errors import ProjectError
from balsam_mpi.base.project import Project
from balsam_mpi.dbctl import startlock

pytestmark = pytest.mark.timeout(30)


def takes_turns(project: Project) -> list[str]:
    """Two holders at once: the second gets the lock only after the first let go."""
    said: list[str] = []
    first_in = threading.Event()

    def first() -> None:
        with startlock.project_lock(project):
            first_in.set()
            said.append("first in")
            time.sleep(0.3)
            said.append("first out")

    def second() -> None:
        first_in.wait(5)
        with startlock.project_lock(project):
            said.append("second in")

    threads = [threading.Thread(target=f) for f in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return said


def without_flock_on(root: Path) -> Callable[..., Any]:
    """fcntl.flock as on a file system without it, for files under ``root`` only."""
    real = fcntl.flock

    def flock(fd: int, op: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(root)):
            raise OSError(errno.ENOSYS, "Function not implemented")
        real(fd, op)
    return flock


@pytest.fixture()
def private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    return runtime


def test_start_and_stop_take_turns(tmp_path: Path) -> None:
    assert takes_turns(Project(tmp_path)) == ["first in", "first out", "second in"]
    assert (tmp_path / ".dbctl.lock").stat().st_mode & 0o777 == 0o600


def test_without_flock_the_turn_is_taken_on_this_hosts_own_file(
        tmp_path: Path, private: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.setattr(fcntl, "flock", without_flock_on(project))
    assert takes_turns(Project(project)) == ["first in", "first out", "second in"]
    st = (project / ".dbctl.lock").stat()
    assert [p.name for p in private.iterdir()] == [f"{st.st_dev:x}-{st.st_ino:x}.lock"]


def test_without_xdg_runtime_dir_a_private_directory_in_tmp(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project, tmp = tmp_path / "project", tmp_path / "tmp"
    project.mkdir()
    tmp.mkdir()
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(startlock, "TMP", str(tmp))
    monkeypatch.setattr(fcntl, "flock", without_flock_on(project))
    assert takes_turns(Project(project)) == ["first in", "first out", "second in"]
    made = tmp / f"balsam-dbctl-{os.geteuid()}"
    assert made.stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("plant", ["shared", "link"])
def test_a_directory_planted_in_tmp_is_refused(tmp_path: Path, plant: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    project, tmp = tmp_path / "project", tmp_path / "tmp"
    project.mkdir()
    tmp.mkdir()
    target = tmp / f"balsam-dbctl-{os.geteuid()}"
    if plant == "shared":
        target.mkdir()
        target.chmod(0o777)  # a directory others may write
    else:
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        target.symlink_to(tmp_path / "elsewhere")
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(startlock, "TMP", str(tmp))
    monkeypatch.setattr(fcntl, "flock", without_flock_on(project))
    with pytest.raises(ProjectError, match=r"^the project's file system has no flock, and "
                       rf"{target}, where this host's lock would be taken instead, is not "
                       "a directory of yours that only you can use"):
        with startlock.project_lock(Project(project)):
            pass
