"""Launcher logs in the group-writable log/: never through a planted link, never reusing a
name, 0640 so the group reads but cannot forge lines (issue 14.3)."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from balsam_mpi.launcher import logs


@pytest.fixture()
def log_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "p" / "log"
    path.mkdir(parents=True)
    os.chmod(path, 0o3770)
    yield path
    for handler in list(logging.getLogger().handlers):
        handler.close()
        logging.getLogger().removeHandler(handler)


def test_a_planted_symlink_is_never_followed(log_dir: Path, tmp_path: Path) -> None:
    victim = tmp_path / "home" / ".bashrc"
    victim.parent.mkdir()
    victim.write_text("keep\n")
    (log_dir / "launcher_job1_r0.log").symlink_to(victim)
    path = logs.setup(0, log_dir, "job1")
    logging.getLogger("x").warning("hello from the launcher")
    assert victim.read_text() == "keep\n"
    assert path == log_dir / "launcher_job1_r0.1.log"
    assert "hello from the launcher" in path.read_text()


def test_a_fifo_or_an_earlier_file_gets_a_new_name(log_dir: Path) -> None:
    os.mkfifo(log_dir / "launcher_job2_r1.log")
    (log_dir / "launcher_job2_r1.1.log").write_text("an earlier run\n")
    path = logs.setup(1, log_dir, "job2")
    assert path == log_dir / "launcher_job2_r1.2.log"
    assert (log_dir / "launcher_job2_r1.1.log").read_text() == "an earlier run\n"


def test_mode_is_0640_whatever_the_umask(log_dir: Path) -> None:
    old = os.umask(0)
    try:
        path = logs.setup(0, log_dir, "job3")
    finally:
        os.umask(old)
    assert path is not None
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_a_symlinked_log_dir_gives_no_log_file(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    elsewhere = tmp_path / "home"
    elsewhere.mkdir()
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "log").symlink_to(elsewhere)
    try:
        assert logs.setup(0, tmp_path / "p" / "log", "job4") is None
    finally:
        for handler in list(logging.getLogger().handlers):
            logging.getLogger().removeHandler(handler)
    assert list(elsewhere.iterdir()) == []
    err = capsys.readouterr().err
    assert "no log file" in err and "symbolic link" in err


def test_a_value_in_a_record_cannot_forge_a_line_or_reach_a_terminal(log_dir: Path) -> None:
    """A record may carry values a member chose (a task's name, an error its function
    raised): a newline in one would start a line that looks like the launcher's own, and
    an escape would act on the terminal of whoever runs `tail -f` on the log."""
    path = logs.setup(0, log_dir, "job5")
    forged = "x\n2026-12-06 08:00:00,000 INFO [rank 0 nid1] launcher: all tasks done\x1b[2J"
    logging.getLogger("launcher").warning("task 7: %s", forged)
    try:
        raise ValueError("bad\x1b]0;title\x07\n2026-12-06 08:00:01,000 INFO [rank 0 nid1] x")
    except ValueError:
        logging.getLogger("launcher").exception("task 8 failed")
    assert path is not None
    text = path.read_text()
    lines = text.splitlines()
    records = [ln for ln in lines if ln[:1].isdigit()]  # a record starts with its time
    assert len(records) == 2 and not any(ln.startswith("2026-12-06 08:00") for ln in records)
    assert "\x1b" not in text and "\x07" not in text
    assert "x\\n2026-12-06" in text and "\\x1b[2J" in text and "bad\\x1b]0;title\\x07" in text


def test_a_full_log_file_system_is_said_once(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Once log/ was full, every record printed Python's dozen-line `--- Logging error
    ---` traceback to the job's stderr; now one line says the file cannot be written, and
    warnings still reach stderr."""
    import subprocess

    log_dir = tmp_path / "p" / "log"
    log_dir.mkdir(parents=True)
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", str(log_dir)],
                          capture_output=True, text=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        path = logs.setup(0, log_dir, "job6")
        for i in range(300):
            logging.getLogger("x").info("line %s %s", i, "y" * 100)
        logging.getLogger("x").warning("the end")
    finally:
        for handler in list(logging.getLogger().handlers):
            handler.close()
            logging.getLogger().removeHandler(handler)
        subprocess.run(["umount", "-l", str(log_dir)], capture_output=True, check=False)
    err = capsys.readouterr().err
    assert "Logging error" not in err and "Traceback" not in err, err[:2000]
    lines = err.splitlines()
    assert lines[-1].endswith("x: the end"), err
    said = [line for line in lines if "cannot be written" in line]
    assert said == [f"balsam_mpi launcher: the log file {path} cannot be written ([Errno "
                    "28] No space left on device): records are lost until it can be "
                    "written again (warnings still come here)"], err
