"""The API a running task calls to add tasks (Balsam's ``dag.add_job`` inside a job).

    from balsam_mpi import task_api
    ids = task_api.add_tasks([{"app": "sim", "workflow": "w", "params": {"x": 1},
                               "parents": [task_api.task_id()]}])

The request goes to the task's own worker over a unix socket whose path the worker put
in the task's environment (``BALSAM_TASK_SOCKET``), then to the leader over MPI, which
writes it with the launcher's one database connection: thousands of packed tasks adding
work open no database connections. The call waits until the tasks are written and
returns their ids. Fields are those of ``Client.add_tasks`` (``parents`` may name the
running task: the children then wait for it to finish).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping, Sequence
from typing import Any

from .base.errors import BalsamError

SOCKET_ENV = "BALSAM_TASK_SOCKET"
TASK_ENV = "BALSAM_TASK_ID"
MAX_REQUEST = 64 << 20  # bytes; the worker refuses larger requests


class TaskApiError(BalsamError):
    """Not inside a launcher's task, or the launcher refused or failed the request."""


def inside_task(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this process is a task of a running launcher (so adds go through it)."""
    return bool(environ.get(SOCKET_ENV)) and bool(environ.get(TASK_ENV))


def task_id(environ: Mapping[str, str] = os.environ) -> int:
    """The id of the running task (``BALSAM_TASK_ID``)."""
    try:
        return int(environ[TASK_ENV])
    except (KeyError, ValueError):
        raise TaskApiError(f"{TASK_ENV} is not set: not inside a launcher's task") from None


def add_tasks(tasks: Sequence[Mapping[str, Any]], *, timeout: float = 120.0,
              environ: Mapping[str, str] = os.environ) -> list[int]:
    """Add tasks through the launcher running this task; returns their ids in order."""
    if not inside_task(environ):
        raise TaskApiError(f"{SOCKET_ENV} is not set: task_api works inside a task a "
                           "launcher started; elsewhere use balsam_mpi.Client")
    body = json.dumps({"parent": task_id(environ), "tasks": [dict(t) for t in tasks]},
                      default=str).encode() + b"\n"
    if len(body) > MAX_REQUEST:
        raise TaskApiError(f"request of {len(body)} bytes; send at most {MAX_REQUEST}")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(environ[SOCKET_ENV])
            sock.sendall(body)
            reply = bytearray()
            while not reply.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
    except OSError as exc:
        raise TaskApiError(f"cannot reach the launcher at {environ[SOCKET_ENV]}: {exc}") from None
    try:
        answer = json.loads(reply)
    except ValueError:
        raise TaskApiError("the launcher closed the connection without an answer") from None
    if answer.get("error"):
        raise TaskApiError(str(answer["error"]))
    return [int(i) for i in answer["ids"]]


def add_task(**fields: Any) -> int:
    return add_tasks([fields])[0]
