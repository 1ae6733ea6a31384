"""A warm interpreter: ``python -m balsam_mpi.node.pycall FD PARENT_PID DIE_WITH_PARENT``.

A node's pool (``pypool``) starts this program fresh — ``posix_spawn`` and exec, never a
fork of an MPI rank, so no MPI state is inherited — with one end of a socket pair as FD.
It then takes calls one at a time and answers each:

    call    node → here: a frame (the function, the task's environment, the memory
            caps, and the keyword arguments) with three descriptors attached: the
            task's directory, task.out, task.err
    answer  here → node: a frame (exit code, whether to replace this interpreter, and
            the return value)

A frame is a 4-byte big-endian length and that many bytes: a JSON header, a NUL, and a
JSON document (the keyword arguments; the return value, or nothing for None). JSON text
never holds a raw NUL, so the split is unambiguous.

A call: enter the task's directory and point fd 1 and 2 at its task.out and task.err —
descriptors the node opened as for any task (``runner.open_task_dir``: no planted link is
followed) and sent with the call — add the task's environment, cap the address space,
import the module (once per interpreter) and call the function. The return value goes back as JSON, within
``limits.RESULT_MAX_BYTES``; an exception's traceback goes to task.err, as a script's
would, and the answer says exit code 1. Then everything is put back (``pyputback``) — directory,
descriptors, environment, ``sys.stdout``/``sys.stderr`` (new ones if the call closed
them), signal handlers and blocked signals, the umask, the recursion limit, the resource
limits (an interpreter whose hard limit a call lowered is replaced), the nice value, the
scheduling policy, the CPU affinity and the parent-death signal (an interpreter whose
priority a call lowered for good, which only privilege raises again, is replaced);
interval timers and faulthandler's watchdog cancelled — for the next call. A call cannot
leave the process group the node's kill reaches: the interpreter leads its own session
(``pyzygote``), so ``os.setsid()`` and ``os.setpgrp()`` fail in it. What a warm interpreter cannot
undo is the point of one: imported modules stay, and so does whatever a function leaves
in them or in threads it started.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import resource
import select
import signal
import socket
import struct
import sys
import types
from typing import TYPE_CHECKING

from ..base.limits import PYTHON_PATH, RESULT_MAX_BYTES
from .prctl import PR_SET_PDEATHSIG, libc_prctl
from .pyputback import Between, Saved

if TYPE_CHECKING:
    from typing import Any


LENGTH = struct.Struct("!I")
MAX_FRAME = 64 << 20  # the pool never sends more (params are capped far below)
NUM_FDS = 3  # with a call: the task's directory, task.out, task.err

_functions: dict[str, Any] = {}
_STR = frozenset({str})
_CONTAINERS = (dict, list, tuple)  # what json.dumps walks into


def resolve(path: str) -> Any:
    """The function an import path names; the module is imported once per interpreter."""
    fn = _functions.get(path)
    if fn is None:
        if not PYTHON_PATH.fullmatch(path):  # the database and the client check it too
            raise ValueError(f"{path!r} is not an import path (package.module:function)")
        module, _, attr = path.partition(":")
        try:
            fn = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and (module + ".").startswith(exc.name + "."):  # its own, not a
                exc.add_note(  # dependency's: where it was looked for (base/safepath.py)
                    f"balsam_mpi: {module} is looked for on PYTHONPATH and among the "
                    "installed packages, never in the launcher's working directory: put "
                    "its directory on PYTHONPATH (docs/python-tasks.md)")
            raise
        for part in attr.split("."):
            fn = getattr(fn, part)
        if not callable(fn):
            raise TypeError(f"{path} is not callable")
        _functions[path] = fn
    return fn


def _imported(path: str, saved: Saved) -> Any:
    """``resolve`` for a path not yet imported here. What the import did to the
    environment stays, as the module does: put back after the first call alone, later
    calls in this interpreter would not see what the first one saw."""
    before = dict(os.environ._data)  # type: ignore[attr-defined]
    fn = resolve(path)
    saved.keep_environ(before)
    return fn


def encode_frame(header: dict[str, Any], doc: bytes = b"") -> bytes:
    body = json.dumps(header).encode() + b"\0" + doc
    return LENGTH.pack(len(body)) + body


def split_frame(body: bytes) -> tuple[dict[str, Any], bytes]:
    head, sep, doc = body.partition(b"\0")
    if not sep:
        raise ValueError("a frame without its separator")
    header = json.loads(head)
    if not isinstance(header, dict):
        raise ValueError("a frame whose header is not an object")
    return header, doc


def _recv_call(sock: socket.socket) -> tuple[bytes, list[int]] | None:
    """The next call and its descriptors; None when the node has closed its end."""
    data, fds, _flags, _addr = socket.recv_fds(sock, 1 << 16, NUM_FDS,
                                               socket.MSG_CMSG_CLOEXEC)
    if not data:
        return None
    buf = bytearray(data)
    while len(buf) < LENGTH.size:
        more = sock.recv(1 << 16)
        if not more:
            return None
        buf += more
    (n,) = LENGTH.unpack_from(buf)
    if n > MAX_FRAME:
        raise ValueError(f"a call of {n} bytes")
    while len(buf) < LENGTH.size + n:
        more = sock.recv(min(1 << 20, LENGTH.size + n - len(buf)))
        if not more:
            return None
        buf += more
    return bytes(buf[LENGTH.size:]), fds


def _enter(fds: list[int]) -> None:
    """Enter the task's directory; fd 1 and 2 to its task.out / task.err (the node's
    descriptors: it opened them as for any task)."""
    try:
        if len(fds) != NUM_FDS:
            raise OSError(f"a call with {len(fds)} descriptors, not {NUM_FDS}")
        os.fchdir(fds[0])
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os.dup2(fds[1], 1)
        os.dup2(fds[2], 2)
    finally:
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass


def _resident() -> int:
    """This process's resident set now, in bytes."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _over(cap: int) -> bool:
    """Whether the resident set is over ``cap``: the peak (one syscall) rules it out in
    the usual case; only a peak over the cap makes it read the current size."""
    if not cap or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 <= cap:
        return False
    return _resident() > cap


