"""Start and stop take turns on one host: an exclusive ``flock`` on the project's
``.dbctl.lock``, a file only the owner can open (0600, in the directory only the owner
writes). The project directory itself would not do: every group member can open it, and
one who took the lock and kept it made the owner's start and stop wait forever.

Where a project lives on a file system without ``flock`` — Lustre mounted without it
answers ENOSYS, NFS without its lock manager ENOLCK — the turn is taken on a file of this
host's own instead, named after the project's lock file (its device and inode), in a
directory only the owner may use (``$XDG_RUNTIME_DIR``, else ``/tmp/balsam-dbctl-UID``).
Start and stop only run on the host that holds the server, so a lock of that host's is
the lock that matters.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Iterator

from ..base.errors import ProjectError
from ..base.project import Project

LOCK_NAME = ".dbctl.lock"
TMP = "/tmp"  # where the private directory goes without $XDG_RUNTIME_DIR
# What a file system that does not do flock answers.
NO_FLOCK = frozenset({errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL})


@contextlib.contextmanager
def project_lock(project: Project) -> Iterator[None]:
    """Hold the project's start/stop turn on this host."""
    fd = os.open(project.root / LOCK_NAME,
                 os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o077:  # made under another layout, or copied so
            os.fchmod(fd, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            if exc.errno not in NO_FLOCK:
                raise
            st = os.fstat(fd)
            held = _host_lock(f"{st.st_dev:x}-{st.st_ino:x}.lock")
            os.close(fd)
            fd = held
        yield
    finally:
        os.close(fd)


def _host_lock(name: str) -> int:
    """An exclusive flock on ``name`` in this user's private directory of this host;
    the descriptor that holds it."""
    where = _private_dir()
    fd = os.open(os.path.join(where, name),
                 os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _private_dir() -> str:
    """``$XDG_RUNTIME_DIR`` when it is this user's own (0700), else
    ``/tmp/balsam-dbctl-UID``, made 0700; anything else there — a link, another user's
    directory, one others may write — is refused, never used (``/tmp`` is everyone's)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime and _private(runtime):
        return runtime
    path = os.path.join(TMP, f"balsam-dbctl-{os.geteuid()}")
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    if not _private(path):
        raise ProjectError(
            f"the project's file system has no flock, and {path}, where this host's lock "
            "would be taken instead, is not a directory of yours that only you can use: "
            "remove it, or set XDG_RUNTIME_DIR to such a directory")
    return path


def _private(path: str) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()
            and not st.st_mode & 0o077)
