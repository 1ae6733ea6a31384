"""The leader–worker protocol (docs/architecture.md §5): one tag per message, one frozen dataclass each.

Messages travel pickled through mpi4py; the tag on the wire is the class's ``TAG`` so a
receiver can dispatch without unpickling first. Times are the node's own clock (epoch
seconds). Every report of a task carries the lease epoch of the claim it ran under, so the
database can refuse one from a superseded claim (fencing).

Adding a message: give it a new ``Tag`` and bump ``PROTOCOL_VERSION``; HELLO carries the
version and the leader aborts on a mismatch (mixed installs across nodes).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from enum import IntEnum
from typing import Any, NamedTuple, TypeVar

from .base.errors import BalsamError

PROTOCOL_VERSION = 6  # 6: Assign.recall / Report.returned (queued tasks given back)
LOCAL = 0  # the leader's rank: its own node runs in-process, without messages


class ProtocolError(BalsamError):
    """A rank sent something that is not this protocol (a foreign message, a mixed
    install): the launcher stops with the sender and tag named."""


class RemoteTraceback(BalsamError):
    """A traceback from another rank, as text: the ``__cause__`` of :class:`WorkerFailed`
    (as mpi4py.futures does), so the leader's own traceback shows the worker's below it."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text

    @classmethod
    def of(cls, msg: ErrorMsg) -> RemoteTraceback:
        return cls(f'\n"""\nrank {msg.rank} on {msg.host}:\n{msg.traceback.rstrip()}\n"""')


class WorkerFailed(BalsamError):
    """A worker rank reported an unhandled error (or speaks another protocol); the
    launcher writes what it holds, closes its batch job as FAILED and aborts. Raised
    ``from`` the worker's :class:`RemoteTraceback`."""

    @classmethod
    def of(cls, msg: ErrorMsg) -> WorkerFailed:
        """Names the rank, its host, the exception's type and the first line of its
        message (the whole traceback is the cause)."""
        text = msg.message.strip()
        first = text.splitlines()[0] if text else ""
        return cls(f"rank {msg.rank} on {msg.host} failed: {msg.exc_type}"
                   + (f": {first}" if first else ""))


class Tag(IntEnum):
    HELLO = 11
    REPORT = 12
    ASSIGN = 13
    DRAIN = 14
    BYE = 15
    ERROR = 16
    ADD_TASKS = 17  # a running task adds tasks (task_api), worker -> leader


class EndKind(IntEnum):
    """How a run ended; the values are what the database's report function expects."""

    DONE = 0  # exit code 0
    ERROR = 1  # non-zero exit, or could not start
    TIMEOUT = 2  # ran over its own wall_time_min
    CUT = 3  # stopped by the launcher (drain, wall time): requeued, no retry spent
    KILLED = 4  # stopped on request (USER_KILLED is already in the database)
    # With the app's postprocess (run after the task, on its node): the run's outcome and
    # the script's. The database moves the states as legacy Balsam did (0006_mpi_tasks).
    DONE_POST = 5  # RUN_DONE -> POSTPROCESSED -> JOB_FINISHED
    DONE_POST_FAILED = 6  # RUN_DONE -> FAILED (the postprocess exited non-zero)
    ERROR_HANDLED = 7  # RUN_ERROR -> POSTPROCESSED -> JOB_FINISHED (handler exit 0)
    ERROR_RETRY = 8  # RUN_ERROR -> RESTART_READY while retries last (handler exit 75)
    ERROR_HANDLER_FAILED = 9  # RUN_ERROR -> FAILED (handler exit anything else)
    TIMEOUT_HANDLED = 10
    TIMEOUT_RETRY = 11
    TIMEOUT_HANDLER_FAILED = 12
    PRE_FAILED = 13  # the preprocess exited non-zero: READY -> FAILED, the task never ran
    # Decided by the leader, not a node (0008_reliability):
    LOST = 14  # its worker rank stopped answering: requeued, lost counter +1
    REFUSED = 15  # the launcher cannot run it or store its report: FAILED, tail = why


_M = TypeVar("_M", bound=type)


def _wire(cls: _M) -> _M:
    """Pickle a message as its class and its fields' values, and unpickle it through
    ``__init__``. A frozen slotted dataclass otherwise pickles through the
    ``__getstate__``/``__setstate__`` that ``dataclasses`` writes, which look the fields
    up again for every message (``dataclasses.fields``): pickled and unpickled, a small
    REPORT took 21–29 µs that way and 15–17 µs this way, an ASSIGN of one Python call
    15–20 and 11–15 µs (tests/unit/test_protocol_pickling.py)."""
    names = [f.name for f in fields(cls)]
    get: Callable[[Any], Any] = operator.attrgetter(*names)
    one = len(names) == 1  # attrgetter of one name returns the value, not a tuple

    def __reduce__(self: Any) -> tuple[type, tuple[Any, ...]]:
        return cls, ((get(self),) if one else get(self))

    cls.__reduce__ = __reduce__  # type: ignore[assignment]
    return cls


