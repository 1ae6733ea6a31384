"""Where a task runs, as descriptors: its directory and its two output files.

A task's directory is walked from the project's ``data/`` and made where missing, its
``task.out``/``task.err`` created in it (``base/taskfiles``, ``base/safefs``: no planted
link is followed, no FIFO opened); a Python call of an app without task directories
(migration 0020) gets its workflow's directory, walked the same way, and two in-memory
files instead. What was planted fails the task with one line (:class:`StartError`).
Every descriptor is kept above 4, where the trampoline's file actions cannot overwrite
it. The runner, the pool and the node's opening ahead (``ahead``) all open here.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from typing import TypeVar

from ..base import safefs, taskfiles
from ..protocol import RunOrder

STDOUT_NAME = "task.out"
STDERR_NAME = "task.err"
T = TypeVar("T")


class StartError(Exception):
    """The task could not be started (no such program, no permission, bad directory)."""


def open_task_dir(order: RunOrder, out_name: str = STDOUT_NAME, err_name: str = STDERR_NAME
                  ) -> tuple[int, int, int]:
    """The task's directory (walked from the project's data/, made where missing) and its
    two output files, as descriptors; StartError with one line if anything was planted."""
    fds = _walked(order.cwd, lambda: taskfiles.open_task_dir(order.cwd, out_name, err_name))
    return high(fds[0]), high(fds[1]), high(fds[2])


def open_call_without_dir(order: RunOrder) -> tuple[int, int, int]:
    """A Python call of an app without task directories: its workflow's directory (the
    walk's refusals as for any task) and two in-memory files for its output, whose tail
    is read back for a failure as any task's is."""
    dir_fd = high(_walked(os.path.dirname(os.path.dirname(order.cwd)),
                          lambda: taskfiles.open_workflow_dir(order.cwd)))
    out = high(os.memfd_create(f"task-{order.id}.out", os.MFD_CLOEXEC))
    err = high(os.memfd_create(f"task-{order.id}.err", os.MFD_CLOEXEC))
    return dir_fd, out, err


def close(opened: tuple[int, int, int] | None) -> None:
    """Close what an open here returned (None: nothing was opened)."""
    for fd in opened or ():
        os.close(fd)


def _walked(where: str, walk: Callable[[], T]) -> T:
    """``walk()``, its refusal or OS error as a StartError of one line."""
    try:
        return walk()
    except safefs.UnsafePath as exc:
        raise StartError(str(exc)) from None
    except OSError as exc:
        raise StartError(f"cannot prepare {where}: {exc.strerror}") from None


def high(fd: int) -> int:
    """Keep a descriptor clear of 0-4, which the trampoline's file actions overwrite (only
    a worker started with its standard descriptors closed would hand out such low ones)."""
    if fd > 4:
        return fd
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 5)
    os.close(fd)
    return moved
