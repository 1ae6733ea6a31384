"""One warm interpreter as its node sees it (``node/pypool.py`` keeps them): its process,
the node's end of its socket, and one epoll that wakes for an answer or its death."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
from collections.abc import Callable

from . import pidfds

# An interpreter's kind: the spawn variables it was started with (pypool.SPAWN_KEYS), its
# address-space cap and its resident-size cap. It serves only calls of its kind.
Key = tuple[tuple[tuple[str, str], ...], int, int]
SPARE: Key = ((), -1, -1)  # a spare's kind until its first call gives it one


class Interpreter:
    """One warm interpreter process and the node's end of its socket."""

    def __init__(self, pid: int, sock: socket.socket, key: Key,
                 status: Callable[[int, int, float], int | None], generation: int) -> None:
        self.pid = pid
        self._status = status  # from its parent, the zygote
        self.generation = generation
        self.sock = sock
        self.key = key
        self.pidfd = -1
        try:
            self.pidfd = pidfds.open_other(pid)  # (its zygote's word, without pidfds)
            self.watch = select.epoll()  # readable: an answer, or the process is gone
        except OSError:  # no descriptor free: never watched, so never called (pidfds)
            self._abandon()
            raise
        self.watch.register(sock.fileno(), select.EPOLLIN)
        self.watch.register(self.pidfd, select.EPOLLIN)
        self.calls = 0
        self.buf = bytearray()
        self.eof = False
        self.status: int | None = None  # the exit status, once reaped

    def idle_and_alive(self) -> bool:
        """Nothing to read and not exited (an idle interpreter never speaks first)."""
        return not self.watch.poll(0)

    def reap(self, wait_s: float = 0.0) -> int | None:
        """The exit status, once the process has exited (``wait_s``: it has, and the
        zygote's word on it is a moment away)."""
        if self.status is None:
            self.status = self._status(self.pid, self.generation, wait_s)
        return self.status

    def kill(self) -> None:
        if self.status is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)

    def _abandon(self) -> None:
        """End an interpreter the node could not watch; its zygote reaps it."""
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
        with contextlib.suppress(OSError):
            self.sock.close()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    def close_fds(self) -> None:
        with contextlib.suppress(OSError):
            self.watch.close()
        with contextlib.suppress(OSError):
            self.sock.close()
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