# The per-task records are NamedTuples, not dataclasses: thousands travel in one message,
# and unpickling a slotted dataclass costs several times more than a tuple.
class RunOrder(NamedTuple):
    """Everything a node needs to run one task (built by the leader from its claim)."""

    id: int
    epoch: int
    argv: tuple[str, ...]
    cwd: str
    env: tuple[tuple[str, str], ...] = ()
    need: float = 1.0  # share of one node: 1 / node_packing_count
    wall_time_s: float = 0.0  # 0 = no limit of its own
    threads: int = 1
    gpus: int = 0  # GPUs this task needs on its node
    env_script: str = ""
    # A multi-rank task (mpilaunch.needs_prefix) runs under the platform's launch prefix
    # on whole nodes; ``hosts`` are the reserved nodes' HELLO hosts, the head's first.
    num_nodes: int = 1
    ranks_per_node: int = 1
    gpus_per_rank: int = 0
    hosts: tuple[str, ...] = ()
    preprocess: str = ""  # the app's, only when this is the task's first run
    postprocess: str = ""
    post_on_error: bool = False
    post_on_timeout: bool = False
    # input_files: the node links what matches these patterns in the parents'
    # directories into the task's before anything runs (stagein.link_inputs).
    inputs: tuple[str, ...] = ()
    parent_dirs: tuple[str, ...] = ()
    # A Python task (docs/python-tasks.md): ("package.module:function", the keyword
    # arguments as JSON text), called in one of the node's warm interpreters (pypool);
    # empty for a process task. Only the app's import path and JSON travel, never code.
    python: tuple[str, ...] = ()
    # False: a Python call of an app without task directories (migration 0020) runs in
    # its workflow's directory, its output in memory; ``cwd`` is then never made.
    own_dir: bool = True


class Started(NamedTuple):
    id: int
    epoch: int
    at: float


class Finished(NamedTuple):
    id: int
    epoch: int
    kind: int  # an EndKind value
    rc: int
    started_at: float
    ended_at: float
    tail: str = ""
    result: str | None = None  # a Python task's return value as JSON text (DONE only)


@_wire
@dataclass(frozen=True, slots=True)
class Hello:
    TAG = Tag.HELLO
    rank: int
    host: str
    pid: int
    cores: int
    gpus: int
    version: int = PROTOCOL_VERSION


@_wire
@dataclass(frozen=True, slots=True)
class Report:
    """A node's changes since its last report, and its state now.

    ``acked`` is the sequence number of the last ASSIGN the node had applied when it
    wrote this report, so the leader can tell which of its assignments the reported
    ``free`` already accounts for.
    """

    TAG = Tag.REPORT
    rank: int
    acked: int
    free: float
    running: int
    queued: int
    started: tuple[Started, ...] = ()
    finished: tuple[Finished, ...] = ()
    done_share: float = 0.0  # node shares finished since the node started (its pace)
    # Answer to Assign.recall: the recalled tasks that were still queued here, now
    # dropped from the queue; they never start on this node (the leader places them anew).
    returned: tuple[int, ...] = ()


@_wire
@dataclass(frozen=True, slots=True)
class Assign:
    """Tasks to start (may be empty: the answer to every REPORT) and task ids to kill."""

    TAG = Tag.ASSIGN
    seq: int
    tasks: tuple[RunOrder, ...] = ()
    kill: tuple[int, ...] = ()
    # Multi-node tasks: the other reserved nodes hold a whole node (and its GPUs) for the
    # head's task and run nothing; ``release`` ends the hold when the head's task ended.
    hold: tuple[RunOrder, ...] = ()
    release: tuple[int, ...] = ()
    # Answers to ADD_TASKS: (request id, the new tasks' ids, error message or "").
    added: tuple[tuple[int, tuple[int, ...], str], ...] = ()
    # Queued tasks to give back if they have not started (the leader moves them to idle
    # nodes when the pool is empty); answered by Report.returned.
    recall: tuple[int, ...] = ()


@_wire
@dataclass(frozen=True, slots=True)
class Drain:
    """Stop asking for work; finish (or cut off after ``grace_s``) what runs, then BYE."""

    TAG = Tag.DRAIN
    reason: str
    grace_s: float
    cut: bool = False  # True: cut running tasks off now (SIGTERM, SIGKILL after grace)


@_wire
@dataclass(frozen=True, slots=True)
class Bye:
    TAG = Tag.BYE
    rank: int
    report: Report


@_wire
@dataclass(frozen=True, slots=True)
class ErrorMsg:
    """A worker's unhandled error: where, what type, its message and the traceback text
    (exceptions themselves do not travel: they may not unpickle on the leader)."""

    TAG = Tag.ERROR
    rank: int
    host: str
    traceback: str
    report: Report | None = None
    exc_type: str = "Exception"  # the exception's qualified name
    message: str = ""  # str() of the exception


@_wire
@dataclass(frozen=True, slots=True)
class AddTasks:
    """Tasks a running task asked to add (``task_api``), as JSON-able dicts.

    ``parent`` is the asking task: ``parents`` may name it, and its own report cannot be
    written before these are (the leader writes them in its next flush, first).
    """

    TAG = Tag.ADD_TASKS
    rank: int
    parent: int
    tasks: tuple[dict[str, object], ...]
    req: int  # the worker's request id, echoed in Assign.added


Message = Hello | Report | Assign | Drain | Bye | ErrorMsg | AddTasks

TAG_TYPES: dict[Tag, type] = {
    Tag.HELLO: Hello, Tag.REPORT: Report, Tag.ASSIGN: Assign, Tag.DRAIN: Drain,
    Tag.BYE: Bye, Tag.ERROR: ErrorMsg, Tag.ADD_TASKS: AddTasks,
}


@dataclass(slots=True)
class Changes:
    """What a node accumulated between two reports (mutable, node-local)."""

    started: list[Started] = field(default_factory=list)
    finished: list[Finished] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.started or self.finished)

    def take(self) -> tuple[tuple[Started, ...], tuple[Finished, ...]]:
        started, finished = tuple(self.started), tuple(self.finished)
        self.started.clear()
        self.finished.clear()
        return started, finished
