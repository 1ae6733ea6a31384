"""Every process a node starts is watched through a pidfd: its end wakes the node's
``epoll`` (``procwatch``), and a signal sent through one never reaches a reused pid.

``pidfd_open`` came with Linux 5.3. An older kernel answers ENOSYS, and so may a
container whose seccomp profile predates the call (some answer EPERM). There the node
watches through stand-ins instead (``exitnotes``: a pipe closed when ``SIGCHLD``, or the
zygote for its interpreters, says the process ended), which read like pidfds; ``check``
says once that it does. Everything that opens, tests or waits on one goes through here.

A pidfd is opened just after the process is spawned (Python has no spawn that returns
one). Should that fail all the same (EMFILE: every descriptor of the node in use), the
process would run unwatched while its task is recorded as never started, and a retry
would run it a second time. ``open_or_end`` ends the process before it says why.
"""

from __future__ import annotations

import contextlib
import errno
import os
import platform
import select
import signal
import subprocess
import time
from collections.abc import Callable

from .exitnotes import ExitNotes

# What a kernel or a seccomp filter answers for a call it does not offer.
REFUSED = frozenset({errno.ENOSYS, errno.EPERM, errno.EACCES, errno.EOPNOTSUPP})


_notes: ExitNotes | None = None


def available() -> bool:
    """Whether this system opens pidfds (asked once, when this module is imported)."""
    return _AVAILABLE


def _refused() -> str | None:
    """Why pidfds cannot be had here, or None."""
    opener = getattr(os, "pidfd_open", None)
    if opener is None:  # a Python built where the call did not exist
        return "this Python has no os.pidfd_open"
    try:
        fd = opener(os.getpid())
    except OSError as exc:
        if exc.errno not in REFUSED:
            return None  # not a refusal (no descriptor free): the open-file check's matter
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        return f"pidfd_open was refused ({name}: {exc.strerror})"
    os.close(fd)
    return None


def check() -> str | None:
    """None where pidfds work; else the one line the launcher logs: what was refused, on
    which kernel, and that the nodes watch their processes without them."""
    why = _refused()
    if why is None:
        return None
    return (f"{why} on Linux {platform.release()} (pidfds need Linux 5.3 or later and, "
            "in a container, a seccomp profile that allows pidfd_open): the nodes watch "
            "their processes through SIGCHLD instead")


def stand_ins() -> ExitNotes | None:
    """The node's stand-ins for pidfds, where it needs them (made on first use, in the
    main thread)."""
    global _notes
    if available():
        return None
    if _notes is None:
        _notes = ExitNotes()
    return _notes


def open_child(pid: int) -> int:
    """A pidfd (or its stand-in) for ``pid``, a child of this process not yet reaped."""
    notes = stand_ins()
    return os.pidfd_open(pid) if notes is None else notes.child(pid)


def open_other(pid: int) -> int:
    """A pidfd (or a stand-in its parent's word closes: ``relayed_exit``) for ``pid``."""
    notes = stand_ins()
    return os.pidfd_open(pid) if notes is None else notes.other(pid)


def stand_ins_left() -> int:
    """Stand-ins still open (none once every process watched has ended): for tests."""
    return 0 if _notes is None else _notes.open_count()


def relayed_exit(pid: int) -> None:
    """``pid``'s parent says it ended (the zygote, of an interpreter)."""
    if _notes is not None:
        _notes.relayed_exit(pid)


def is_over(fd: int, timeout: float = 0.0) -> bool:
    """Whether the process behind pidfd (or stand-in) ``fd`` has ended, waiting up to
    ``timeout`` s for it."""
    if _notes is None:
        return bool(select.select([fd], [], [], timeout)[0])
    deadline = time.monotonic() + timeout
    while True:
        _notes.service()
        if select.select([fd], [], [], 0)[0]:
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        select.select([fd, _notes.fileno()], [], [], min(left, 0.05))


def open_or_end(pid: int, end: Callable[[], None]) -> int:
    """A pidfd (or its stand-in) for ``pid``, a child just started; if none can be
    opened, ``end()`` (which must end and reap it) runs before the error is raised."""
    try:
        return open_child(pid)
    except OSError:
        end()
        raise


def end_trampoline(pid: int, grace_s: float = 6.0) -> None:
    """End and reap a trampoline (node/trampoline.py) the node started: SIGHUP, its
    signal to kill everything under it, which it does within ~5 s even for processes
    stuck in the kernel; SIGKILL past ``grace_s``. Not yet reaped, the pid cannot have
    been reused."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + grace_s
    while not os.waitpid(pid, os.WNOHANG)[0]:
        if time.monotonic() > deadline:
            kill_and_reap(pid)
            return
        time.sleep(0.005)


def kill_and_reap(pid: int) -> None:
    """SIGKILL a child of this process not yet reaped (its pid cannot have been reused),
    then reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def end_group(popen: subprocess.Popen[bytes]) -> None:
    """End and reap a process started without the trampoline, leading its own process
    group: the whole group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, signal.SIGKILL)
    popen.wait()


_AVAILABLE = _refused() is None