def _say(text: object) -> None:
    """A line in task.err, after whatever the function wrote there (``text`` made a
    string here: a ``sys.exit`` argument's ``__str__`` may raise, as a script's may)."""
    with contextlib.suppress(Exception):
        sys.__stderr__.write(f"balsam_mpi: {text}\n")  # type: ignore[union-attr]
        sys.__stderr__.flush()  # type: ignore[union-attr]


def _exit_code(exc: SystemExit) -> int:
    """What ``sys.exit(x)`` would have made the exit status of a script."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    _say(exc.code)
    return 1


def _json_key(key: Any) -> str:
    """The string ``json.dumps`` writes for a dict key it accepts."""
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, bool):
        return json.dumps(key)
    return float.__repr__(key) if isinstance(key, float) else int.__repr__(key)


def _key_clash(value: Any) -> str | None:
    """Two keys of one dict that JSON writes as one string (``1`` and ``"1"``, ``None``
    and ``"null"``): both are written, and a reader keeps only the last, so one value
    would be lost without a word. Only dicts with keys other than strings can have
    them; the walk is a loop, as deep as the value (5,000 small dicts: ~2 ms, about
    what encoding them costs; a 3-key dict: 0.6 µs)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if not _STR.issuperset(map(type, item)):
                seen: dict[str, str] = {}
                for k in item:
                    key = _json_key(k)
                    if key in seen:
                        return (f"a dict has two keys, {seen[key]} and {type(k).__name__}, "
                                f"both {json.dumps(key)} in JSON: one value would be lost")
                    seen[key] = type(k).__name__
            item = item.values()
        for v in item:
            if isinstance(v, _CONTAINERS):
                stack.append(v)
    return None


def _not_json(value: Any, exc: BaseException) -> str:
    """Why a return value is not JSON, in words for the function's author. A coroutine
    (an async function's call) is closed here, never run: left to the garbage collector,
    its "never awaited" warning would go to the node's log, not the task's."""
    kind = type(value).__name__
    if isinstance(value, types.CoroutineType):
        value.close()
        return ("a coroutine: the function is async, and its calls are not awaited; "
                "call it with asyncio.run() from a plain function")
    if isinstance(value, (types.GeneratorType, types.AsyncGeneratorType)):
        return f"a {kind}: the function yields; return a list instead"
    if isinstance(exc, RecursionError):
        return f"a {kind} nested too deeply to encode"
    return str(exc)


