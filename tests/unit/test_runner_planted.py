"""Paths planted in a task's directory by someone else: the launcher never follows a link,
never opens a FIFO, never appends to a file it does not trust, and reads the failure tail
from the descriptor it wrote. Each refusal is one line in the task's record.

The unit tier runs as root here, so "someone else" is a file chowned to an account that is
not in the test's group (``nobody``); the multiuser tier does the same with real users.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from balsam_mpi.node.node import Node
from balsam_mpi.protocol import Assign, EndKind, Finished, RunOrder

SECRET = "owner-password-1234\n"


def _task_dir(data: Path, i: int = 1) -> Path:
    return data / "wf" / "0" / f"t_{i}"


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    """A project's data/ (owned, like the project directory above it, by the runner)."""
    (tmp_path / "p" / "data").mkdir(parents=True)
    return tmp_path / "p" / "data"


@pytest.fixture()
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "home" / ".pgpass"
    path.parent.mkdir()
    path.write_text(SECRET)
    return path


def run_one(data: Path, argv: tuple[str, ...], i: int = 1, timeout: float = 20.0
            ) -> Finished:
    node = Node(environ={"PATH": "/usr/bin:/bin"}, kill_grace_s=0.5)
    try:
        node.apply(Assign(1, (RunOrder(i, 1, argv, str(_task_dir(data, i))),)))
        deadline = time.monotonic() + timeout
        out: list[Finished] = []
        while not out:
            assert time.monotonic() < deadline, "the task did not end"
            node.step()
            out += node.changes.take()[1]
            node.wait(0.01)
        return out[0]
    finally:
        node.close()


def refused(fin: Finished, *words: str) -> str:
    """The task failed before it ran, with one line naming what was refused."""
    assert fin.kind == EndKind.ERROR and fin.rc != 0, fin
    line = fin.tail
    assert "\n" not in line.strip() and "Traceback" not in line, line
    for word in words:
        assert word in line, line
    return line


def _nobody() -> int:
    return pwd.getpwnam("nobody").pw_uid


def test_a_symlink_at_task_err_is_never_read(data: Path, secret: Path) -> None:
    """Issue 14.1: task.err → ~owner/.pgpass put the owner's password in the database."""
    _task_dir(data).mkdir(parents=True)
    (_task_dir(data) / "task.err").symlink_to(secret)
    fin = run_one(data, ("sh", "-c", "exit 3"))
    refused(fin, "task.err", "symbolic link")
    assert "owner-password" not in fin.tail
    assert secret.read_text() == SECRET


def test_a_symlink_at_task_out_is_never_appended_to(data: Path, secret: Path) -> None:
    """Issue 14.1: task.out → ~owner/.bashrc appended the task's output to it."""
    _task_dir(data).mkdir(parents=True)
    (_task_dir(data) / "task.out").symlink_to(secret)
    refused(run_one(data, ("echo", "rm -rf ~")), "task.out", "symbolic link")
    assert secret.read_text() == SECRET


@pytest.mark.parametrize("level", ["wf", "0", "t_1"])
def test_a_symlinked_directory_component_is_refused(data: Path, tmp_path: Path,
                                                    level: str) -> None:
    """Issue 14.1: a symlinked workflow directory made tasks run inside ~owner."""
    elsewhere = tmp_path / "home" / "owner"
    elsewhere.mkdir(parents=True)
    parts = ["wf", "0", "t_1"]
    upto = parts[:parts.index(level)]
    (data.joinpath(*upto) if upto else data).mkdir(parents=True, exist_ok=True)
    data.joinpath(*upto, level).symlink_to(elsewhere)
    refused(run_one(data, ("sh", "-c", "echo pwned > planted")), level, "symbolic link")
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("name", ["task.out", "task.err"])
def test_a_fifo_never_hangs_the_launcher(data: Path, name: str) -> None:
    """Issue 14.2: a FIFO at task.out hung the launcher in uninterruptible sleep. The node
    runs in a child process with a watchdog; if it hangs, a reader releases it."""
    _task_dir(data).mkdir(parents=True)
    fifo = _task_dir(data) / name
    os.mkfifo(fifo)
    root = str(Path(__file__).resolve().parents[2])
    code = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {root!r}); sys.path.insert(0, {str(Path(__file__).parent)!r})
        from pathlib import Path
        import test_runner_planted as t
        fin = t.run_one(Path({str(data)!r}), ("true",))
        print(fin.kind, fin.tail)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        out, err = child.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # release the blocked open
        child.kill()
        child.communicate()
        os.close(fd)
        pytest.fail(f"the launcher hung on a FIFO at {name}")
    assert child.returncode == 0, err
    assert name in out and "FIFO" in out, out


def test_a_hardlink_to_someone_elses_file_is_refused(data: Path, tmp_path: Path) -> None:
    """A hard link at task.out to a file another account owns (or any file with a second
    name) is never appended to."""
    _task_dir(data).mkdir(parents=True)
    victim = tmp_path / "home" / "victim"
    victim.parent.mkdir()
    victim.write_text("keep me\n")
    os.chown(victim, _nobody(), -1)
    os.link(victim, _task_dir(data) / "task.out")
    refused(run_one(data, ("echo", "junk")), "task.out")
    assert victim.read_text() == "keep me\n"


def test_a_directory_owned_by_an_outsider_is_refused(data: Path) -> None:
    shard = data / "wf" / "0"
    shard.mkdir(parents=True)
    os.chown(shard, _nobody(), -1)
    refused(run_one(data, ("true",)), "wf/0", "owned by")


def test_a_file_owned_by_an_outsider_is_refused(data: Path) -> None:
    _task_dir(data).mkdir(parents=True)
    planted = _task_dir(data) / "task.err"
    planted.write_text("forged tail\n")
    os.chown(planted, _nobody(), -1)
    fin = refused(run_one(data, ("sh", "-c", "exit 1")), "task.err", "owned by")
    assert "forged" not in fin


def test_a_retried_task_appends_to_its_own_output(data: Path) -> None:
    """O_EXCL is for new files: a retry keeps the earlier runs' output (a regular file the
    launcher's user or a member owns, one link)."""
    _task_dir(data).mkdir(parents=True)
    (_task_dir(data) / "task.out").write_text("first run\n")
    fin = run_one(data, ("echo", "second run"))
    assert fin.kind == EndKind.DONE, fin
    assert (_task_dir(data) / "task.out").read_text() == "first run\nsecond run\n"


def test_the_tail_comes_from_what_the_launcher_wrote(data: Path, secret: Path) -> None:
    """Swapping task.err for a symlink while the task runs does not change the tail: it is
    read from the launcher's own descriptor, never re-opened by path."""
    fin = run_one(data, ("sh", "-c", f"echo real error >&2; rm task.err; "
                                     f"ln -s {secret} task.err; exit 4"))
    assert fin.kind == EndKind.ERROR and fin.rc == 4
    assert fin.tail == "real error\n"


def test_new_output_files_and_directories_get_exact_modes(data: Path) -> None:
    old = os.umask(0o077)
    try:
        fin = run_one(data, ("sh", "-c", "echo out; echo err >&2"))
    finally:
        os.umask(old)
    assert fin.kind == EndKind.DONE
    for path in (data / "wf", data / "wf" / "0", _task_dir(data)):
        assert path.stat().st_mode & 0o7777 == 0o2770, path
    for name in ("task.out", "task.err"):
        assert (_task_dir(data) / name).stat().st_mode & 0o777 == 0o660
