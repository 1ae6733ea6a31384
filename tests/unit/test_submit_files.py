"""Files `submit` writes in the group-writable qsubmit/: a directory of each submission's
own, never through a planted link, a fresh name when the predictable one is taken (issue
14.6), exact modes."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from balsam_mpi.base import safefs
from balsam_mpi.batch import jobdir, submit


@pytest.fixture()
def qdir(tmp_path: Path) -> Path:
    path = tmp_path / "p" / "qsubmit"
    path.mkdir(parents=True)
    os.chmod(path, 0o3770)
    return path


@pytest.mark.parametrize("kind", ["symlink", "directory", "file"])
def test_a_planted_name_gets_a_fresh_directory_of_the_submitters(
        qdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """The submission's directory name is predictable (scheduler, id, time): whatever a
    member put there first is left alone and never entered (issue 14.6's names, and a
    link at the job's output name, now inside a directory only the submitter writes)."""
    monkeypatch.setattr(jobdir.time, "strftime", lambda _fmt: "20250101-000000")
    victim = tmp_path / "victim"
    victim.mkdir()
    planted = qdir / "local-7-20250101-000000"
    if kind == "symlink":
        planted.symlink_to(victim)
    elif kind == "directory":
        planted.mkdir(mode=0o777)
        planted.chmod(0o777)
    else:
        planted.write_text("someone else's\n")
    path, jfd = jobdir.write_script(qdir, "local", 7, "echo hi\n")
    try:
        assert path.parent.name == "local-7-20250101-000000.1" and path.name == "job.sh"
        assert path.read_text() == "echo hi\n"
        assert stat.S_IMODE(path.stat().st_mode) == jobdir.MODE_SCRIPT
        job = submit._start_local(path, jfd, 7)
    finally:
        os.close(jfd)
    assert job.log is not None and job.log.parent == path.parent
    assert job.pid is not None and _wait(job.pid)
    assert "hi" in job.log.read_text()
    assert list(victim.iterdir()) == []
    assert not planted.is_dir() or planted.is_symlink() or list(planted.iterdir()) == []


def test_the_submissions_directory_is_the_submitters_alone(
        qdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Group-readable, never group-writable, whatever the umask: the scheduler opens the
    job's output there as the submitter, following links."""
    old = os.umask(0)
    try:
        path, jfd = jobdir.write_script(qdir, "local", 8, "echo\n")
        os.close(jfd)
    finally:
        os.umask(old)
    st = path.parent.stat()
    assert stat.S_IMODE(st.st_mode) == jobdir.MODE_JOB_DIR == 0o2750
    assert st.st_uid == os.geteuid()


def _wait(pid: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            pass
        time.sleep(0.05)
    return False


def test_a_symlinked_qsubmit_dir_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "qsubmit").symlink_to(elsewhere)
    with pytest.raises(safefs.UnsafePath, match="symbolic link"):
        jobdir.write_script(tmp_path / "p" / "qsubmit", "local", 9, "echo\n")
    assert list(elsewhere.iterdir()) == []
