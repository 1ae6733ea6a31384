"""Start, watch and stop one task process: argv, environment, working directory, output.

Tasks run from argv lists, never through a shell (``sh -c`` halved the spawn rate here);
only an app with an ``env_script`` gets ``/bin/sh`` to source it and ``exec`` the task.

Nothing in the project directory is trusted (``safefs``): the task's directory is walked
from ``data/`` without following links and its output files are created relative to it,
never through a link, never a FIFO; what was planted there fails the task with one line
(``taskplace``). The task's first process is the trampoline (``trampoline.py``), started
with ``posix_spawn``; it gets the directory and the output files as descriptors, contains
everything the task forks (a subreaper, plus a cgroup where the host delegates one:
``taskcgroup``), kills it all when the task or the launcher ends, and keeps each output
file under the cap.
``preexec_fn`` is the fallback without a C compiler, as it makes every spawn several
times slower and contains only the task's own process.

The process's exit is watched through a pidfd, so a node can sleep in ``epoll`` and still
wake the moment a task ends; the failure tail is read from the descriptors the runner
wrote, never by re-opening a path.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import resource
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..base import taskfiles
from ..base.errors import UsageError
from ..protocol import EndKind, RunOrder
from . import gpus, mpilaunch, pidfds, taskplace, trampoline
from .cgroup import TaskCgroups
from .prctl import PR_SET_PDEATHSIG, libc_prctl

# Where a task runs (its directory and outputs) is taskplace's; these names stay here too,
# where the node, the pool, prepost and the tests have always found them.
from .taskplace import STDERR_NAME as STDERR_NAME
from .taskplace import STDOUT_NAME as STDOUT_NAME
from .taskplace import StartError as StartError
from .taskplace import high
from .taskplace import open_task_dir as open_task_dir

log = logging.getLogger(__name__)

TAIL_BYTES = 2048
DEFAULT_OUTPUT_CAP_MB = 256.0  # per output file; settings: output_cap_mb (0 = none)
# Python ignores these; a task must start with the default dispositions (as Popen does).
_DEFAULT_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)

def base_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The worker's environment minus its own MPI job's variables (computed once): a
    task that inherited them would try to join the launcher's MPI world instead of
    starting its own (mpilaunch.task_mpi_env; docs/mpi-tasks.md has the measurements)."""
    return mpilaunch.task_mpi_env(environ)


