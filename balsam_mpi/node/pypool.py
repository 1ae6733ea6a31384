"""A node's warm Python interpreters: how Python tasks run (docs/python-tasks.md).

Each interpreter runs ``pycall``, forked from the node's zygote (``pyzygote``: a fresh
interpreter started with ``posix_spawn``, never a fork of the MPI rank, so no interpreter
holds anything of MPI) into a session of its own, and is used for one call at a time;
a node holds as many as it runs Python tasks at once (one per slot
its tasks pack), keeps them between calls, and replaces one after
``python_max_calls`` calls, when it ends over its memory cap, after a ``MemoryError``,
and whenever it was signalled or died. A call looks like a task process to the node
(:class:`PyCall` is a ``runner.TaskProcess``): its ``pid`` is the interpreter's, so a
kill, a wall-time overrun or the end of the job signals the interpreter's process group
as it would a task's; its ``pidfd`` is an fd that becomes readable when the answer
arrives *or* the interpreter dies (an epoll of the interpreter's socket and pidfd), which
the node watches in its own epoll like a task's pidfd. The node opens the task's
directory, task.out and task.err as for a process task (ahead of the start, while it
waits: ``ahead``) and sends them with the call.

Nothing a call does can take the node down: a raise is an answer (exit code 1, the
traceback in task.err), and ``os._exit``, a crash, the OOM killer (interpreters volunteer
through ``oom_score_adj``) or a kill end the interpreter, not the rank — the pool notes
what happened in task.err, reports the exit status, and starts a fresh interpreter for the
next call.

Memory: each interpreter gets a cap, ``python_memory_mb`` or by default the task's share
of the node's memory (``1 / node_packing_count`` of it). It is the address-space limit
(``RLIMIT_AS``) during the call — a call that exhausts it gets ``MemoryError`` — except for
tasks holding GPUs, whose runtimes reserve far more address space than they use, and when
``python_address_cap`` is off (some CPU frameworks reserve large ranges too); for all,
the resident size is checked after each call and an interpreter over the cap is replaced.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..protocol import EndKind, Finished, RunOrder
from . import gpus, memlimit, pidfds, runner, taskplace
from .deaths import signal_name
from .outcap import CallOutputs
from .pycall import encode_frame
from .pyinterp import SPARE, Interpreter, Key
from .pywire import read_answer, send_call
from .pyzygote import Zygote

log = logging.getLogger(__name__)

# Read once by the libraries that use them (OpenMP, the GPU runtimes): an interpreter is
# started with a task's values of these and serves only tasks with the same values.
SPAWN_KEYS = ("OMP_NUM_THREADS", "HIP_VISIBLE_DEVICES", *gpus.VISIBILITY_VARS.values())
# The output cap of a call without a directory, whose output is held in memory (each
# file; checked once a second, as on disk): its failure tail is all that is kept.
MEMORY_OUTPUT_CAP = 1 << 20
# How long an interpreter whose socket ended has to show its exit before the node takes
# it for one that lives on without a way to answer (and kills it): a dying process's exit
# shows microseconds after its descriptors close. Waited only on that path.
HANG_UP_S = 0.1


@dataclass(frozen=True)
class PoolConfig:
    max_calls: int = 1000  # 0: never replace for age
    memory_mb: float = 0.0  # 0: the task's share of the node's memory
    address_cap: bool = True  # the cap is also RLIMIT_AS during a call (not GPU tasks)
    die_with_parent: bool = True
    python: str = sys.executable
    spares: int = 0  # interpreters forked before any call (spare_count: -1 = one per core)
    preload: tuple[str, ...] = ()  # modules the zygote imports before it forks (pyzygote)

    @classmethod
    def from_settings(cls, settings: Any) -> PoolConfig:
        return cls(max_calls=settings.python_max_calls, memory_mb=settings.python_memory_mb,
                   address_cap=settings.python_address_cap,
                   die_with_parent=settings.die_with_parent,
                   spares=settings.python_spares, preload=settings.python_preload)

    def spare_count(self) -> int:
        """-1: one per core the node may run on (a job's cpuset, not the whole node)."""
        return len(os.sched_getaffinity(0)) if self.spares < 0 else self.spares


@dataclass(slots=True)
class PyCall(runner.TaskProcess):
    """A Python task's call, running in ``interp``; the node treats it as a process."""

    interp: Interpreter | None = None
    pool: PyPool | None = None
    hung_up: bool = False  # its socket closed while it lived: the node killed it

    def reap(self) -> int | None:
        assert self.pool is not None
        return self.pool.reap(self)

    def ended(self) -> bool:
        """Whether the call is over — answered, or its interpreter gone — without taking
        the answer (the node's epoll wakes for it, and :meth:`reap` takes it then)."""
        interp = self.interp
        return interp is None or bool(interp.buf) or interp.eof or bool(interp.watch.poll(0))


class PyPool:
    def __init__(self, base_env: Mapping[str, str], config: PoolConfig) -> None:
        self.base = dict(base_env)
        self.config = config
        self.idle: dict[Key, list[Interpreter]] = {}
        # Spares: forked before any call, while the launcher starts, of no kind yet; a
        # spare becomes the kind of its first call (which sets its spawn variables).
        self.spares: list[Interpreter] = []
        # Spares still to fork: counted once (the wanted check runs in every idle wait
        # of the node); none more after a fork fails.
        self.spares_left = config.spare_count()
        self.procs: dict[int, Interpreter] = {}  # every interpreter not yet reaped
        self.retired: list[Interpreter] = []  # ended by the pool, exit not yet seen
        self.results: dict[int, str] = {}  # task id -> JSON, until the node's report
        self.outputs = CallOutputs()  # the output cap, which no trampoline applies
        self.mem_total = memlimit.usable_bytes()  # the job's cgroup limit, if lower
        runner.raise_nofile()
        # Interpreters are forked from a fresh, MPI-free zygote (pyzygote), started with
        # the node's environment (the launcher's minus its MPI variables).
        self.zygote = Zygote(config.python, self.base, config.die_with_parent,
                             config.preload)
        self.started = 0
        self.calls = 0
        self.busy = 0  # calls running now
        self.most = 0  # the most calls that ran at once: how many interpreters to keep

    # -- a call's start -----------------------------------------------------------------
    def start(self, order: RunOrder, env: Mapping[str, str],
              opened: tuple[int, int, int] | None = None) -> PyCall:
        """Send the call to an idle interpreter of the right kind (or a new one);
        ``opened``: the call's directory and outputs, opened ahead by the node."""
        # The task's directory and output files, opened exactly as for a process task
        # (runner: a walk from data/ that follows no planted link, outputs O_EXCL|
        # O_NOFOLLOW), one task after another; the interpreter gets the descriptors with
        # the call. The node keeps the outputs' to read the failure tail back, as for any
        # task. (Interpreters making directories side by side in one shard contended.)
        dir_fd, out_fd, err_fd = opened or (taskplace.open_task_dir(order) if order.own_dir
                                            else taskplace.open_call_without_dir(order))
        path = order.python[0]
        try:
            self._reap_retired()
            key, spawn_env, header, doc = self._call(order, env)
            interp = self._take(key, spawn_env)
            try:
                self._send(interp, spawn_env, header, doc, [dir_fd, out_fd, err_fd])
            except OSError:
                # It died between the check and the call (never saw it): a fresh one.
                self._retire(interp)
                interp = self._spawn(key, spawn_env)
                self._send(interp, spawn_env, header, doc, [dir_fd, out_fd, err_fd])
        except (OSError, TimeoutError) as exc:
            os.close(out_fd)
            os.close(err_fd)
            raise runner.StartError(f"cannot call {path} in a Python interpreter: {exc}"
                                    ) from None
        except BaseException:
            os.close(out_fd)
            os.close(err_fd)
            raise
        finally:
            os.close(dir_fd)
        interp.calls += 1
        self.calls += 1
        cap = runner.output_cap()
        if not order.own_dir:  # in memory: a cap whatever the setting
            cap = min(cap or MEMORY_OUTPUT_CAP, MEMORY_OUTPUT_CAP)
        self.outputs.watch(order.id, out_fd, err_fd, cap)
        self.busy += 1
        self.most = max(self.most, self.busy)
        deadline = time.monotonic() + order.wall_time_s if order.wall_time_s > 0 else 0.0
        return PyCall(order, interp.pid, os.dup(interp.watch.fileno()), time.time(),
                      deadline, out_fd=out_fd, err_fd=err_fd, interp=interp, pool=self)

    def _call(self, order: RunOrder, env: Mapping[str, str]
              ) -> tuple[Key, dict[str, str], dict[str, Any], bytes]:
        """The kind of interpreter the call needs, its spawn environment, and the call's
        header and arguments."""
        path, kwargs = order.python
        extra = {k: v for k, v in env.items() if self.base.get(k) != v}
        spawn_env = {k: extra.pop(k) for k in SPAWN_KEYS if k in extra}
        cap = (int(self.config.memory_mb * 2**20) if self.config.memory_mb > 0
               else int(min(1.0, order.need) * self.mem_total))
        as_cap = cap if self.config.address_cap and order.gpus == 0 else 0
        key: Key = (tuple(sorted(spawn_env.items())), as_cap, cap)
        header = {"fn": path, "env": extra, "as_cap": as_cap, "rss_cap": cap, "id": order.id}
        return key, spawn_env, header, kwargs.encode()

    @staticmethod
    def _send(interp: Interpreter, spawn_env: dict[str, str], header: dict[str, Any],
              doc: bytes, fds: list[int]) -> None:
        if interp.calls == 0 and spawn_env:  # a spare takes its kind (or a fork, again)
            header = {**header, "spawn_env": spawn_env}
        send_call(interp.sock, encode_frame(header, doc), fds)

    def _take(self, key: Key, spawn_env: dict[str, str]) -> Interpreter:
        waiting = self.idle.get(key)
        while waiting:
            interp = waiting.pop()
            if interp.idle_and_alive():
                return interp
            self._retire(interp)  # died while idle (killed, OOM): replaced, never blamed
        while self.spares:
            spare = self.spares.pop()
            if spare.idle_and_alive():
                spare.key = key
                return spare
            self._retire(spare)
        # A new one. The node keeps as many as it ran calls at once: past that, an idle
        # interpreter of another kind (other GPUs, threads, cap) makes room.
        idle = sum(len(v) for v in self.idle.values())
        if self.busy + idle + 1 > max(self.most, self.busy + 1):
            for other in self.idle.values():
                if other:
                    self._retire(other.pop())
                    break
        return self._spawn(key, spawn_env)

    def spare_wanted(self) -> bool:
        """Whether the node should fork a spare in its idle time: only before the first
        call (a spare stands in for that wave's forks; later, interpreters are kept),
        up to the configured count, and while the zygote is up."""
        return (not self.calls and self.spares_left > 0 and self.zygote.alive()
                and self.zygote.poll_ready())

    def fork_spare(self) -> None:
        """One spare; a fork that fails ends the spares (the first call will say why)."""
        try:
            self.spares.append(self._spawn(SPARE, {}))
            self.spares_left -= 1
        except runner.StartError as exc:
            log.warning("no spare Python interpreter: %s", exc)
            self.spares_left = 0

    def _spawn(self, key: Key, spawn_env: dict[str, str]) -> Interpreter:
        try:
            pid, sock = self.zygote.fork(spawn_env)
        except OSError as exc:
            raise runner.StartError(f"cannot start a Python interpreter: {exc}") from None
        try:
            interp = Interpreter(pid, sock, key, self.zygote.status, self.zygote.started)
        except OSError as exc:  # ended already (pyinterp)
            raise runner.StartError(f"cannot watch a new Python interpreter: {exc}"
                                    ) from None
        self.procs[pid] = interp
        self.started += 1
        return interp

    # -- a call's end -------------------------------------------------------------------
    def reap(self, call: PyCall) -> int | None:
        """The call's exit code once it answered or its interpreter died; else None."""
        interp = call.interp
        assert interp is not None
        answer = read_answer(interp)
        if answer is not None:
            header, doc = answer
            rc = int(header.get("rc", 1))
            if header.get("error"):  # it could not take the call (pycall.run_call)
                log.warning("task %s: %s", call.order.id, header["error"])
                _note(call, f"the Python interpreter could not take this call: "
                      f"{header['error']}")
            if rc == 0 and doc:
                try:
                    self.results[call.order.id] = doc.decode("utf-8")
                except UnicodeDecodeError:
                    rc = 1
                    _note(call, "the return value could not be read back (not UTF-8 JSON)")
            call.rc = rc
            if rc == 0 and call.end_kind is None:
                # It ends DONE, whose record has no output tail: no reading it back (two
                # fstats a call) when the node closes the call.
                call.tail = ""
            self._after(call, interp, bool(header.get("recycle")))
            return rc
        # No whole answer. Only the process's exit or the socket's end says more: more
        # of the answer arriving meanwhile (a big one comes in parts) is no end at all.
        exited = pidfds.is_over(interp.pidfd)
        if not exited and not interp.eof and interp.status is None:
            return None  # woken by part of the answer
        if not exited and interp.status is None:
            # The socket ended while the process lives: it is dying (its descriptors
            # close a moment before its exit shows), or the call closed the socket or
            # broke what the interpreter answers with. A moment tells which.
            exited = pidfds.is_over(interp.pidfd, HANG_UP_S)
        status = interp.reap(2.0 if exited else 0.0)
        if status is None and exited:
            status = interp.status = 255  # its zygote never said how: the status is lost
        if status is None:
            # It lives on, unable to answer: end it; its exit wakes the node through the
            # pidfd alone.
            call.hung_up = True
            interp.kill()
            with contextlib.suppress(OSError, KeyError, ValueError):
                interp.watch.unregister(interp.sock.fileno())
            return None
        call.rc = status
        if call.end_kind is None:  # not stopped by the launcher: say what happened
            # Killed by the node's SIGKILL above, not by memory nor another process.
            _note(call, HUNG_UP if call.hung_up else _death(status))
            if status == 0:
                call.end_kind = EndKind.ERROR  # exited without the function returning
        self._after(call, interp, True)
        return status

    def _after(self, call: PyCall, interp: Interpreter, recycle: bool) -> None:
        call.interp = None
        self.outputs.done(call.order.id)
        self.busy -= 1
        signalled = call.end_kind is not None  # SIGTERM went to it: it may be dying
        if (recycle or signalled or interp.status is not None
                or (self.config.max_calls and interp.calls >= self.config.max_calls)):
            self._retire(interp)
        else:
            self.idle.setdefault(interp.key, []).append(interp)

    def finished(self, fin: Finished) -> Finished:
        """The node's report of a Python task's end, with its result when it finished."""
        result = self.results.pop(fin.id, None)
        if result is not None and fin.kind == EndKind.DONE:
            return fin._replace(result=result)
        return fin

    # -- the end of interpreters --------------------------------------------------------
    def _retire(self, interp: Interpreter) -> None:
        """End it (and whatever it left running in its session); reaped when it exits."""
        interp.kill()
        with contextlib.suppress(OSError):
            interp.sock.close()
        if interp.reap() is not None:
            self._forget(interp)
        else:
            self.retired.append(interp)  # forgotten at a later call's start

    def _forget(self, interp: Interpreter) -> None:
        interp.close_fds()
        self.procs.pop(interp.pid, None)

    def _reap_retired(self) -> None:
        """Forget the retired interpreters that have exited (the list, not every
        interpreter the pool holds, is walked at each call's start)."""
        if self.retired:
            waiting = self.retired
            self.retired = []
            for interp in waiting:
                if interp.reap() is not None:
                    self._forget(interp)
                elif self.procs.get(interp.pid) is interp:
                    self.retired.append(interp)

    def kill_all(self) -> None:
        """SIGKILL every interpreter's session (a crash, before MPI_Abort). The zygote
        stays to reap them; it dies with the rank (or at :meth:`close`)."""
        for interp in self.procs.values():
            interp.kill()

    def close(self) -> None:
        self.outputs.close()
        for interp in self.procs.values():
            interp.kill()
        deadline = time.monotonic() + 5.0
        for interp in list(self.procs.values()):  # gone before the node reports its end
            left = max(0.0, deadline - time.monotonic())
            if interp.status is None and interp.pidfd >= 0:
                pidfds.is_over(interp.pidfd, left)
            self._forget(interp)
        self.zygote.close()
        self.idle.clear()
        self.spares.clear()
        if self.started:
            log.info("python pool: %s interpreters started, %s calls", self.started,
                     self.calls)


HUNG_UP = ("the Python interpreter running this call stopped answering the node (its "
           "socket closed, or garbled: a call that closes descriptors it did not open, or "
           "replaces what the interpreter uses, such as json's functions); the node "
           "killed it")


def _death(status: int) -> str:
    if status < 0:
        name = signal_name(-status)
        why = " (out of memory, or killed by another process)" if -status == 9 else ""
        return f"the Python interpreter running this call was killed by {name}{why}"
    return (f"the Python interpreter running this call exited with code {status} before "
            "the function returned (os._exit, or a crash)")


def _note(call: PyCall, text: str) -> None:
    """A line in the task's task.err (where the traceback of a raise would be), through
    the node's own descriptor of it."""
    if call.err_fd >= 0:
        with contextlib.suppress(OSError):
            os.write(call.err_fd, f"balsam_mpi: {text}\n".encode())
