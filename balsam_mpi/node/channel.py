"""The launcher's side of ``task_api``: a unix socket per node that its tasks connect to.

Non-blocking and polled from the node's loop (its fd is in the node's epoll set, so a
connecting task wakes an idle node); no thread or helper process inside the rank. One
request per connection: a JSON line ``{"parent": id, "tasks": [...]}``; the answer is a
JSON line ``{"ids": [...]}`` or ``{"error": "..."}`` once the leader wrote the tasks.
The socket lives in a private directory (0700), so only this user's processes reach it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ..task_api import MAX_REQUEST, SOCKET_ENV

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger(__name__)


@dataclass
class Request:
    id: int
    parent: int
    tasks: tuple[dict[str, Any], ...]


@dataclass
class _Conn:
    sock: socket.socket
    data: bytearray = field(default_factory=bytearray)


class TaskChannel:
    def __init__(self, rank: int) -> None:
        self.dir = tempfile.mkdtemp(prefix=f"balsam-r{rank}-")  # 0700
        self.path = os.path.join(self.dir, "tasks.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(128)
        self.sock.setblocking(False)
        self._reading: dict[int, _Conn] = {}
        self._waiting: dict[int, socket.socket] = {}  # request id -> its connection
        self._next = 0

    def __enter__(self) -> TaskChannel:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def serve(self, node: Node) -> None:
        """Make this the channel of ``node``'s tasks: they get its path, and the node
        wakes when a request comes."""
        node.extra_env.update(self.env())
        node.procs.watch(self.fileno())

    def env(self) -> dict[str, str]:
        return {SOCKET_ENV: self.path}

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def pending(self) -> int:
        return len(self._waiting)

    @property
    def in_flight(self) -> bool:
        """A request is being read, or waits for the leader's answer (its task waits)."""
        return bool(self._reading or self._waiting)

    def poll(self) -> list[Request]:
        """Accept what connected and read what arrived; complete requests (never waits)."""
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                break
            conn.setblocking(False)
            self._reading[conn.fileno()] = _Conn(conn)
        out: list[Request] = []
        for fd, c in list(self._reading.items()):
            try:
                chunk = c.sock.recv(1 << 16)  # as pywire.READ_CHUNK says why
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                chunk = b""
            if chunk:
                c.data += chunk
                if len(c.data) > MAX_REQUEST:
                    del self._reading[fd]
                    self._answer(c.sock, {"error": f"request over {MAX_REQUEST} bytes"})
                    continue
                if not c.data.endswith(b"\n"):
                    continue
            del self._reading[fd]
            if not chunk and not c.data.endswith(b"\n"):
                c.sock.close()  # gone before a whole request
                continue
            try:
                body = json.loads(c.data)
                req = Request(self._next + 1, int(body["parent"]),
                              tuple(dict(t) for t in body["tasks"]))
            except (ValueError, KeyError, TypeError) as exc:
                self._answer(c.sock, {"error": f"bad request: {exc}"})
                continue
            self._next += 1
            self._waiting[req.id] = c.sock
            out.append(req)
        return out

    def reply(self, req_id: int, ids: tuple[int, ...], error: str = "") -> None:
        conn = self._waiting.pop(req_id, None)
        if conn is not None:
            self._answer(conn, {"error": error} if error else {"ids": list(ids)})

    @staticmethod
    def _answer(conn: socket.socket, answer: dict[str, Any]) -> None:
        # Answers are small (a socket buffer holds them whole): a short blocking send.
        try:
            conn.settimeout(1.0)
            conn.sendall(json.dumps(answer).encode() + b"\n")
        except OSError as exc:
            log.warning("a task left before its answer: %s", exc)
        finally:
            conn.close()

    def close(self) -> None:
        for req_id in list(self._waiting):
            self.reply(req_id, (), "the launcher is stopping")
        for c in self._reading.values():
            c.sock.close()
        self._reading.clear()
        self.sock.close()
        with contextlib.suppress(OSError):
            shutil.rmtree(self.dir)
