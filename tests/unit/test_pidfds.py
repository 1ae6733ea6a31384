"""Every process a node starts is watched through a pidfd (node/pidfds.py). A kernel
before Linux 5.3, or a container's seccomp profile, refuses pidfd_open: the node then
watches through stand-ins (node/exitnotes.py) and every task ends as it would with
pidfds; the launcher says so once. And where a pidfd cannot be opened for one process
(EMFILE), that process is ended, never left running while its task is recorded as not
started."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from balsam_mpi.node import pidfds
from balsam_mpi.node.node import Node
from balsam_mpi.protocol import Assign, EndKind
from tests import nosys
from tests.unit.pykit import REPO, call, failed, ok, python_node, run
from tests.unit.test_node import order, run_until

pytestmark = pytest.mark.timeout(60)


def test_this_system_opens_pidfds() -> None:
    assert pidfds.check() is None and pidfds.available()


def _without_pidfds(code: int, tmp_path: Path) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "tests.unit.nopidfds_probe", str(code),
                          str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out
    result: dict[str, Any] = json.loads(out.stdout)
    return result


@pytest.mark.skipif(not nosys.supported(), reason="seccomp numbers for x86-64/aarch64")
@pytest.mark.parametrize("code, said", [
    (errno.ENOSYS, "ENOSYS: Function not implemented"),  # a kernel before 5.3
    (errno.EPERM, "EPERM: Operation not permitted"),  # a container's older profile
])
def test_without_pidfds_every_ending_is_seen_as_it_happens(code: int, said: str,
                                                           tmp_path: Path) -> None:
    """Before, the launcher refused to start on such a system (one line, status 2).
    Now a node runs process tasks and Python calls to every kind of end, each noticed
    as it happens (the node asleep meanwhile), through SIGCHLD and the zygote's word;
    none of the stand-ins is left open."""
    got = _without_pidfds(code, tmp_path)
    assert got["available"] is False
    assert got["note"].startswith(f"pidfd_open was refused ({said}) on Linux ")
    assert got["note"].endswith("(pidfds need Linux 5.3 or later and, in a container, a "
                                "seccomp profile that allows pidfd_open): the nodes watch "
                                "their processes through SIGCHLD instead")
    ended = {int(k): v for k, v in got["ended"].items()}
    kinds = {i: (kind, rc) for i, (kind, rc, _run) in ended.items()}
    assert kinds == {1: ("DONE", 0), 2: ("ERROR", 3), 3: ("DONE", 0), 4: ("TIMEOUT", -15),
                     5: ("KILLED", -15),  # process tasks
                     11: ("DONE", 0), 12: ("ERROR", 5), 13: ("ERROR", -9),
                     14: ("TIMEOUT", -15),  # Python calls: returned, _exit, SIGKILL, wall
                     15: ("DONE", 0), 16: ("DONE", 0)}  # ... and the node serves on
    assert 1.0 <= ended[3][2] < 1.5  # `sleep 1`'s end seen at once, not at a timeout
    assert 0.5 <= ended[16][2] < 1.0
    assert got["stand_ins_left"] == 0
    assert got["node_cpu_s"] < 1.0  # it slept through the seconds of sleeps and waits


def test_a_python_without_pidfd_open_watches_without_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "pidfd_open")
    note = pidfds.check()
    assert note is not None and note.startswith("this Python has no os.pidfd_open on Linux ")


class FailOnce:
    """``os.pidfd_open`` failing EMFILE the ``nth`` time it is called; the pids asked for."""

    def __init__(self, nth: int = 1) -> None:
        self.real: Callable[..., int] = os.pidfd_open
        self.nth = nth
        self.pids: list[int] = []

    def __call__(self, pid: int, *args: Any) -> int:
        self.pids.append(pid)
        if len(self.pids) == self.nth:
            raise OSError(24, "Too many open files")
        return self.real(pid, *args)


@pytest.fixture()
def fail_once(monkeypatch: pytest.MonkeyPatch) -> Iterator[FailOnce]:
    failing = FailOnce()
    monkeypatch.setattr(os, "pidfd_open", failing)
    yield failing


def gone(pid: int, timeout: float = 10.0) -> bool:
    """No process ``pid`` (not even a zombie) within ``timeout``."""
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}"):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def running_with(marker: str) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                if marker.encode() in fh.read():
                    found.append(int(name))
        except (OSError, ValueError):
            continue
    return found


def test_a_task_whose_process_cannot_be_watched_is_ended_not_left_running(
        tmp_path: Path, fail_once: FailOnce) -> None:
    """Before: pidfd_open failing after the spawn left the task's process running,
    unwatched and never reaped, while the task was recorded as failed to start (and
    its retry would have run it a second time)."""
    marker = "37.123456"  # sleep's argument: this test's task, found by its command line
    node = Node(environ={"PATH": "/usr/bin:/bin"}, kill_grace_s=1.0)
    node.apply(Assign(1, (order(tmp_path, 1, ("sleep", marker), need=0.5),
                          order(tmp_path, 2, ("true",), need=0.5))))
    ended = {f.id: f for f in run_until(node, 2)}
    assert not running_with(marker), "the task runs on, unwatched"
    with pytest.raises(ChildProcessError):
        os.waitpid(fail_once.pids[0], os.WNOHANG)  # reaped by the runner
    assert ended[1].kind == EndKind.ERROR, ended[1]
    assert ended[1].tail == ("cannot watch the task's process, ended at once: "
                             "pidfd_open: Too many open files"), ended[1]
    assert ended[2].kind == EndKind.DONE and ended[2].rc == 0  # the node serves on
    assert not node.running and node.res.free == pytest.approx(1.0)
    node.close()


def test_an_interpreter_that_cannot_be_watched_is_ended_and_the_next_call_runs(
        tmp_path: Path, fail_once: FailOnce) -> None:
    fail_once.nth = 2  # the zygote's is the first, the first interpreter's the second
    node = python_node()
    try:
        first = run(node, call(tmp_path, 1, "where"))[1]
        interp = fail_once.pids[1]
        assert gone(interp), "the interpreter never watched is still there"
        assert ok(run(node, call(tmp_path, 2, "where"))[2])["pid"] != interp
        assert failed(first).endswith(
            "cannot watch a new Python interpreter: [Errno 24] Too many open files"), first
    finally:
        node.close()


def test_a_zygote_that_cannot_be_watched_is_ended_and_the_next_call_starts_one(
        tmp_path: Path, fail_once: FailOnce) -> None:
    """Before: the zygote was left unreaped, and the pool's next look at it raised
    ValueError (a pidfd of -1)."""
    node = python_node()
    try:
        first = run(node, call(tmp_path, 1, "where"))[1]
        assert ok(run(node, call(tmp_path, 2, "where"))[2])["pid"] > 0
        with pytest.raises(ChildProcessError):
            os.waitpid(fail_once.pids[0], os.WNOHANG)  # the zygote, reaped
        assert failed(first).endswith(
            "cannot watch the interpreters' zygote: pidfd_open: Too many open files"), first
    finally:
        node.close()


STAND_INS = """
import os, select, subprocess, time
from balsam_mpi.node.exitnotes import ExitNotes

