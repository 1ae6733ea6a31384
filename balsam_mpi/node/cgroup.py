"""A cgroup for each task, where the host delegates cgroup v2 to the launcher's user.

The trampoline (``pdeath``) already contains a task as a child subreaper; a cgroup adds
the one case it cannot cover: the trampoline itself killed (by the task, or the OOM
killer). Everything the task started is in its cgroup whatever it did, and the node
empties it with ``cgroup.kill`` (Linux 5.14+) when the task ends or must die now.

Used only when the launcher's own cgroup (``0::`` in ``/proc/self/cgroup``, under the
cgroup2 mount) is writable by its user — a systemd user session's delegated subtree, a
container's, root's — and no controller is enabled below it (a cgroup with controllers
enabled for its children may hold no processes itself). Batch systems usually keep job
cgroups to themselves; there the trampoline alone does the work. Each launcher process
makes ``balsam-<pid>/`` beside itself, one ``t<id>-<n>`` per task inside it, and removes
them when they are empty; directories of launchers that died are removed by the next.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import time

from ..base.procs import pid_alive
from . import cgroupfs

log = logging.getLogger(__name__)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
# One sequence per process, not per TaskCgroups: a set closed while a task cgroup could
# not yet be removed leaves it in ``balsam-<pid>/``, and the next set (same pid, same
# directory) must not hand that name out again.
_SEQ = itertools.count()
_NAME_TRIES = 64


def _own_cgroup() -> str | None:
    """The directory of this process's cgroup v2, or None."""
    placed = cgroupfs.own_cgroups().get(cgroupfs.UNIFIED)
    return placed.path if placed is not None else None


class TaskCgroups:
    """This launcher process's ``balsam-<pid>/`` and the task cgroups inside it."""

    def __init__(self, fd: int, path: str) -> None:
        self.fd = fd
        self.path = path
        self._pending: set[str] = set()  # emptied but not yet removable

    @classmethod
    def detect(cls) -> TaskCgroups | None:
        own = _own_cgroup()
        if own is None:
            return None
        try:
            with open(os.path.join(own, "cgroup.subtree_control")) as fh:
                controlled = fh.read().split()
            root = not os.path.exists(os.path.join(own, "cgroup.type"))
        except OSError:
            return None
        if (controlled and not root) or not os.access(own, os.W_OK) or not os.access(
                os.path.join(own, "cgroup.procs"), os.W_OK):
            return None
        _remove_stale(own)
        path = os.path.join(own, f"balsam-{os.getpid()}")
        try:
            os.mkdir(path, 0o755)
        except FileExistsError:
            pass
        except OSError:
            return None
        if not os.path.exists(os.path.join(path, "cgroup.kill")):
            with contextlib.suppress(OSError):
                os.rmdir(path)
            return None  # before Linux 5.14: nothing to empty a cgroup with at once
        return cls(os.open(path, _DIR_FLAGS), path)

    def create(self, task_id: int) -> tuple[str, int]:
        """A new cgroup for one task: its name and an fd of its directory (the trampoline
        joins it through the fd)."""
        self._retry_pending()
        for _ in range(_NAME_TRIES):
            name = f"t{task_id}-{next(_SEQ)}"
            try:
                os.mkdir(name, 0o755, dir_fd=self.fd)
            except FileExistsError:
                continue  # left by an earlier process with this pid, or planted
            return name, os.open(name, _DIR_FLAGS, dir_fd=self.fd)
        raise FileExistsError(errno.EEXIST, "every task cgroup name tried exists")

    def kill(self, name: str) -> None:
        """SIGKILL everything in the task's cgroup, trampoline included."""
        try:
            fd = os.open(f"{name}/cgroup.kill", os.O_WRONLY | os.O_CLOEXEC, dir_fd=self.fd)
        except OSError:
            return
        try:
            os.write(fd, b"1")
        except OSError:
            pass
        finally:
            os.close(fd)

    def release(self, name: str) -> None:
        """After the trampoline is reaped: kill what may remain, remove the cgroup (later,
        if processes are still on their way out)."""
        self.kill(name)
        try:
            os.rmdir(name, dir_fd=self.fd)
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                self._pending.add(name)

    def _retry_pending(self) -> None:
        for name in list(self._pending):
            try:
                os.rmdir(name, dir_fd=self.fd)
            except OSError as exc:
                if exc.errno == errno.EBUSY:
                    continue
            self._pending.discard(name)

    def close(self, grace_s: float = 1.0) -> None:
        """Kill what is left, give it ``grace_s`` to leave (a kill is not instant), remove
        what is empty. A cgroup still busy after that stays; the next set skips its name."""
        for name in list(self._pending):
            self.kill(name)
        deadline = time.monotonic() + grace_s
        self._retry_pending()
        while self._pending and time.monotonic() < deadline:
            time.sleep(0.01)
            self._retry_pending()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            with contextlib.suppress(OSError):
                os.rmdir(self.path)


def _remove_stale(own: str) -> None:
    """``balsam-<pid>`` directories whose launcher is gone: empty them and remove them."""
    try:
        names = os.listdir(own)
    except OSError:
        return
    for name in names:
        if not name.startswith("balsam-") or not name[7:].isdigit() or pid_alive(int(name[7:])):
            continue
        parent = os.path.join(own, name)
        with contextlib.suppress(OSError):
            for child in os.listdir(parent):
                sub = os.path.join(parent, child)
                if os.path.isdir(sub):
                    with contextlib.suppress(OSError):
                        with open(os.path.join(sub, "cgroup.kill"), "w") as fh:
                            fh.write("1")
                    with contextlib.suppress(OSError):
                        os.rmdir(sub)
            os.rmdir(parent)