def task_environment(base: Mapping[str, str], order: RunOrder, db_path: str,
                     gpu_ids: tuple[str, ...] = (), vendor: str | None = None,
                     extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(base)
    env.update(order.env)
    env["BALSAM_TASK_ID"] = str(order.id)
    if db_path:
        env["BALSAM_DB_PATH"] = db_path
    env["OMP_NUM_THREADS"] = str(order.threads)
    if extra:
        env.update(extra)
    # After the task's own env: a task cannot name another task's devices.
    if gpu_ids:
        env.update(gpus.visibility_env(vendor, [str(i) for i in gpu_ids]))
    return env


def task_argv(order: RunOrder, prefix: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The task's argv, under a launch prefix for multi-rank tasks. The env_script goes
    outside the prefix: it often loads the module that provides the right ``mpiexec``."""
    if order.env_script:
        # Source the app's environment script, then become the task (no extra process).
        return ["/bin/sh", "-c", '. "$0" && exec "$@"', order.env_script, *prefix,
                *order.argv]
    return [*prefix, *order.argv]


def script_argv(script: str, env_script: str = "") -> list[str]:
    """An app's preprocess or postprocess line: a shell command line the app's owner
    wrote (as legacy Balsam ran them), after the env_script when the app has one."""
    if env_script:
        return ["/bin/sh", "-c", '. "$0" && eval "$1"', env_script, script]
    return ["/bin/sh", "-c", script]


@dataclass
class _Config:
    output_cap: int = int(DEFAULT_OUTPUT_CAP_MB * (1 << 20))
    cgroups: bool = True


_config = _Config()
_cgroups: TaskCgroups | None = None
_cgroups_checked = False


def configure(output_cap_mb: float = DEFAULT_OUTPUT_CAP_MB, cgroups: bool = True) -> None:
    """This process's task settings (the launcher calls it once per rank from its
    settings; no arguments = the defaults). ``output_cap_mb`` 0 = no cap; a cap is at
    least 1 MiB. ``cgroups`` False: never a cgroup per task, only the trampoline."""
    global _cgroups, _cgroups_checked
    if not math.isfinite(output_cap_mb) or output_cap_mb < 0:
        raise UsageError(f"output_cap_mb must be 0 (no cap) or a positive number of MiB, "
                         f"got {output_cap_mb}")
    cap = int(output_cap_mb * (1 << 20))
    _config.output_cap = 0 if cap == 0 else max(cap, trampoline.CAP_MIN)
    if _config.cgroups != cgroups:
        if _cgroups is not None:
            _cgroups.close()
        _cgroups, _cgroups_checked = None, False
    _config.cgroups = cgroups


def output_cap() -> int:
    """Bytes each output file of a task may keep (0: no cap), as configured."""
    return _config.output_cap


def _task_cgroups() -> TaskCgroups | None:
    global _cgroups, _cgroups_checked
    if not _cgroups_checked:
        _cgroups_checked = True
        _cgroups = TaskCgroups.detect() if _config.cgroups else None
        if _cgroups is not None:
            atexit.register(_cgroups.close)
            log.info("each task gets a cgroup of its own under %s", _cgroups.path)
    return _cgroups


def _preexec(dir_fd: int, die_with_parent: bool) -> Callable[[], None]:
    """The fallback's preexec function: enter the task's directory by its descriptor and,
    if asked, SIGKILL this child when the worker dies (Linux prctl)."""
    prctl = libc_prctl()  # looked up here, before the fork
    parent = os.getpid()

    def hook() -> None:
        os.fchdir(dir_fd)
        if die_with_parent:
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != parent:  # the worker died before prctl took effect
                os._exit(137)

    return hook


@dataclass(slots=True)
class TaskProcess:
    order: RunOrder
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
    out_fd: int = -1  # the output files the runner opened (read back for the tail)
    err_fd: int = -1
    tail: str | None = None  # the failure tail, taken when the process is closed
    contained: bool = False  # started through the trampoline
    cgroup: str = ""  # its cgroup's name (taskcgroup), if it has one


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


_nofile_raised = False


def raise_nofile() -> None:
    """Once per process: see :func:`_raise_nofile`."""
    if not _nofile_raised:
        _raise_nofile()


def _raise_nofile() -> None:
    """Each running task holds four descriptors here (pidfd, two outputs, maybe a cgroup);
    a node packing hundreds of tasks needs more than the usual soft limit of 1024 (a
    Python call: three, its interpreter three more, a queued call's opened ahead three)."""
    global _nofile_raised
    _nofile_raised = True
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
        if soft != resource.RLIM_INFINITY and soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def start(order: RunOrder, env: Mapping[str, str], *, die_with_parent: bool = True,
          argv: list[str] | None = None, out_name: str = STDOUT_NAME,
          err_name: str = STDERR_NAME, timed: bool = True,
          opened: tuple[int, int, int] | None = None) -> TaskProcess:
    """Start one task (or, given ``argv``, its pre/postprocess); stdout and stderr go to
    files in its working directory (``opened``: its directory and outputs, opened ahead
    by the node; they are this call's to close)."""
    global _warned_fallback
    if not _nofile_raised:
        _raise_nofile()
    if argv is None:
        argv = task_argv(order)
    try:
        tramp = trampoline.trampoline()
        prog = _resolve(argv[0], env) if tramp is not None else argv[0]
    except BaseException:
        taskplace.close(opened)  # the caller handed them over
        raise
    dir_fd, out, err = opened or open_task_dir(order, out_name, err_name)
    deadline = (time.monotonic() + order.wall_time_s
                if timed and order.wall_time_s > 0 else 0.0)
    try:
        if tramp is not None:
            return _spawn(tramp, order, env, prog, argv, dir_fd, out, err, die_with_parent,
                          deadline)
        if not _warned_fallback:
            _warned_fallback = True
            log.warning("no task trampoline (no C compiler?): using preexec_fn, which makes "
                        "starting tasks several times slower, contains only the task's own "
                        "process and caps no output")
        started = time.time()
        try:
            popen = subprocess.Popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                start_new_session=True, close_fds=True,
                preexec_fn=_preexec(dir_fd, die_with_parent))
        except (OSError, subprocess.SubprocessError) as exc:
            raise StartError(f"cannot start {argv[0]!r}: {exc}") from None
        pidfd = _watched(popen.pid, lambda: pidfds.end_group(popen))
        return TaskProcess(order, popen.pid, pidfd, started, deadline, popen, out_fd=out,
                           err_fd=err)
    except BaseException:
        os.close(out)
        os.close(err)
        raise
    finally:
        os.close(dir_fd)


def _spawn(tramp: str, order: RunOrder, env: Mapping[str, str], prog: str, argv: list[str],
           dir_fd: int, out: int, err: int, die_with_parent: bool, deadline: float
           ) -> TaskProcess:
    cgroups = _task_cgroups()
    cg_name, cg_fd = "", -1
    if cgroups is not None:
        try:
            cg_name, cg_fd = cgroups.create(order.id)
            cg_fd = high(cg_fd)
        except OSError as exc:  # the subreaper still contains the task
            log.warning("task %s: no cgroup of its own (%s)", order.id, exc.strerror)
            cg_name, cg_fd = "", -1
    flags = (trampoline.FLAG_PDEATH if die_with_parent else 0) | (
        trampoline.FLAG_CGROUP if cg_fd >= 0 else 0)
    actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
               (os.POSIX_SPAWN_DUP2, out, 1), (os.POSIX_SPAWN_DUP2, err, 2),
               (os.POSIX_SPAWN_DUP2, dir_fd, trampoline.CWD_FD)]
    if cg_fd >= 0:
        actions.append((os.POSIX_SPAWN_DUP2, cg_fd, trampoline.CGROUP_FD))
    started = time.time()
    try:
        pid = os.posix_spawn(
            tramp, [tramp, str(os.getpid()), str(flags), str(_config.output_cap), prog,
                    *argv[1:]], env,
            file_actions=actions, setsid=True, setsigmask=(), setsigdef=_DEFAULT_SIGNALS)
    except OSError as exc:
        if cgroups is not None and cg_name:
            cgroups.release(cg_name)
        raise StartError(f"cannot start {argv[0]!r}: {exc}") from None
    finally:
        if cg_fd >= 0:
            os.close(cg_fd)

    def end() -> None:
        pidfds.end_trampoline(pid)
        if cgroups is not None and cg_name:
            cgroups.release(cg_name)

    return TaskProcess(order, pid, _watched(pid, end), started, deadline, out_fd=out,
                       err_fd=err, contained=True, cgroup=cg_name)


