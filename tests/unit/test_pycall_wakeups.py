"""How often a warm interpreter is woken per call (node/pycall.py, node/pywire.py).

A call should wake its interpreter once: when the node sends it. Reading the answer must
not wake it again — but on a UNIX stream socket, the node's read frees the answer's
buffer and the kernel then wakes whatever waits on the interpreter's socket "for space",
which includes a reader blocked in ``recv`` (its wait takes any wake-up). Each such wake
is a context switch of the interpreter and a cross-CPU wake-up charged to the node, for
nothing. Counted through the interpreter's voluntary context switches, not timed.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

from balsam_mpi.node.pycall import encode_frame
from balsam_mpi.node.pywire import read_answer, send_call

REPO = str(Path(__file__).resolve().parents[2])
CALLS = 200


class _End:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.eof = False


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0]


def _switches(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches in /proc/PID/status")


def _asleep(pid: int, timeout: float = 10.0) -> None:
    """Until the interpreter sleeps (waiting for its next call)."""
    deadline = time.monotonic() + timeout
    while _state(pid) != "S":
        assert time.monotonic() < deadline, "the interpreter never went to sleep"
        time.sleep(0.001)


def test_reading_an_answer_does_not_wake_the_interpreter_again(tmp_path: Path) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    proc = subprocess.Popen(
        [sys.executable, "-m", "balsam_mpi.node.pycall", str(theirs.fileno()),
         str(os.getpid()), "0"], pass_fds=[theirs.fileno()],
        env={**os.environ, "PYTHONPATH": REPO}, stdout=subprocess.DEVNULL)
    theirs.close()
    end = _End(ours)
    try:
        header = {"fn": "tests.pyfuncs:noop", "env": {}, "as_cap": 0, "rss_cap": 0, "id": 1}
        frame = encode_frame(header, b"{}")
        out = os.open(tmp_path / "task.out", os.O_RDWR | os.O_CREAT, 0o600)
        err = os.open(tmp_path / "task.err", os.O_RDWR | os.O_CREAT, 0o600)
        dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
        # A first call imports the function; the count starts after it.
        send_call(ours, frame, [dir_fd, out, err])
        while read_answer(end) is None:
            assert not end.eof, "the interpreter hung up"
        _asleep(proc.pid)
        before = _switches(proc.pid)
        for _ in range(CALLS):
            send_call(ours, frame, [dir_fd, out, err])
            got = None
            while got is None:
                # The answer is written; once the interpreter waits for the next call,
                # take it — the moment a wake-up for nothing would happen.
                assert select.select([ours], [], [], 30)[0], "no answer"
                _asleep(proc.pid)
                got = read_answer(end)
                assert not end.eof, "the interpreter hung up"
            assert got[0]["rc"] == 0, got
        _asleep(proc.pid)
        time.sleep(0.05)  # a wake-up the last read caused has been counted
        _asleep(proc.pid)
        woken = _switches(proc.pid) - before
    finally:
        ours.close()
        proc.wait(timeout=30)
    # One sleep per call; each read of an answer that woke it adds one (here 1.2-1.45
    # a call when it waited in recv). Some slack for whatever else may put it to sleep.
    assert woken < CALLS * 1.15, f"{woken} sleeps for {CALLS} calls"
