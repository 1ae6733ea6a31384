"""Functions that Python tasks call in the tests (imported by the warm interpreters)."""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

_calls = 0  # module state: survives between calls in a warm interpreter


def noop() -> None:
    return None


def add(a: float, b: float) -> float:
    return a + b


def echo(**kwargs: Any) -> dict[str, Any]:
    return kwargs


def boom(msg: str) -> None:
    raise ValueError(msg)


def forever() -> None:
    while True:
        time.sleep(1)


def hog() -> None:
    """Allocate (and touch) memory until there is no more."""
    blocks = []
    while True:
        blocks.append(b"x" * (32 << 20))


def exit_now(code: int) -> None:
    os._exit(code)


def sys_exit(code: int) -> None:
    sys.exit(code)


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def big(n: int) -> str:
    return "x" * n


def not_json() -> object:
    return object()


def nan() -> float:
    return float("nan")


async def coroutine() -> int:
    return 1


def generator() -> Any:
    yield 1


def keys(kind: str) -> Any:
    """Dicts whose keys JSON writes as strings: apart, or two as one."""
    return {"apart": [{7: "a", 2.5: "b", True: "c", None: "d", "x": "e"}],
            "int": {"k": [{1: "int", "1": "str"}]},
            "none": ({None: 1, "null": 2},)}[kind]


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def where() -> dict[str, Any]:
    return {"cwd": os.getcwd(), "pid": os.getpid(), "foo": os.environ.get("FOO"),
            "task": os.environ.get("BALSAM_TASK_ID"),
            "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "omp": os.environ.get("OMP_NUM_THREADS")}


def count() -> dict[str, int]:
    global _calls
    _calls += 1
    return {"calls": _calls, "pid": os.getpid()}


def say(text: str) -> int:
    print(text)
    print(f"err: {text}", file=sys.stderr)
    os.system(f"echo child: {text}")  # a child process writes to the task's files too
    return len(text)


def sleep(s: float) -> float:
    time.sleep(s)
    return s


def setenv(value: str) -> str | None:
    before = os.environ.get("LEAK")
    os.environ["LEAK"] = value
    os.chdir("/tmp")
    sys.stdout = open(os.devnull, "w")  # the interpreter restores it after the call
    return before


def getenv(name: str) -> str | None:
    return os.environ.get(name)


def missing_module() -> None:
    import no_such_module_anywhere  # type: ignore[import-not-found]  # noqa: F401


def reserve(mb: int) -> int:
    """Reserve address space without touching it (as some frameworks do at import)."""
    import mmap

    m = mmap.mmap(-1, mb << 20)
    size = len(m)
    m.close()
    return size


def spawn_child(a: int) -> list[int]:
    """Add a task (a child of this one) through the launcher, as a process task would."""
    from balsam_mpi import task_api

    return task_api.add_tasks([{"app": "add", "workflow": "py", "params": {"a": a, "b": 1},
                                "parents": [task_api.task_id()]}])


def spew(chunks: int, size: int = 1 << 20, pause: float = 0.0) -> None:
    """A first line, ``chunks`` blocks of ``size`` bytes (a pause after each), a last."""
    print("FIRST-LINE", flush=True)
    block = "x" * size
    for _ in range(chunks):
        sys.stdout.write(block)
        sys.stdout.flush()
        time.sleep(pause)
    print("\nLAST-LINE", flush=True)
    print("ERR-LAST", file=sys.stderr, flush=True)


def leave_timers(alarm_s: int, mask: int) -> int:
    """Leave an alarm, an interval timer, a handler and a umask behind, as careless code
    does; returns the pid (the next call must run in the same interpreter)."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.alarm(alarm_s)
    signal.setitimer(signal.ITIMER_VIRTUAL, 0.5)
    os.umask(mask)
    return os.getpid()


def after_timers(s: float) -> dict[str, Any]:
    """Outlive what ``leave_timers`` left; report the state this call found."""
    time.sleep(s)
    end = time.process_time() + 1.0
    while time.process_time() < end:  # CPU time: what ITIMER_VIRTUAL counts
        pass
    with open("made", "w") as fh:
        fh.write("x")
    return {"pid": os.getpid(), "mode": os.stat("made").st_mode & 0o777,
            "usr1": signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL}


def meddle_env(name: str) -> int:
    """Change, add and remove variables, as careless code does; returns the pid."""
    os.environ[name] = "changed"
    os.environ["BALSAM_TEST_LEFT_BEHIND"] = "x"
    os.environ.pop("BALSAM_TEST_GIVEN", None)
    return os.getpid()


def read_env(names: list[str]) -> dict[str, Any]:
    return {"pid": os.getpid(), **{n: os.environ.get(n) for n in names}}


# -- careless calls: what they leave must not reach the next call (test_pypool) ---------
_kept: list[int] = []  # descriptors a call leaks, kept with its interpreter

LIMITS = ("RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_NOFILE", "RLIMIT_DATA", "RLIMIT_STACK")


def close_streams() -> int:
    """Close sys.stdout and sys.stderr, as a script that tidies up at its end does."""
    print("closing")
    sys.stdout.close()
    sys.stderr.close()
    return os.getpid()


def process_state() -> dict[str, Any]:
    """What a call finds: the blocked signals and the resource limits."""
    import resource

    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    return {"pid": os.getpid(), "blocked": sorted(int(s) for s in blocked),
            **{n: list(resource.getrlimit(getattr(resource, n))) for n in LIMITS}}


def block_and_limit() -> int:
    """Block SIGTERM and SIGUSR1, and lower soft limits: a CPU-time limit (SIGXCPU would
    kill a later call), the file size (a later call's writes would fail), descriptors."""
    import resource

    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM, signal.SIGUSR1])
    used = resource.getrusage(resource.RUSAGE_SELF)
    for name, soft in (("RLIMIT_CPU", int(used.ru_utime + used.ru_stime) + 2),
                       ("RLIMIT_FSIZE", 10), ("RLIMIT_NOFILE", 8), ("RLIMIT_DATA", 1 << 40),
                       ("RLIMIT_STACK", 1 << 20)):
        limit = getattr(resource, name)
        resource.setrlimit(limit, (soft, resource.getrlimit(limit)[1]))
    return os.getpid()


