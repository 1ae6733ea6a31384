"""A node's zygote: the fresh interpreter its warm interpreters are forked from.

Starting a Python interpreter costs ~30 ms of CPU here (the interpreter, ``site``, the
modules ``pycall`` needs); a node packing 16 Python tasks starts 16 at once, and on a
small machine the start-ups of a whole batch job's nodes took most of a second of its
first tasks' time. So each node starts one *zygote* — ``python -m balsam_mpi.node.pyzygote``,
spawned fresh with ``posix_spawn`` like any task, never a fork of the MPI rank, without
the launcher's MPI variables — which has imported what an interpreter needs and nothing
of the user's, and forks an interpreter on request (about a millisecond). No interpreter
inherits anything of MPI; each starts as a copy of the same clean process.

    node → zygote   {"env": {...}} with the interpreter's socket attached (SCM_RIGHTS)
    zygote → node   {"pid": n}; and {"exit": n, "status": s} when an interpreter exits

With ``python_preload``, the zygote first imports the modules named there and says so
(``{"ready": true, "failed": {...}, ...}``); every interpreter is then forked with them
imported, so a node imports a heavy module once, not once per interpreter (each reading
the same files from a shared file system, side by side, as the first wave starts). The
node starts no Python call until then (a fork would wait behind the imports, past what
a node may block: ``PyStart``), and gives a zygote that dies or takes longer than
``PRELOAD_PATIENCE_S`` up for one without them. What a preloaded module does at import
it does once, in the zygote, with the node's environment: see docs/python-tasks.md.

The zygote is the interpreters' parent, so it reaps them and relays each exit status
(the node watches them through pidfds, which need no parent; without pidfds, through
this relay: ``pidfds.relayed_exit``). Each interpreter leads its
own session (a kill reaches what it started) and dies with the zygote, which dies with
the rank (parent-death signals); the zygote ends its interpreters and itself when the
node closes its socket.
"""

from __future__ import annotations

import array
import contextlib
import json
import logging
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Mapping
from typing import Any

from ..base import safepath
from . import pidfds, pycall, zygoteproc

log = logging.getLogger(__name__)

# A new zygote's first answer (its own start-up) at most. The node waits for it, so it
# stays well under worker_timeout_s (10 s), after which the leader declares a silent
# worker dead; a call that cannot get an interpreter in time fails with the reason.
START_TIMEOUT_S = 5.0
# How long a zygote may take over its preload imports before the node ends it and starts
# one without them (a module that hangs at import must not keep a node's calls waiting
# for the whole job); generous, as a cold shared file system can be slow.
PRELOAD_PATIENCE_S = 300.0
_DEFAULT_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTERM, signal.SIGINT,
                    signal.SIGHUP, signal.SIGUSR1, signal.SIGCHLD)


class ZygoteError(OSError):
    """The zygote could not be started or did not answer."""