def readable(fd):
    return bool(select.select([fd], [], [], 0)[0])

notes = ExitNotes()
# An interpreter's end read in the same read as its start: relayed before it is watched.
notes.relayed_exit(4242)
early = notes.other(4242)
late = notes.other(4243)
print("early", readable(early), "late", readable(late))
notes.relayed_exit(4243)
print("late after its word", readable(late))
# A child: readable once SIGCHLD has been serviced, and not reaped by it.
proc = subprocess.Popen(["sleep", "0.2"])
fd = notes.child(proc.pid)
print("child at start", readable(fd))
select.select([notes.fileno()], [], [], 5)
notes.service()
print("child after SIGCHLD", readable(fd), "reaped by the node", os.waitpid(proc.pid, 0)[0] == proc.pid)
print("left", notes.open_count())
"""


def test_stand_ins_close_on_the_exit_they_stand_for(tmp_path: Path) -> None:
    """node/exitnotes.py alone, in a process of its own (it takes SIGCHLD and the wake-up
    descriptor): a relayed end, one relayed before its watch began (an interpreter that
    died at once), and a child's end through SIGCHLD, left for the node to reap."""
    out = subprocess.run([sys.executable, "-c", STAND_INS], cwd=REPO, capture_output=True,
                         text=True, timeout=30)
    assert out.stdout.splitlines() == [
        "early True late False", "late after its word True", "child at start False",
        "child after SIGCHLD True reaped by the node True", "left 0"], out
