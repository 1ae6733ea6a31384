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