def leak_descriptors() -> int:
    """Open descriptors until there are no more, and keep them (as a call that leaks a
    few each time does, after enough calls)."""
    while True:
        try:
            _kept.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            return os.getpid()


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text")


def exit_unprintable() -> None:
    sys.exit(_Unprintable())


def lower_hard_limit() -> int:
    """Lower a hard limit (CPU time, to a day): only root raises it again."""
    import resource

    resource.setrlimit(resource.RLIMIT_CPU, (86400, 86400))
    return os.getpid()


def close_inherited(then_s: float) -> int:
    """Close every descriptor above 2, as daemon-style code does with what it inherited
    (here: the interpreter's socket to its node), then work on for ``then_s``."""
    os.closerange(3, 1 << 16)
    time.sleep(then_s)
    return os.getpid()


def fork_and_return() -> int:
    """Fork, and let the child return from the function too (no ``os._exit``): a
    script's child would run on to the script's end. Returns the child's pid."""
    pid = os.fork()
    return pid if pid else 0


def rewrap_stdout() -> int:
    """Wrap stdout anew with another encoding: the usual idiom detaches the old one."""
    import io

    sys.stdout = io.TextIOWrapper(sys.stdout.detach(), encoding="latin-1")
    print("caf\xe9")
    return os.getpid()


def leave_watchdog(s: float) -> int:
    """Arm faulthandler's hang watchdog (a dump, then exit, in ``s``) and return at once,
    as code that guards itself against hangs does when it forgets to cancel."""
    import faulthandler

    faulthandler.dump_traceback_later(s, exit=True)
    return os.getpid()


def recursion_limit(set_to: int = 0) -> dict[str, int]:
    """The recursion limit this call found (and, with ``set_to``, leaves instead)."""
    found = sys.getrecursionlimit()
    if set_to:
        sys.setrecursionlimit(set_to)
    return {"pid": os.getpid(), "limit": found}


def _pdeathsig() -> int:
    import ctypes

    got = ctypes.c_int()
    ctypes.CDLL(None, use_errno=True).prctl(2, ctypes.byref(got))  # PR_GET_PDEATHSIG
    return got.value


def sched_state() -> dict[str, Any]:
    """How the kernel schedules a call, and what it is signalled with when the node dies:
    its nice value, its scheduling policy, the CPUs it may run on, its parent-death
    signal; its process group and session (what a kill of the call reaches)."""
    return {"pid": os.getpid(), "nice": os.getpriority(os.PRIO_PROCESS, 0),
            "policy": os.sched_getscheduler(0), "cpus": sorted(os.sched_getaffinity(0)),
            "deathsig": _pdeathsig(), "pgid": os.getpgid(0), "sid": os.getsid(0)}


def meddle_sched() -> dict[str, Any]:
    """Pin itself to one CPU, take the batch policy, clear its parent-death signal and
    try to leave its session and process group; lower its own priority too where it
    could be raised back (root). What it did, as ``sched_state`` reads it."""
    import ctypes

    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    ctypes.CDLL(None, use_errno=True).prctl(1, 0)  # PR_SET_PDEATHSIG, none
    for leave in (os.setsid, os.setpgrp):
        try:
            leave()
        except PermissionError:  # a session leader (the interpreter is one) stays put
            pass
    if os.geteuid() == 0:
        os.nice(3)
    return sched_state()


CAP_SYS_NICE = 23


def _drop_cap_sys_nice() -> None:
    """No CAP_SYS_NICE in the effective set: a nice value raised cannot be lowered
    again, as for any user but root."""
    import ctypes

    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, self
    data = (ctypes.c_uint32 * 6)()  # two of (effective, permitted, inheritable)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.capget(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    data[0] &= ~(1 << CAP_SYS_NICE)
    if libc.capset(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def lower_priority_for_good() -> int:
    """Raise its nice value and take the idle policy, neither of which the interpreter
    can undo without privilege (which a root interpreter drops first here)."""
    if os.geteuid() == 0:
        _drop_cap_sys_nice()
    os.nice(5)
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    return os.getpid()
