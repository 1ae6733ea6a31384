"""What a Python call may change in its warm interpreter, and how each call's end puts
it back (``pycall.run_call``): ``Between`` is the interpreter's own state, taken when it
starts; ``Saved`` what one call began with. Kept apart from the call's wire and its
running because this is the list that grows: every way one call could spoil the next
that can be undone is undone here, at a cost counted per call (docs/python-tasks.md).
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # signal's C module (see SIGNALS)
import ctypes
import faulthandler
import os
import resource
import signal
import sys
from typing import Any

from .prctl import PR_GET_PDEATHSIG, PR_SET_PDEATHSIG, libc_prctl

# Signals whose handlers a call may change and the next call must not inherit: a handler
# left for SIGUSR1 would swallow a signal meant for the next task, an ignored SIGTERM
# would outlive the kill of the call that set it. Plain numbers, read and set through the
# C module: signal.getsignal wraps every answer in an enum, which took about a fifth of a
# no-op call's time (cProfile). Its SIG_DFL and SIG_IGN are the ints 0 and 1, which
# CPython keeps one object each of, so `is` compares them as it does a handler function.
SIGNALS = tuple(int(getattr(signal, name)) for name in (
    "SIGTERM", "SIGINT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGVTALRM", "SIGPROF",
    "SIGPIPE", "SIGCHLD", "SIGXFSZ", "SIGXCPU") if hasattr(signal, name))
# Interval timers: an alarm a call leaves behind would kill the interpreter in the middle
# of another task's call (SIGALRM's default action), which would be blamed for it.
TIMERS = (signal.ITIMER_REAL, signal.ITIMER_VIRTUAL, signal.ITIMER_PROF)
# Resource limits a call may change that would bite a later call, besides the address
# space (the call's own cap, set back after every call): CPU time (SIGXCPU would kill the
# interpreter in another task's call), file size (writes fail), data and stack
# (MemoryError, a crash), processes (fork fails), descriptors (the interpreter could not
# receive a call's directory and outputs). Read back after every call, a getrlimit each
# (~0.2 µs here): nothing cheaper says whether a call set one.
LIMITS = (resource.RLIMIT_CPU, resource.RLIMIT_FSIZE, resource.RLIMIT_DATA,
          resource.RLIMIT_STACK, resource.RLIMIT_NPROC, resource.RLIMIT_NOFILE)


class Sched:
    """How the kernel runs the interpreter, which a call can change for every later one:
    its nice value (``os.nice``), its policy (``SCHED_BATCH``, ``SCHED_IDLE``: run only
    when nothing else would), the CPUs it may run on (``sched_setaffinity``), and its
    parent-death signal (cleared, a later call would run on, orphaned, after its node
    died). Four reads a call, 3.8 µs together where one getrlimit from Python took
    0.8 µs (docs/python-tasks.md); the affinity's read builds a set as large as the
    CPUs the interpreter may use."""

    def __init__(self) -> None:
        self.nice = os.getpriority(os.PRIO_PROCESS, 0)
        self.policy = os.sched_getscheduler(0)  # SCHED_RESET_ON_FORK included
        self.param = os.sched_getparam(0)
        self.cpus = os.sched_getaffinity(0)
        self.parent = os.getppid()
        # The parent-death signal is read into one int, made once (ctypes' byref).
        self._got = ctypes.c_int()
        self._ref = ctypes.byref(self._got)
        self.deathsig = self._deathsig()

    def _deathsig(self) -> int:
        libc_prctl()(PR_GET_PDEATHSIG, self._ref)
        return self._got.value

    def put_back(self) -> bool:
        """All four as they were; False if one cannot be (a nice value raised, or the idle
        policy taken: only privilege undoes either): this interpreter must go."""
        back = True
        # The policy before the nice value: leaving SCHED_IDLE is judged by the nice
        # value the call left.
        if os.sched_getscheduler(0) != self.policy:
            try:
                os.sched_setscheduler(0, self.policy, self.param)
            except OSError:
                back = False
        if os.getpriority(os.PRIO_PROCESS, 0) != self.nice:
            try:
                os.setpriority(os.PRIO_PROCESS, 0, self.nice)
            except OSError:
                back = False
        if os.sched_getaffinity(0) != self.cpus:
            try:
                os.sched_setaffinity(0, self.cpus)
            except OSError:
                back = False
        if self._deathsig() != self.deathsig:
            libc_prctl()(PR_SET_PDEATHSIG, self.deathsig)
            # Set back after its parent died, it would never come (as in pycall.die_with).
            if os.getppid() != self.parent:
                back = False
        return back


class Between:
    """The interpreter's state between calls, which every call's end restores: its own
    output descriptors and streams, its umask, signal handlers, blocked signals,
    resource limits and scheduling (taken when it starts)."""

    def __init__(self) -> None:
        self.out_fd, self.err_fd = os.dup(1), os.dup(2)
        self.stdout, self.stderr = sys.stdout, sys.stderr
        self.umask = os.umask(0o077)
        os.umask(self.umask)
        self.handlers = {s: _signal.getsignal(s) for s in SIGNALS}
        self.handlers[signal.SIGTERM] = _signal.SIG_DFL  # a call's SIGTERM ends it
        self.handlers[signal.SIGINT] = _signal.default_int_handler
        # The C module's call: signal's wrapper makes an enum of each blocked signal.
        self.mask = _signal.pthread_sigmask(signal.SIG_BLOCK, ())
        self.recursion = sys.getrecursionlimit()
        self.address_space = resource.getrlimit(resource.RLIMIT_AS)
        self.limits = list(map(resource.getrlimit, LIMITS))
        self.sched = Sched()

    def put_limits_back(self) -> bool:
        """The resource limits as they were; False if one cannot be (a call lowered a
        hard limit, which only root raises again): this interpreter must go."""
        back = True
        try:
            resource.setrlimit(resource.RLIMIT_AS, self.address_space)
        except (ValueError, OSError):
            back = False
        now = list(map(resource.getrlimit, LIMITS))
        if now == self.limits:
            return back
        for limit, was, got in zip(LIMITS, self.limits, now, strict=True):
            if got != was:
                try:
                    resource.setrlimit(limit, was)
                except (ValueError, OSError):
                    back = False
        return back

    def streams(self) -> None:
        """sys.stdout and sys.stderr back. One the call closed (a script's tidy end) or
        detached (``TextIOWrapper(sys.stdout.detach(), ...)``, to print in another
        encoding) is replaced: the next call could not print, nor even be entered,
        since such a stream cannot be flushed."""
        if not (_usable(self.stdout) and _usable(self.stderr)):
            # sys.__stdout__/__stderr__ too (the same objects): tracebacks and _say
            # write to sys.__stderr__.
            if not _usable(self.stdout):
                self.stdout = sys.__stdout__ = _reopened(self.stdout, 1)  # type: ignore[misc]
            if not _usable(self.stderr):
                self.stderr = sys.__stderr__ = _reopened(self.stderr, 2)  # type: ignore[misc]
        sys.stdout, sys.stderr = self.stdout, self.stderr

    def restore(self) -> None:
        for timer in TIMERS:
            signal.setitimer(timer, 0)
        # faulthandler's hang watchdog is such an alarm too (exit=True ends the process);
        # cancelling none is a check of a flag, no system call.
        faulthandler.cancel_dump_traceback_later()
        # Lowered, a later call's imports fail with RecursionError; raised, its runaway
        # recursion overflows the C stack (a crash) instead of raising.
        if sys.getrecursionlimit() != self.recursion:
            sys.setrecursionlimit(self.recursion)
        for sig, handler in self.handlers.items():
            if _signal.getsignal(sig) is not handler:
                try:
                    _signal.signal(sig, handler)
                except (OSError, ValueError, TypeError):
                    pass
        # A signal the call left blocked would never reach the next call (a SIGTERM
        # meant to stop it cleanly, its own alarm); unblocked after the handlers are
        # back, so one pending meanwhile meets the interpreter's own handling.
        _signal.pthread_sigmask(signal.SIG_SETMASK, self.mask)
        os.umask(self.umask)


def _usable(stream: Any) -> bool:
    try:
        return not stream.closed
    except ValueError:  # detached
        return False


def _reopened(stream: Any, fd: int) -> Any:
    """A text stream on ``fd`` like ``stream`` (closed or detached by a call; its
    encoding and buffering are still there to read); fd stays open."""
    return open(fd, "w", encoding=stream.encoding, errors=stream.errors, closefd=False,
                buffering=1 if stream.line_buffering else -1)


class Saved:
    """What a call may change and the interpreter puts back afterwards."""

    def __init__(self) -> None:
        # os.environ's own store (bytes): copied and compared at C speed; going through
        # the Mapping decodes every entry and cost more than all the rest of a call.
        self.environ: dict[bytes, bytes] = dict(os.environ._data)  # type: ignore[attr-defined]

    def keep_environ(self, before: dict[bytes, bytes]) -> None:
        """Make what the environment gained or lost since ``before`` (a module's import,
        kept warm like the module) part of what is put back after every call."""
        now: dict[bytes, bytes] = os.environ._data  # type: ignore[attr-defined]
        for key in before.keys() - now.keys():
            self.environ.pop(key, None)
        self.environ.update(now.items() - before.items())

    def restore(self, between: Between) -> bool:
        """Everything back; False if this interpreter cannot be as it was (replace it)."""
        # The limits first: a descriptor or file-size limit the call lowered would fail
        # what follows.
        kept = between.put_limits_back()
        kept = between.sched.put_back() and kept
        flushed: list[object] = []
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            if stream is None or any(stream is f for f in flushed):
                continue
            flushed.append(stream)
            try:
                stream.flush()
            except Exception:  # whatever the call left in sys.stdout
                pass
        between.streams()
        os.dup2(between.out_fd, 1)
        os.dup2(between.err_fd, 2)
        os.chdir("/")  # hold no task's directory between calls
        between.restore()
        now: dict[bytes, bytes] = os.environ._data  # type: ignore[attr-defined]
        if now != self.environ:  # the differences as sets, at C speed
            for key in now.keys() - self.environ.keys():
                del os.environ[os.fsdecode(key)]
            for key, value in self.environ.items() - now.items():
                os.environ[os.fsdecode(key)] = os.fsdecode(value)
        return kept
