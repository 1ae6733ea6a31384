"""Stand-ins for pidfds where the kernel has none (``pidfds``): Linux before 5.3, or a
container whose seccomp profile refuses ``pidfd_open``.

A pidfd is a descriptor that becomes readable, for good, when its process ends; the node
sleeps on such descriptors in ``epoll``, and the Python pool tests them with ``select``.
A stand-in keeps that shape: the read end of a pipe whose only write end is held here,
and closed — the read end then reads EOF, readable for good — the moment the process is
known to have ended. Who knows it:

* for a child of this process (a task's trampoline, a process task started without one,
  the Python zygote), ``SIGCHLD``: its handler does nothing but the interpreter's wake-up
  descriptor (``signal.set_wakeup_fd``) becomes readable, and :meth:`service` then asks
  each watched child, without reaping it (``waitid`` with ``WNOWAIT``: the node reaps
  it as it always does, so its pid cannot be reused while it is watched);
* for a Python interpreter, a child of the zygote, the zygote: it relays each exit over
  its socket (``pyzygote``), whose reader calls :meth:`relayed_exit`; if the zygote
  itself goes, every interpreter it forked is taken for ended (they die with it).

The node's ``epoll`` holds one descriptor for all of it (:meth:`fileno`, an ``epoll`` of
the wake-up pipe and the zygotes' sockets); when it fires, :meth:`service` runs first and
the stand-ins it closed are then readable like pidfds.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
from collections.abc import Callable
from types import FrameType

EARLY_MAX = 256


def _nothing(_sig: int, _frame: FrameType | None) -> None:
    """SIGCHLD's handler: the wake-up descriptor has been written before it runs."""


class ExitNotes:
    def __init__(self) -> None:
        self._children: dict[int, int] = {}  # pid -> write end, a child of this process
        self._relayed: dict[int, int] = {}  # pid -> write end, an exit its parent tells
        self._early: set[int] = set()  # relayed exits of pids not yet watched
        self._sources: dict[int, Callable[[], None]] = {}  # fd -> read what it says
        self._epoll = select.epoll()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # Both need the main thread, where the node runs (and its first stand-in is made).
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, _nothing)
        # SA_RESTART: a system call of MPI's or the database driver's that SIGCHLD
        # interrupts is restarted, not failed with EINTR (Python's own retry anyway).
        signal.siginterrupt(signal.SIGCHLD, False)
        self._epoll.register(self._wake_r, select.EPOLLIN)

    def fileno(self) -> int:
        """Readable when :meth:`service` may have something to close."""
        return self._epoll.fileno()

    def child(self, pid: int) -> int:
        """A stand-in for a child of this process, just started (not yet reaped)."""
        read, write = os.pipe2(os.O_CLOEXEC)
        old = self._children.pop(pid, None)
        if old is not None:  # a pid reused after the node reaped the last holder of it
            os.close(old)
        self._children[pid] = write
        self._check(pid)  # it may have ended before SIGCHLD had a handler
        return read

    def other(self, pid: int) -> int:
        """A stand-in for a process whose parent will say when it ends."""
        read, write = os.pipe2(os.O_CLOEXEC)
        old = self._relayed.pop(pid, None)
        if old is not None:
            os.close(old)
        if pid in self._early:  # its end was read with its start (one read of both)
            self._early.discard(pid)
            os.close(write)
        else:
            self._relayed[pid] = write
        return read

    def open_count(self) -> int:
        return len(self._children) + len(self._relayed)

    def relayed_exit(self, pid: int) -> None:
        write = self._relayed.pop(pid, None)
        if write is not None:
            os.close(write)
            return
        # Not watched yet: an interpreter that died at once, its exit read in the same
        # read as its pid. Kept for :meth:`other`, briefly: a pid is reused only after
        # many others, and what is never asked for is dropped with the rest.
        if len(self._early) >= EARLY_MAX:
            self._early.clear()
        self._early.add(pid)

    def source(self, fd: int, read: Callable[[], None]) -> None:
        """Also wake for ``fd`` (a zygote's socket); :meth:`service` calls ``read``."""
        self._sources[fd] = read
        self._epoll.register(fd, select.EPOLLIN)

    def drop(self, fd: int) -> None:
        if self._sources.pop(fd, None) is not None:
            with contextlib.suppress(OSError):
                self._epoll.unregister(fd)

    def service(self) -> None:
        """Close the stand-ins of every process now known to have ended."""
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 4096):
                pass
        for pid in list(self._children):
            self._check(pid)
        for fd, _mask in self._epoll.poll(0):
            read = self._sources.get(fd)
            if read is not None:
                read()

    def _check(self, pid: int) -> None:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
                return  # still running
        except ChildProcessError:  # reaped already (by the node): ended all the same
            pass
        os.close(self._children.pop(pid))
