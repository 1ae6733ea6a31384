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

from . import gpus, mpilaunch, pdeath
from .protocol import EndKind, TaskSpec

log = logging.getLogger(__name__)

STDOUT_NAME = "task.out"
STDERR_NAME = "task.err"
TAIL_BYTES = 2048
PR_SET_PDEATHSIG = 1
_OUT_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND
# Python ignores these; a task must start with the default dispositions (as Popen does).
_DEFAULT_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)

def base_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The worker's environment minus its own MPI job's variables (computed once): a
    task that inherited them would try to join the launcher's MPI world instead of
    starting its own (mpilaunch.task_mpi_env; docs/mpi-tasks.md has the measurements)."""
    return mpilaunch.task_mpi_env(environ)


def task_environment(base: Mapping[str, str], spec: TaskSpec, db_path: str,
                     gpu_ids: tuple[str, ...] = (), vendor: str | None = None,
                     extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(base)
    env.update(spec.env)
    env["BALSAM_TASK_ID"] = str(spec.id)
    if db_path:
        env["BALSAM_DB_PATH"] = db_path
    env["OMP_NUM_THREADS"] = str(spec.threads)
    if extra:
        env.update(extra)
    # After the task's own env: a task cannot name another task's devices.
    if gpu_ids:
        env.update(gpus.visibility_env(vendor, [str(i) for i in gpu_ids]))
    return env


def task_argv(spec: TaskSpec, prefix: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The task's argv, under a launch prefix for multi-rank tasks. The env_script goes
    outside the prefix: it often loads the module that provides the right ``mpiexec``."""
    if spec.env_script:
        # Source the app's environment script, then become the task (no extra process).
        return ["/bin/sh", "-c", '. "$0" && exec "$@"', spec.env_script, *prefix,
                *spec.argv]
    return [*prefix, *spec.argv]


def script_argv(script: str, env_script: str = "") -> list[str]:
    """An app's preprocess or postprocess line: a shell command line the app's owner
    wrote (as legacy Balsam ran them), after the env_script when the app has one."""
    if env_script:
        return ["/bin/sh", "-c", '. "$0" && eval "$1"', env_script, script]
    return ["/bin/sh", "-c", script]


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
    phase: str = "run"  # "pre" (the app's preprocess), "run", "post" (postprocess)
    run_kind: EndKind = EndKind.DONE  # in the post phase: how the run itself ended
    run_rc: int = 0
    run_started: float = 0.0
    run_ended: float = 0.0
    env: dict[str, str] | None = None  # kept for the next phase (run after pre, post)


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


def start(spec: TaskSpec, env: Mapping[str, str], *, die_with_parent: bool = True,
          argv: list[str] | None = None, out_name: str = STDOUT_NAME,
          err_name: str = STDERR_NAME, timed: bool = True) -> TaskProcess:
    """Start one task (or, given ``argv``, its pre/postprocess); stdout and stderr go to
    files in its working directory."""
    global _warned_fallback
    cwd = Path(spec.cwd)
    make_dir(cwd)
    if argv is None:
        argv = task_argv(spec)
    tramp = pdeath.trampoline() if die_with_parent else None
    deadline = (time.monotonic() + spec.wall_time_s
                if timed and spec.wall_time_s > 0 else 0.0)
    started = time.time()
    if tramp is not None:
        prog = _resolve(argv[0], env)
        try:
            pid = os.posix_spawn(
                tramp, [tramp, str(os.getpid()), str(cwd), prog, *argv[1:]], env,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_OPEN, 1, str(cwd / out_name), _OUT_FLAGS, 0o660),
                    (os.POSIX_SPAWN_OPEN, 2, str(cwd / err_name), _OUT_FLAGS, 0o660),
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
        with open(cwd / out_name, "ab") as out, open(cwd / err_name, "ab") as err:
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


def output_tail(cwd: str, limit: int = TAIL_BYTES,
                names: tuple[str, str] = (STDERR_NAME, STDOUT_NAME)) -> str:
    """The last bytes of the task's stderr, else its stdout (for a failed task's record)."""
    for name in names:
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