def run_call(header: dict[str, Any], doc: bytes, fds: list[int],
             between: Between) -> tuple[dict[str, Any], bytes]:
    """One call, start to end; returns the answer (header, result document)."""
    # A spare's first call (pypool): the variables its kind of interpreter is forked
    # with, set for good before anything of the user's is imported, as a fork would.
    if "spawn_env" in header:
        os.environ.update({str(k): str(v) for k, v in dict(header["spawn_env"]).items()})
    saved = Saved()
    rc, result, recycle = 1, b"", False
    try:
        _enter(fds)
    except OSError as exc:
        # Never the task's doing: what an earlier call left (no descriptor free for the
        # call's own). The node says so in task.err; a fresh interpreter takes the next.
        saved.restore(between)
        return {"rc": 126, "recycle": True, "error": str(exc)}, b""
    try:
        os.environ.update({str(k): str(v) for k, v in dict(header.get("env", {})).items()})
        cap = int(header.get("as_cap", 0))
        if cap > 0:
            hard = between.address_space[1]
            soft = cap if hard == resource.RLIM_INFINITY else min(cap, hard)
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        path = str(header["fn"])
        fn = _functions.get(path)
        if fn is None:
            fn = _imported(path, saved)
        kwargs = json.loads(doc) if doc else {}
        value = fn(**kwargs)
        if value is not None:
            try:
                text = json.dumps(value, allow_nan=False)
            except (TypeError, ValueError, RecursionError) as exc:
                raise TypeError(f"the return value is not JSON: {_not_json(value, exc)}"
                                ) from None
            clash = _key_clash(value) if "{" in text else None  # no "{": no dict in it
            if clash:
                raise TypeError(f"the return value is not JSON: {clash}")
            result = text.encode("utf-8", "surrogatepass")
            if len(result) > RESULT_MAX_BYTES:
                size, result = len(result), b""
                raise ValueError(f"the return value is {size} bytes of JSON; a result may "
                                 f"have at most {RESULT_MAX_BYTES} "
                                 "(limits.RESULT_MAX_BYTES): return less, or write it to "
                                 "a file in the task's directory")
        rc = 0
    except SystemExit as exc:
        rc, result = _exit_code(exc), b""
    except BaseException as exc:  # the task's failure, never the interpreter's
        result = b""
        recycle = isinstance(exc, MemoryError)
        with contextlib.suppress(Exception):
            import traceback

            traceback.print_exc(file=sys.__stderr__)
    finally:
        if not saved.restore(between):
            recycle = True
    # Over the cap after the call (what it allocated stays with the interpreter): the
    # next call gets a fresh one. The address space cannot pass the cap during a call.
    if _over(int(header.get("rss_cap", 0))):
        recycle = True
    return {"rc": rc, "recycle": recycle}, result


def die_with(parent: int) -> None:
    """SIGKILL when the node's rank dies (as its process tasks get, node/trampoline.py)."""
    libc_prctl()(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the rank died before prctl took effect
        os._exit(137)


def setup(parent: int, die_with_parent: bool) -> None:
    libc_prctl()  # looked up once, here: every interpreter forked from here reads with it
    if die_with_parent:
        die_with(parent)
    # Should memory run out, the kernel's OOM killer takes an interpreter, not its rank.
    with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as fh:
        fh.write("1000")
    # Imports resolve as at start-up whatever directory a call runs in: a relative entry
    # would otherwise search each task's (group-writable) directory.
    sys.path[:] = [os.path.abspath(p) if p else os.getcwd() for p in sys.path]
    with contextlib.suppress(Exception):
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]


def serve(fd: int) -> int:
    """Take calls on socket ``fd`` until the node closes it."""
    sock = socket.socket(fileno=fd)
    sock.set_inheritable(False)
    # A child the function forks must not hold the node's socket: the node notices this
    # interpreter's death by the socket closing.
    os.register_at_fork(after_in_child=lambda: os.close(sock.detach()))
    between = Between()
    # The wait for the next call is a poll for input, not a blocking recv: the node's
    # read of an answer frees its buffer, and the kernel then wakes whatever waits on
    # this socket for room to write -- a reader blocked in recv included (its wait takes
    # any wake-up), but not a poll for input. Waiting in recv, every call woke this
    # interpreter twice, the second time for nothing, at the node's expense.
    waiting = select.poll()
    waiting.register(sock.fileno(), select.POLLIN)
    while True:
        waiting.poll()
        got = _recv_call(sock)
        if got is None:
            return 0  # the node closed its end: retired, or the node is gone
        body, fds = got
        header, doc = split_frame(body)
        answer, result = run_call(header, doc, fds, between)
        try:
            sock.sendall(encode_frame(answer, result))
        except OSError:
            if sock.fileno() < 0:
                # A child the call forked, back from the function (no os._exit): the
                # answer is its parent's to give, and it has no socket; it ends here.
                return 0
            raise


def main(argv: list[str]) -> int:
    """One interpreter on its own (the node's interpreters come from ``pyzygote``)."""
    if len(argv) != 3:
        print("usage: python -m balsam_mpi.node.pycall FD PARENT_PID DIE_WITH_PARENT (0|1); "
              "started by the launcher's nodes only", file=sys.stderr)
        return 2
    fd, parent, die = int(argv[0]), int(argv[1]), argv[2] == "1"
    setup(parent, die)
    return serve(fd)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
