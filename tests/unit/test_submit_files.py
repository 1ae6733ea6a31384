"""Files `submit` writes in the group-writable qsubmit/: never through a planted link, a
fresh name when the predictable one is taken (issue 14.6), exact modes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from balsam_mpi.batch import submit
from balsam_mpi.batch.jobscript import JobRequest


@pytest.fixture()
def qdir(tmp_path: Path) -> Path:
    path = tmp_path / "p" / "qsubmit"
    path.mkdir(parents=True)
    os.chmod(path, 0o3770)
    return path


def _req() -> JobRequest:
    return JobRequest(scheduler="local", nodes=1)


def test_a_planted_script_name_is_never_followed(qdir: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(submit.time, "strftime", lambda _fmt: "20250101-000000")
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    (qdir / "local-7-20250101-000000.sh").symlink_to(victim)
    path = submit._write_script(qdir, _req(), 7, "echo hi\n")
    assert path.name == "local-7-20250101-000000.1.sh"
    assert path.read_text() == "echo hi\n" and victim.read_text() == "keep\n"
    assert stat.S_IMODE(path.stat().st_mode) == submit.MODE_SCRIPT


@pytest.mark.parametrize("kind", ["symlink", "fifo", "file"])
def test_a_planted_local_log_name_gets_a_fresh_name(qdir: Path, tmp_path: Path,
                                                    kind: str) -> None:
    """Issue 14.6: symlinks at the predictable qsubmit/local-*.log names made the owner's
    local submission fail with a traceback."""
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    planted = qdir / "local-8-x.log"
    if kind == "symlink":
        planted.symlink_to(victim)
    elif kind == "fifo":
        os.mkfifo(planted)
    else:
        planted.write_text("someone else's\n")
    fd, name = submit._create(qdir, "local-8-x.log", submit.MODE_SUBMIT_LOG)
    os.write(fd, b"launcher output\n")
    os.close(fd)
    assert name == "local-8-x.1.log"
    assert (qdir / name).read_text() == "launcher output\n"
    assert stat.S_IMODE((qdir / name).stat().st_mode) == submit.MODE_SUBMIT_LOG
    assert victim.read_text() == "keep\n"


def test_a_symlinked_qsubmit_dir_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "qsubmit").symlink_to(elsewhere)
    with pytest.raises(submit.SubmitError, match="symbolic link"):
        submit._write_script(tmp_path / "p" / "qsubmit", _req(), 9, "echo\n")
    assert list(elsewhere.iterdir()) == []
