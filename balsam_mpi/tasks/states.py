"""Task states and their legal transitions: the one table everything else consults.

The names are Balsam's on purpose (docs/architecture.md §4). JOB_FINISHED is final; FAILED and
USER_KILLED leave only through an explicit retry (to READY, or AWAITING_PARENTS when the
task still has unfinished parents).
"""

from __future__ import annotations

from enum import Enum

from ..base.errors import InputError


# Not StrEnum: its str() is the bare value, where code and messages print this one's.
class TaskState(str, Enum):  # noqa: UP042
    CREATED = "CREATED"
    AWAITING_PARENTS = "AWAITING_PARENTS"
    READY = "READY"
    PREPROCESSED = "PREPROCESSED"
    RUNNING = "RUNNING"
    RUN_DONE = "RUN_DONE"
    POSTPROCESSED = "POSTPROCESSED"
    JOB_FINISHED = "JOB_FINISHED"
    RUN_ERROR = "RUN_ERROR"
    RUN_TIMEOUT = "RUN_TIMEOUT"
    RESTART_READY = "RESTART_READY"
    FAILED = "FAILED"
    USER_KILLED = "USER_KILLED"

    def __str__(self) -> str:
        return self.value


S = TaskState

# from-state -> the states it may move to. Retry is the only way out of FAILED and
# USER_KILLED; nothing leaves JOB_FINISHED.
TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    S.CREATED: frozenset({S.AWAITING_PARENTS, S.READY, S.USER_KILLED, S.FAILED}),
    S.AWAITING_PARENTS: frozenset({S.READY, S.FAILED, S.USER_KILLED}),
    S.READY: frozenset({S.PREPROCESSED, S.RUNNING, S.AWAITING_PARENTS, S.FAILED,
                        S.USER_KILLED}),
    S.PREPROCESSED: frozenset({S.RUNNING, S.READY, S.FAILED, S.USER_KILLED}),
    S.RUNNING: frozenset({S.RUN_DONE, S.RUN_ERROR, S.RUN_TIMEOUT, S.RESTART_READY, S.READY,
                          S.FAILED, S.USER_KILLED}),
    S.RUN_DONE: frozenset({S.POSTPROCESSED, S.JOB_FINISHED, S.FAILED, S.USER_KILLED}),
    S.POSTPROCESSED: frozenset({S.JOB_FINISHED, S.FAILED, S.USER_KILLED}),
    S.RUN_ERROR: frozenset({S.RESTART_READY, S.POSTPROCESSED, S.FAILED, S.USER_KILLED}),
    S.RUN_TIMEOUT: frozenset({S.RESTART_READY, S.POSTPROCESSED, S.FAILED, S.USER_KILLED}),
    # RESTART_READY -> RUN_*: a run that ended well while its batch job was cut off from
    # the database, written from that job's journal after the lease sweep requeued it.
    S.RESTART_READY: frozenset({S.PREPROCESSED, S.RUNNING, S.READY, S.FAILED,
                                S.USER_KILLED, S.RUN_DONE, S.RUN_ERROR, S.RUN_TIMEOUT}),
    S.JOB_FINISHED: frozenset(),
    S.FAILED: frozenset({S.READY, S.AWAITING_PARENTS}),  # retry only
    S.USER_KILLED: frozenset({S.READY, S.AWAITING_PARENTS}),  # retry only
}

RUNNABLE = frozenset({S.READY, S.RESTART_READY})
ACTIVE = frozenset({S.PREPROCESSED, S.RUNNING})  # claimed and on a node
FINAL = frozenset({S.JOB_FINISHED})
STOPPED = frozenset({S.FAILED, S.USER_KILLED})  # leave only through retry
KILLABLE = frozenset(TRANSITIONS) - FINAL - STOPPED


def can_move(src: TaskState, dst: TaskState) -> bool:
    return dst in TRANSITIONS[src]


class UnknownState(InputError, ValueError):
    """A state name that is not one of TaskState's."""


def parse_state(text: str) -> TaskState:
    """A state from user input, case-insensitive; the error lists the valid names."""
    if isinstance(text, TaskState):
        return text
    try:
        return TaskState(text.strip().upper()) if isinstance(text, str) and len(text) < 40 \
            else TaskState(None)
    except ValueError:
        names = ", ".join(s.value for s in TaskState)
        shown = repr(text) if len(repr(text)) <= 60 else repr(text)[:59] + "…"
        raise UnknownState(f"state: unknown state {shown}; use one of {names}") from None
