"""The task trampoline: a task's first process, which contains it and caps its output.

A task must die with its worker (a launcher killed with ``kill -9`` must leave nothing
running that a requeue would start again), and so must everything it forks: a shell
script's background jobs, a double-forked daemon in a session of its own. Python can set a
parent-death signal only through ``preexec_fn``, which forces a full ``fork()`` and
Python's after-fork machinery in the child (spawning ``/bin/true`` became 5x slower). So a
task's first program is this trampoline instead, a static binary without libc (``trampoline.c``, a few KB,
compiled once per user and machine into ``~/.cache/balsam_mpi`` or ``$BALSAM_CACHE_DIR``
with the system C compiler; x86-64 tested; aarch64 and ppc64le tested only under qemu's
user-mode emulation, ``tests/unit/test_trampoline_cross.py``) started with ``posix_spawn``
(vfork)
from the worker. It:

* gets its working directory and output as descriptors, never paths (fd 3: the task's
  directory, already checked by ``safefs``; fds 1 and 2: ``task.out``/``task.err``), and
  ``fchdir``s there, so nothing is resolved by name after the checks;
* closes every other descriptor of the worker's (MPI libraries leave theirs open across
  exec): ``close_range``, or on a kernel before 5.9 each one ``/proc/self/fd`` lists;
* asks for ``SIGHUP`` when the worker dies (``PR_SET_PDEATHSIG``), becomes a *child
  subreaper* (``PR_SET_CHILD_SUBREAPER``: whatever the task forks and orphans, however
  deep, is re-parented to it rather than to init), optionally joins the task's cgroup
  (fd 4, ``taskcgroup``), then forks the task into a session of its own and waits;
* forwards ``SIGTERM``/``SIGINT`` to the task's process group (the node's polite stop);
  on ``SIGHUP`` (the worker died, or the node's SIGKILL escalation) and whenever the task
  itself ends it SIGKILLs every process left under it — the task's group, then its
  children list (``/proc/thread-self/children``) round by round until none is left
  (at most ~5 s for processes stuck in the kernel);
* keeps each output file under the cap, checking once a second and at the end: above the
  cap it keeps the first half (ending with a line that says the middle was cut) and the
  last quarter, with ``fallocate(FALLOC_FL_COLLAPSE_RANGE)`` where the filesystem has it
  (ext4, XFS: atomic against the task's appends), else by copying the tail down and
  truncating (a few bytes written during the copy may be lost with the middle);
* exits with the task's own status (dying of the same signal, without a core dump), so the
  node's pidfd and ``waitpid`` see what they always saw.

Without a compiler (or elsewhere) the runner falls back to ``preexec_fn`` (correct for the
task itself, slower, no containment of what it forks, no cap) and says so once in the log.

Usage: ``pdeath PARENT_PID FLAGS CAP PROGRAM [ARGS…]``; FLAGS: 1 = die with PARENT_PID,
2 = join the cgroup open on fd 4; CAP: bytes per output file, 0 = none. Exit 137 if the
parent is already gone, 126 if the directory or fork fails, 127 if PROGRAM cannot be
executed (with a message on stderr), else the task's status.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import stat
import subprocess
import tempfile
from functools import cache
from pathlib import Path

log = logging.getLogger(__name__)

FLAG_PDEATH = 1
FLAG_CGROUP = 2
CWD_FD = 3
CGROUP_FD = 4
CAP_MIN = 1 << 20  # below this the kept head and tail are too small to be useful

# The C source, beside this file (package data): per-machine system call numbers and
# entry, then the common part.
SOURCE = (Path(__file__).with_name("trampoline.c")).read_text()

_FLAGS = ["-O2", "-static", "-nostdlib", "-fno-stack-protector", "-fno-builtin", "-fno-pie",
          "-no-pie", "-w"]


def cache_dir() -> Path:
    base = os.environ.get("BALSAM_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "balsam_mpi")
    return Path(base)


def _safe_dir(path: Path) -> bool:
    """Ours and writable by nobody else: a binary others could replace is never run."""
    try:
        st = path.stat()
    except OSError:
        return False
    return st.st_uid == os.getuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


@cache
def trampoline() -> str | None:
    """The trampoline's path, compiling it on first use; None when it cannot be had."""
    digest = hashlib.sha256((SOURCE + " ".join(_FLAGS)).encode()).hexdigest()[:12]
    folder = cache_dir()
    target = folder / f"pdeath-{platform.machine()}-{digest}"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        return None
    if not _safe_dir(folder):
        log.warning("not using %s for the task trampoline: not owned by you, or writable "
                    "by others", folder)
        return None
    if target.exists():
        return str(target) if _safe_dir(target) else None
    return _build(target)


def _build(target: Path) -> str | None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler or platform.machine() not in ("x86_64", "aarch64", "ppc64le"):
        return None
    try:  # a full or read-only cache is no build, never an error of the caller's
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            src = Path(tmp) / "pdeath.c"
            out = Path(tmp) / "pdeath"
            src.write_text(SOURCE)
            subprocess.run([compiler, *_FLAGS, "-o", str(out), str(src)], check=True,
                           capture_output=True, timeout=60)
            if not _self_test(str(out)):
                log.info("the task trampoline failed its self-test; not using it")
                return None
            os.chmod(out, 0o755)
            os.replace(out, target)
    except (OSError, subprocess.SubprocessError) as exc:
        log.info("could not build the task trampoline (%s)", exc)
        return None
    return str(target)


def _self_test(binary: str) -> bool:
    """Run ``/bin/true`` and ``/bin/false`` through a new build, as the runner will."""
    root = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        codes = []
        for prog in ("/bin/true", "/bin/false"):
            pid = os.posix_spawn(binary, [binary, str(os.getpid()), str(FLAG_PDEATH), "0",
                                          prog], {},
                                 file_actions=[(os.POSIX_SPAWN_DUP2, root, CWD_FD)])
            codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    finally:
        os.close(root)
    return codes == [0, 1]