class Zygote:
    """The node's side: asks for interpreters, collects their exit statuses."""

    def __init__(self, python: str, env: Mapping[str, str], die_with_parent: bool,
                 preload: tuple[str, ...] = ()) -> None:
        self.python = python
        self.env = dict(env)
        self.die_with_parent = die_with_parent
        self.preload = preload  # dropped for good if a zygote cannot import them
        self.ready = not preload  # False until a zygote has imported its preload modules
        self._ready_by = 0.0
        self.pid = -1
        self.pidfd = -1
        self.ctl: socket.socket | None = None
        self.exits: dict[int, int] = {}  # interpreter pid -> exit status, until asked for
        self.forked: set[int] = set()  # interpreters whose exit it has not reported
        self._pids: list[int] = []  # its answers to forks, read and not yet taken
        self.started = 0

    # -- the zygote itself --------------------------------------------------------------
    def alive(self) -> bool:
        return self.pidfd >= 0 and not pidfds.is_over(self.pidfd)

    def start(self) -> None:
        """Start the zygote unless it runs (the node's prestart; forks start it anyway)."""
        if not self.alive():
            self.poll_ready()  # one that died importing its preload: none next time
            self._start()

    def _start(self) -> None:
        self.close()
        self._pids.clear()  # a dead zygote's answers are no answers from the next
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        child_fd = theirs.fileno()
        spare = os.dup(child_fd) if child_fd == 3 else -1  # dup2(3, 3) keeps CLOEXEC
        # with -P: nothing from the launcher's working directory (base/safepath.py)
        argv = safepath.module_argv(self.python, "balsam_mpi.node.pyzygote", "3",
                                    str(os.getpid()), "1" if self.die_with_parent else "0",
                                    ",".join(self.preload))
        try:
            self.pid = os.posix_spawn(self.python, argv, self.env, file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_DUP2, spare if spare >= 0 else child_fd, 3),
            ], setsid=True, setsigmask=(), setsigdef=_DEFAULT_SIGNALS)
        except OSError as exc:
            ours.close()
            raise ZygoteError(f"cannot start {self.python}: {exc}") from None
        finally:
            theirs.close()
            if spare >= 0:
                os.close(spare)
        try:
            self.pidfd = pidfds.open_or_end(self.pid, lambda: _end(self.pid, ours))
        except OSError as exc:
            self.pid = -1
            raise ZygoteError(f"cannot watch the interpreters' zygote: pidfd_open: "
                              f"{exc.strerror or exc}") from None
        self.ctl = ours
        notes = pidfds.stand_ins()
        if notes is not None:  # without pidfds, its word is how interpreters' ends show
            notes.source(ours.fileno(), lambda: self._read(0.0))
        self.started += 1  # the zygote's generation: its interpreters carry it
        self.ready = not self.preload
        self._ready_by = time.monotonic() + PRELOAD_PATIENCE_S

    def poll_ready(self) -> bool:
        """Whether the zygote has imported its preload modules (never blocks). One that
        died meanwhile, or is past ``PRELOAD_PATIENCE_S``, is given up for one without
        them (True: the next fork starts it)."""
        if self.ready or self.ctl is None:  # (not started: python_ready starts it)
            return self.ready
        if self.alive():
            self._read(0.0)
            if self.ready:
                return True
            if time.monotonic() < self._ready_by:
                return False
            why = f"did not finish importing them in {PRELOAD_PATIENCE_S:g} s"
        else:
            why = "died while importing them"
        log.warning("the Python interpreters' zygote %s (python_preload: %s): its "
                    "interpreters start without them", why, ", ".join(self.preload))
        self.kill()
        self.close()
        self.preload = ()
        self.ready = True
        return True

    def close(self) -> None:
        """End the zygote (it ends its interpreters first) and reap it."""
        if self.ctl is not None:
            self._gone()
            self.ctl.close()  # EOF: it kills its interpreters and exits
            self.ctl = None
        if self.pid > 0:
            if not pidfds.is_over(self.pidfd, 5.0):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            os.close(self.pidfd)
            self.pid = self.pidfd = -1

    def kill(self) -> None:
        if self.pid > 0:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    # -- interpreters -------------------------------------------------------------------
    def fork(self, env: Mapping[str, str]) -> tuple[int, socket.socket]:
        """A new interpreter with these variables added; (pid, the node's socket). Its
        zygote's generation is :attr:`started` after the call."""
        self.start()
        try:
            return self._fork(env)
        except OSError:
            if self.alive():
                raise
        self._start()  # it died (killed, OOM) while we asked: once more, a fresh one
        return self._fork(env)

    def _fork(self, env: Mapping[str, str]) -> tuple[int, socket.socket]:
        assert self.ctl is not None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.ctl.sendmsg([json.dumps({"env": dict(env)}).encode()], [
                (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [theirs.fileno()]))])
            pid = self._await_pid(START_TIMEOUT_S)
            self.forked.add(pid)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        return pid, ours

    def status(self, pid: int, generation: int, wait_s: float = 0.0) -> int | None:
        """The exit status of interpreter ``pid`` (forked by zygote ``generation``) once
        its zygote has reaped it."""
        deadline = time.monotonic() + wait_s
        while True:
            self._read(0.0)
            if pid in self.exits:
                return self.exits.pop(pid)
            if generation != self.started or not self.alive():
                self._read(0.0)
                # Gone with its zygote (parent-death signal), or reaped by a zygote that
                # died before it could say: SIGKILL either way.
                return self.exits.pop(pid, -int(signal.SIGKILL))
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._read(min(left, 0.1))

    def _await_pid(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while not self._pids:
            left = deadline - time.monotonic()
            if left <= 0 or not self.alive():
                raise ZygoteError("the interpreters' zygote did not answer")
            self._read(left)
        return self._pids.pop(0)

    def _read(self, timeout: float) -> None:
        """Take what the zygote said (waiting up to ``timeout`` when there is nothing
        yet): exits, its preload's end, its answers to forks (kept for ``_await_pid``:
        without pidfds this is also called whenever its socket is readable)."""
        if self.ctl is None:
            return
        if timeout > 0 and not self._pids and not select.select([self.ctl], [], [],
                                                                  timeout)[0]:
            return
        while True:
            try:
                data = self.ctl.recv(1 << 16, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._gone()
                return
            if not data:
                self._gone()  # it ended: so have the interpreters it had not reported
                return
            msg = json.loads(data)
            if "exit" in msg:
                self.exits[int(msg["exit"])] = int(msg["status"])
                self.forked.discard(int(msg["exit"]))
                pidfds.relayed_exit(int(msg["exit"]))
            elif "ready" in msg:
                self._preloaded(msg)
            elif "pid" in msg:
                self._pids.append(int(msg["pid"]))


    def _gone(self) -> None:
        """The zygote's socket ended: every interpreter it had not reported has ended or
        is ending with it (parent-death signal); their stand-ins say so (pidfds)."""
        if self.ctl is not None:
            notes = pidfds.stand_ins()
            if notes is not None:
                notes.drop(self.ctl.fileno())
        for pid in self.forked:
            pidfds.relayed_exit(pid)
        self.forked.clear()

    def _preloaded(self, msg: dict[str, Any]) -> None:
        self.ready = True
        failed = dict(msg.get("failed") or {})
        for name, why in failed.items():
            log.warning("python_preload: the zygote cannot import %s (%s); calls import "
                        "it themselves", name, why)
        done = [m for m in self.preload if m not in failed]
        if done:
            log.info("the Python interpreters' zygote imported %s in %.2f s",
                     ", ".join(done), float(msg.get("seconds", 0.0)))
        threads = int(msg.get("threads", 0))
        if threads:
            log.warning("python_preload: the zygote has %d thread(s) besides its own after "
                        "the imports; its interpreters are forks of it, and a fork keeps "
                        "only the thread that forks (a lock another thread held stays "
                        "held): preload modules that start no thread at import", threads)


def _end(pid: int, ctl: socket.socket) -> None:
    """A zygote just started that cannot be watched (``pidfds``): ended and reaped
    before it has forked anything."""
    ctl.close()
    pidfds.kill_and_reap(pid)


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 4):
        print("usage: python -m balsam_mpi.node.pyzygote FD PARENT_PID DIE_WITH_PARENT (0|1) "
              "[MODULE,...]; started by the launcher's nodes only", file=sys.stderr)
        return 2
    fd, parent, die = int(argv[0]), int(argv[1]), argv[2] == "1"
    pycall.setup(parent, die)
    ctl = socket.socket(fileno=fd)
    ctl.set_inheritable(False)
    names = [n for n in argv[3].split(",") if n] if len(argv) == 4 else []
    if names:
        ctl.send(json.dumps(zygoteproc.preload(names)).encode())
    return zygoteproc.serve(ctl, die)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
