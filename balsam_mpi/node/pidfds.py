"""Every process a node starts is watched through a pidfd: its end wakes the node's
``epoll`` (``procwatch``), and a signal sent through one never reaches a reused pid.

``pidfd_open`` came with Linux 5.3. An older kernel answers ENOSYS, and so may a
container whose seccomp profile predates the call (some answer EPERM): then no task
could be watched, and every start would fail only after its process was running.
``check`` says so once, before a launcher opens its batch job.

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
import signal
import subprocess
import time
from collections.abc import Callable

from ..base.errors import Unsupported

# What a kernel or a seccomp filter answers for a call it does not offer.
REFUSED = frozenset({errno.ENOSYS, errno.EPERM, errno.EACCES, errno.EOPNOTSUPP})


def check() -> None:
    """Raise ``Unsupported`` (one line) if this system will not open pidfds."""
    opener = getattr(os, "pidfd_open", None)
    if opener is None:  # a Python built where the call did not exist
        raise Unsupported(_refusal("this Python has no os.pidfd_open"))
    try:
        fd = opener(os.getpid())
    except OSError as exc:
        if exc.errno not in REFUSED:
            return  # not a refusal (no descriptor free): the open-file check's matter
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        raise Unsupported(_refusal(f"pidfd_open was refused ({name}: {exc.strerror})")
                          ) from None
    os.close(fd)


def _refusal(what: str) -> str:
    return (f"{what} on Linux {platform.release()}: the launcher watches every task "
            "through a pidfd, which needs Linux 5.3 or later and, in a container, a "
            "seccomp profile that allows pidfd_open")


def open_or_end(pid: int, end: Callable[[], None]) -> int:
    """A pidfd for ``pid``, a process just started; if none can be opened, ``end()``
    (which must end and reap it) runs before the error is raised."""
    try:
        return os.pidfd_open(pid)
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