def _watched(pid: int, end: Callable[[], None]) -> int:
    """The pidfd of a task's first process, just started; without one (no descriptor
    free) the process is ended and reaped first: never a task that runs while it is
    recorded as not started (``pidfds``)."""
    try:
        return pidfds.open_or_end(pid, end)
    except OSError as exc:
        raise StartError(f"cannot watch the task's process, ended at once: pidfd_open: "
                         f"{exc.strerror or exc}") from None


def signal_group(proc: TaskProcess, sig: int) -> None:
    """Signal the task: its whole process group (it leads its own session); through the
    trampoline, which passes SIGTERM/SIGINT on and answers SIGKILL's stand-in, SIGHUP, by
    killing every process the task left, wherever it went."""
    if proc.rc is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if proc.contained and sig == signal.SIGKILL:
            os.kill(proc.pid, signal.SIGHUP)
            if proc.cgroup and _cgroups is not None:
                _cgroups.kill(proc.cgroup)
        else:
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
    """Release what the process held: the tail is kept (read through the runner's own
    descriptors first), then the descriptors and its cgroup go."""
    if proc.tail is None and proc.rc is not None:
        proc.tail = _read_tail(proc)
    for name in ("pidfd", "out_fd", "err_fd"):
        fd = getattr(proc, name)
        if fd >= 0:
            os.close(fd)
            setattr(proc, name, -1)
    if proc.cgroup and _cgroups is not None:
        _cgroups.release(proc.cgroup)
        proc.cgroup = ""


def output_tail(proc: TaskProcess, limit: int = TAIL_BYTES) -> str:
    """The last bytes of the task's stderr, else its stdout (for a failed task's record),
    as the runner wrote them: a name swapped for a link since is never followed."""
    if proc.tail is None:
        proc.tail = _read_tail(proc)
    return proc.tail[-limit:] if limit < len(proc.tail) else proc.tail


def _read_tail(proc: TaskProcess) -> str:
    """The outputs' tail, and at its end (kept by any cut from the front) a note when
    their file system is full."""
    tail = taskfiles.read_tail((proc.err_fd, proc.out_fd), TAIL_BYTES)
    if proc.rc == 0:  # every task's end passes here: no file-system call for a success
        return tail
    note = taskfiles.full_disk_note(proc.err_fd if proc.err_fd >= 0 else proc.out_fd)
    if not note:
        return tail
    return f"{tail}\n{note}" if tail and not tail.endswith("\n") else tail + note
