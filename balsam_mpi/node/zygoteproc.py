"""The zygote process's own side (``python -m balsam_mpi.node.pyzygote``; the node's side
is ``pyzygote.Zygote``): it imports the ``python_preload`` modules, then forks an
interpreter per request and relays each one's exit, until the node closes its socket."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import select
import signal
import socket
import time
from typing import Any

from ..base.limits import PYTHON_MODULE
from . import pycall


def _child(fd: int, env: dict[str, Any], zygote: int, die: bool, ctl: socket.socket,
           closing: list[int]) -> None:
    """In a freshly forked interpreter: never returns into the zygote's loop."""
    code = 1
    try:
        os.setsid()  # its own session: a kill reaches whatever it starts
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.close(ctl.detach())  # the zygote's socket, not this interpreter's
        for other in closing:
            with contextlib.suppress(OSError):
                os.close(other)
        os.environ.update({str(k): str(v) for k, v in env.items()})
        if die:
            pycall.die_with(zygote)
        code = pycall.serve(fd)
    except BaseException:  # reported on stderr, then the process ends
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)


def serve(ctl: socket.socket, die: bool) -> int:
    """Fork an interpreter per request; relay their exits; end them all at EOF."""
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda _sig, _frame: None)
    children: set[int] = set()
    backlog: list[bytes] = []  # exits the node has not had room for yet
    poller = select.poll()
    poller.register(ctl.fileno(), select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    me = os.getpid()
    try:
        while True:
            poller.modify(ctl.fileno(), select.POLLIN | (select.POLLOUT if backlog else 0))
            events = poller.poll()
            with contextlib.suppress(BlockingIOError):
                os.read(wake_r, 4096)
            while True:  # reap every interpreter that exited
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                children.discard(pid)
                backlog.append(json.dumps({"exit": pid, "status":
                                           os.waitstatus_to_exitcode(status)}).encode())
            while backlog:
                try:
                    ctl.send(backlog[0], socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                except OSError:
                    return 0  # the node is gone
                backlog.pop(0)
            if not any(fd == ctl.fileno() and mask & (select.POLLIN | select.POLLHUP)
                       for fd, mask in events):
                continue
            try:
                data, fds, _flags, _addr = socket.recv_fds(ctl, 1 << 16, 1)
            except OSError:
                return 0  # the node is gone (it closed with our news unread)
            if not data:
                return 0  # the node closed its end
            request = json.loads(data)
            pid = os.fork()
            if pid == 0:
                _child(fds[0], request.get("env", {}), me, die, ctl, [wake_r, wake_w])
            os.close(fds[0])
            children.add(pid)
            ctl.send(json.dumps({"pid": pid}).encode())
    finally:
        for pid in children:  # the node is gone or done: so are its interpreters
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        for pid in children:  # reaped here, not left for init: gone when the node is
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def preload(names: list[str]) -> dict[str, Any]:
    """Import each module (in the zygote, before any fork); the node's "ready" message:
    what failed and why (one line each), the time taken, threads left running."""
    t0 = time.monotonic()
    failed: dict[str, str] = {}
    for name in names:
        if not PYTHON_MODULE.fullmatch(name):  # the settings check it; never imported
            failed[name] = "not a module name"
            continue
        try:
            importlib.import_module(name)
        except BaseException as exc:  # SystemExit too: the zygote serves on without it
            first = (str(exc).strip().splitlines() or [""])[0]
            failed[name] = f"{type(exc).__name__}: {first}"[:300]
    try:
        threads = len(os.listdir("/proc/self/task")) - 1  # native ones too
    except OSError:
        threads = 0
    return {"ready": True, "failed": failed, "seconds": round(time.monotonic() - t0, 3),
            "threads": threads}
