"""Start, watch and stop one task process: argv, environment, working directory, output.

Tasks run from argv lists, never through a shell (``sh -c`` halved the spawn rate here);
only an app with an ``env_script`` gets ``/bin/sh`` to source it and ``exec`` the task.
Each task leads its own session (so a kill reaches its whole process group) and, unless
disabled, gets a parent-death signal so it dies with its worker: a launcher killed with
``kill -9`` must leave nothing running that a requeue would start a second time. The
signal is set by a tiny exec trampoline (``pdeath.py``) started with ``posix_spawn``;
``preexec_fn`` is the fallback, as it makes every spawn several times slower.

The process's exit is watched through a pidfd, so a node can sleep in ``epoll`` and still
wake the moment a task ends.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from . import pdeath
from .protocol import EndKind, TaskSpec

log = logging.getLogger(__name__)

STDOUT_NAME = "task.out"
STDERR_NAME = "task.err"
TAIL_BYTES = 2048
PR_SET_PDEATHSIG = 1
_OUT_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND
# Python ignores these; a task must start with the default dispositions (as Popen does).
_DEFAULT_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)

# Variables of the launcher's own MPI job: a task that inherited them would try to join
# the launcher's MPI world instead of starting its own.
_LAUNCHER_ENV_PREFIXES = ("PMI_", "PMIX_", "HYDRA_", "HYDI_", "MPIR_", "OMPI_", "PALS_",
                          "MPI_LOCAL")


def base_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The worker's environment minus its MPI launcher variables (computed once)."""
    return {k: v for k, v in environ.items() if not k.startswith(_LAUNCHER_ENV_PREFIXES)}


def task_environment(base: Mapping[str, str], spec: TaskSpec, db_path: str,
                     gpu_ids: tuple[int, ...] = ()) -> dict[str, str]:
    env = dict(base)
    env.update(spec.env)
    env["BALSAM_TASK_ID"] = str(spec.id)
    if db_path:
        env["BALSAM_DB_PATH"] = db_path
    env["OMP_NUM_THREADS"] = str(spec.threads)
    if gpu_ids:
        visible = ",".join(map(str, gpu_ids))
        for name in ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "ZE_AFFINITY_MASK"):
            env[name] = visible
    return env


def task_argv(spec: TaskSpec) -> list[str]:
    if spec.env_script:
        # Source the app's environment script, then become the task (no extra process).
        return ["/bin/sh", "-c", '. "$0" && exec "$@"', spec.env_script, *spec.argv]
    return list(spec.argv)


_libc: ctypes.CDLL | None = None


def _die_with_parent_hook() -> Callable[[], None]:
    """A preexec function: SIGKILL this child when the worker dies (Linux prctl)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    libc = _libc
    parent = os.getpid()

    def hook() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the worker died before prctl took effect
            os._exit(137)

    return hook


def make_dir(path: Path) -> None:
    """The task's directory, group-writable whatever the umask (setgid kept)."""
    try:
        path.mkdir(mode=0o2770)
    except FileExistsError:
        return
    except FileNotFoundError:
        make_dir(path.parent)  # the workflow and shard levels, group-writable as well
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o2770)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o2770)  # explicit mode: mkdir's is masked by the umask


@dataclass(slots=True)
class TaskProcess:
    spec: TaskSpec
    pid: int
    pidfd: int
    started_at: float
    deadline: float  # monotonic; 0 = none
    popen: subprocess.Popen[bytes] | None = None  # only on the preexec_fn fallback
    rc: int | None = None
    end_kind: EndKind | None = None  # set when the launcher stops it, and why
    kill_at: float = 0.0  # monotonic time to escalate to SIGKILL


class StartError(Exception):
    """The task could not be started (no such program, no permission, bad directory)."""


_warned_fallback = False
_which: dict[tuple[str, str], str | None] = {}


def _resolve(name: str, env: Mapping[str, str]) -> str:
    """A program name as execve needs it (the trampoline does not search PATH)."""
    if "/" in name:
        return name  # relative names resolve against the task's directory, as exec does
    key = (name, env.get("PATH", os.defpath))
    if key not in _which:
        _which[key] = shutil.which(name, path=key[1])
    found = _which[key]
    if found is None:
        raise StartError(f"cannot start {name!r}: not found on the task's PATH")
    return found


def start(spec: TaskSpec, env: Mapping[str, str], *, die_with_parent: bool = True
          ) -> TaskProcess:
    """Start one task; its stdout and stderr go to files in its working directory."""
    global _warned_fallback
    cwd = Path(spec.cwd)
    make_dir(cwd)
    argv = task_argv(spec)
    tramp = pdeath.trampoline() if die_with_parent else None
    deadline = time.monotonic() + spec.wall_time_s if spec.wall_time_s > 0 else 0.0
    started = time.time()
    if tramp is not None:
        prog = _resolve(argv[0], env)
        try:
            pid = os.posix_spawn(
                tramp, [tramp, str(os.getpid()), str(cwd), prog, *argv[1:]], env,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_OPEN, 1, str(cwd / STDOUT_NAME), _OUT_FLAGS, 0o660),
                    (os.POSIX_SPAWN_OPEN, 2, str(cwd / STDERR_NAME), _OUT_FLAGS, 0o660),
                ],
                setsid=True, setsigmask=(), setsigdef=_DEFAULT_SIGNALS)
        except OSError as exc:
            raise StartError(f"cannot start {argv[0]!r}: {exc}") from None
        return TaskProcess(spec, pid, os.pidfd_open(pid), started, deadline)
    if die_with_parent and not _warned_fallback:
        _warned_fallback = True
        log.warning("no task trampoline (no C compiler?): using preexec_fn for the "
                    "parent-death signal, which makes starting tasks several times slower")
    try:
        with open(cwd / STDOUT_NAME, "ab") as out, open(cwd / STDERR_NAME, "ab") as err:
            popen = subprocess.Popen(
                argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                start_new_session=True, close_fds=True,
                preexec_fn=_die_with_parent_hook() if die_with_parent else None,
            )
    except (OSError, subprocess.SubprocessError) as exc:
        raise StartError(f"cannot start {argv[0]!r}: {exc}") from None
    return TaskProcess(spec, popen.pid, os.pidfd_open(popen.pid), started, deadline, popen)


def signal_group(proc: TaskProcess, sig: int) -> None:
    """Signal the task's whole process group (it leads its own session)."""
    if proc.rc is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def reap(proc: TaskProcess) -> int | None:
    """The exit code once the process is gone (negative: killed by that signal)."""
    if proc.rc is not None:
        return proc.rc
    if proc.popen is not None:
        proc.rc = proc.popen.poll()
        return proc.rc
    try:
        pid, status = os.waitpid(proc.pid, os.WNOHANG)
    except ChildProcessError:
        proc.rc = 255  # reaped elsewhere; the exit status is lost
        return proc.rc
    if pid == 0:
        return None
    proc.rc = os.waitstatus_to_exitcode(status)
    return proc.rc


def close(proc: TaskProcess) -> None:
    if proc.pidfd >= 0:
        os.close(proc.pidfd)
        proc.pidfd = -1


def output_tail(cwd: str, limit: int = TAIL_BYTES) -> str:
    """The last bytes of the task's stderr, else its stdout (for a failed task's record)."""
    for name in (STDERR_NAME, STDOUT_NAME):
        path = os.path.join(cwd, name)
        try:
            with open(path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                if size == 0:
                    continue
                fh.seek(max(0, size - limit))
                return fh.read().decode("utf-8", "replace")
        except OSError:
            continue
    return ""
