"""Waiting for tasks to end, without polling: Postgres LISTEN/NOTIFY (migration 0009).

Every statement that brings tasks to a final state (JOB_FINISHED, FAILED, USER_KILLED) —
a launcher's flush, a kill, the DAG failing descendants — notifies their ids on the
channel ``balsam_task_final`` when it commits; deleting a task that had not ended does
too. A waiter LISTENs first, *then* reads the states of the tasks it waits for (so one
that ends in between is not missed: its notification is already queued), then sleeps on
its connection's socket until a notification arrives, and reads the tasks it names
again. A notification is only a hint — any role may NOTIFY any channel with any text
(``pg_notify`` is revoked, the ``NOTIFY`` command has no privilege) — so what a waiter
returns is always what it read from the tasks table, and a payload is read defensively.

Each wait uses a connection of its own (kept for the next wait), so waits may nest and
the caller's own connection stays free; it stops listening when the wait ends, so an
idle client accumulates nothing. If the server goes away, the waiter reconnects with a
growing pause and reads every pending task again.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

from .. import sql
from ..base import db, values
from ..base.errors import BalsamError, InputError, NotFound, ServerError
from ..base.termtext import visible
from .states import FINAL, STOPPED

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

# The states a wait ends at: finished, failed or killed (only a retry leaves them).
ENDED = frozenset(s.value for s in FINAL | STOPPED)
_MAX_ID_DIGITS = 19  # bigint
# How often a waiter reads its pending tasks whatever it heard (Reread): one query of the
# pending ids per wait, a few times a minute.
REREAD_S = 15.0


class Outcome(NamedTuple):
    """How a task ended (or, in a timeout's ``pending``, where it is)."""

    id: int
    state: str
    result: Any  # a finished Python task's return value; otherwise None
    exit_code: int | None
    state_message: str
    output_tail: str

    @property
    def ok(self) -> bool:
        return self.state == "JOB_FINISHED"

    def value(self) -> Any:
        """The result of a finished task; raises :class:`TaskFailed` otherwise."""
        if self.ok:
            return self.result
        raise TaskFailed(self)


_TRACEBACK = "Traceback (most recent call last):"


def last_words(tail: str) -> str:
    """The line of an output tail that says why: after a Python traceback, the first line
    of its exception (``ValueError: …``; a message of many lines would otherwise show
    only its last); else the last line written. Lines are split at newlines alone, so a
    carriage return inside one does not hide what came before it."""
    lines = [ln for ln in tail.split("\n") if ln.strip()]
    if not lines:
        return ""
    start = next((i for i in range(len(lines) - 1, -1, -1)
                  if lines[i].startswith(_TRACEBACK)), None)
    if start is not None:
        # The frames are indented; the exception's own line is the first that is not.
        said = next((ln for ln in lines[start + 1:] if not ln[:1].isspace()), None)
        if said is not None:
            return said.strip()
    return lines[-1].strip()


def describe(o: Outcome) -> str:
    """One line: the task, its state, why, and the line of its output that says why.
    Spelled out (``termtext.visible``): the task's program wrote that line, and a
    TaskFailed is printed on the terminal of whoever waited, who may be another member."""
    why = f" ({o.state_message})" if o.state_message else ""
    said = last_words(o.output_tail)
    last = f": {said}" if said else ""
    return visible(f"task {o.id} {o.state}{why}{last}", newlines=False)


class TaskFailed(BalsamError):
    """A task ended FAILED or USER_KILLED; ``outcome`` has its message and output tail."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(describe(outcome))
        self.outcome = outcome


class WaitTimeout(BalsamError):
    """The timeout passed first; ``done`` ended meanwhile, ``pending`` had not."""

    exit_code = 3

    def __init__(self, timeout: float, done: list[Outcome], pending: list[Outcome]) -> None:
        where = ", ".join(f"task {o.id} {o.state}" for o in pending[:3])
        more = ", …" if len(pending) > 3 else ""
        super().__init__(f"timed out after {timeout:g} s: {len(pending)} of "
                         f"{len(done) + len(pending)} tasks have not ended ({where}{more})")
        self.done = done
        self.pending = pending


def parse_payload(payload: str) -> set[int]:
    """The ids a notification names; anything else in it is ignored (it is a hint).
    Any role that may connect may NOTIFY (the command has no privilege), so only ASCII
    digits count: ``str.isdigit`` also takes ``²`` and ``①``, which ``int`` refuses."""
    out: set[int] = set()
    for part in payload.split(","):
        if part.isascii() and part.isdigit() and len(part) <= _MAX_ID_DIGITS:
            out.add(int(part))
    return out


def as_id_list(ids: int | Iterable[int], *, once: bool = True) -> list[int]:
    """Ids in the caller's order (each once, unless not ``once``), checked as every other
    call of the client checks them (numpy integers taken; bool, text and ids past bigint
    refused)."""
    if isinstance(ids, (str, bytes)) or ids is None:
        raise InputError(f"ids: {ids!r} is not a task id")
    items = list(ids) if isinstance(ids, Iterable) else [ids]
    out: list[int] = []
    seen: set[int] = set()
    for raw in items:
        i = values.task_id("ids", raw)
        if i not in seen or not once:
            seen.add(i)
            out.append(i)
    return out


Connect = Callable[[], "psycopg.Connection[Any]"]


class Listener:
    """A connection that listens on the channel for as long as it is held."""

    def __init__(self, connect: Connect) -> None:
        self._connect = connect
        self.conn: psycopg.Connection[Any] | None = None
        self._pause = 0.0

    def open(self) -> psycopg.Connection[Any]:
        if self.conn is not None and not (self.conn.closed or self.conn.broken):
            try:
                with db.translated():
                    self.conn.execute(sql.query("tasks_final_listen"))
                return self.conn
            except ServerError:
                # Kept idle since the last wait, it cannot know that the server dropped
                # it (a restart, an idle timeout) until used: that is no outage, so a
                # new connection is tried at once.
                pass
        self.close()
        self.conn = self._connect()
        with db.translated():
            self.conn.execute(sql.query("tasks_final_listen"))
        return self.conn

    def release(self) -> None:
        """Stop listening and drop what arrived meanwhile (the connection is kept)."""
        conn = self.conn
        if conn is None or conn.closed or conn.broken:
            return
        try:
            conn.execute(sql.query("tasks_final_unlisten"))
            for _ in conn.notifies(timeout=0):
                pass
        except Exception:  # a broken connection is replaced at the next open
            self.close()

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None

    def read(self, ids: Iterable[int]) -> dict[int, Outcome]:
        assert self.conn is not None
        with db.translated():
            rows = self.conn.execute(sql.query("tasks_outcomes"),
                                     {"ids": list(ids)}).fetchall()
        return {int(r[0]): Outcome(int(r[0]), str(r[1]), r[2], r[3], str(r[4] or ""),
                                   str(r[5] or "")) for r in rows}

    def sleep(self, timeout: float | None) -> set[int] | None:
        """Ids named by the next notification(s); None when ``timeout`` passed first."""
        assert self.conn is not None
        got = False
        ids: set[int] = set()
        with db.translated():
            # Consumed whole: stopping a batch half way would drop the rest of it.
            for note in self.conn.notifies(timeout=timeout, stop_after=1):
                got = True
                ids |= parse_payload(note.payload)
        return ids if got else None

    def recover(self, exc: BaseException, deadline: float | None) -> None:
        """The server went away: reconnect (growing pauses) until it answers again."""
        self._pause = min(10.0, max(0.5, self._pause * 2))
        log.warning("waiting for tasks: %s; reconnecting in %.1f s", exc, self._pause)
        while True:
            if deadline is not None and time.monotonic() + self._pause > deadline:
                raise exc
            time.sleep(self._pause)
            try:
                self.close()
                self.open()
            except ServerError as again:
                exc = again
                self._pause = min(10.0, self._pause * 2)
                continue
            self._pause = 0.0
            return


class Reread:
    """When a waiter reads all its pending tasks again, notified or not: every
    ``REREAD_S``. A notification can be skipped (migration 0030: while the server's queue
    is crowded, ending a task does not notify), so no wait may depend on one alone."""

    def __init__(self) -> None:
        self.at = time.monotonic() + REREAD_S

    def left(self) -> float:
        return max(0.0, self.at - time.monotonic())

    def due(self, pending: set[int]) -> set[int]:
        """All of ``pending`` when the time has come (and the clock restarts), else none."""
        now = time.monotonic()
        if now < self.at:
            return set()
        self.at = now + REREAD_S
        return set(pending)


class Waiters:
    """The idle listening connections of one client (one per concurrent wait)."""

    def __init__(self, connect: Connect) -> None:
        self._connect = connect
        self._idle: list[Listener] = []

    @contextlib.contextmanager
    def listening(self, deadline: float | None = None) -> Iterator[Listener]:
        try:  # one pop, not a look then a pop: two threads may wait on one client
            listener = self._idle.pop()
        except IndexError:
            listener = Listener(self._connect)
        try:
            try:
                listener.open()
            except ServerError as exc:  # as anywhere in a wait: reconnect until it answers
                listener.recover(exc, deadline)
            yield listener
        finally:
            listener.release()
            self._idle.append(listener)

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


def as_completed(waiters: Waiters, ids: int | Iterable[int],
                 timeout: float | None = None) -> Iterator[Outcome]:
    """Each task's outcome as it ends (those already ended first, in the given order).
    As concurrent.futures.as_completed: the ids and timeout are checked at the call, and
    the timeout counts from it, not from the first next()."""
    wanted = as_id_list(ids)
    timeout = check_timeout(timeout)
    deadline = None if timeout is None else time.monotonic() + timeout
    return _completed(waiters, wanted, timeout, deadline)


def _completed(waiters: Waiters, wanted: list[int], timeout: float | None,
               deadline: float | None) -> Iterator[Outcome]:
    done: list[Outcome] = []
    with waiters.listening(deadline) as listener:
        first = _read_all(listener, wanted, deadline)
        missing = [i for i in wanted if i not in first]
        if missing:
            raise NotFound(f"no task with id {missing[0]}"
                           + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        pending = {i for i in wanted if first[i].state not in ENDED}
        for i in wanted:
            if i not in pending:
                done.append(first[i])
                yield first[i]
        reread = Reread()
        while pending:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                # With the deadline: past it, a server that is gone is the error (no
                # waiting for its return), as anywhere else in a wait with a timeout.
                now = _read_all(listener, pending, deadline)
                raise WaitTimeout(timeout or 0.0, done,
                                  [now[i] for i in sorted(pending) if i in now])
            try:
                nap = reread.left()
                hinted = listener.sleep(nap if left is None else min(left, nap))
                ask = reread.due(pending) or (hinted or set()) & pending
                if not ask:
                    continue  # the deadline is checked at the top
                now = listener.read(ask)
            except ServerError as exc:
                listener.recover(exc, deadline)
                ask, now = set(pending), _read_all(listener, pending, deadline)
            for i in sorted(ask):
                got = now.get(i)
                if got is None:
                    raise NotFound(f"task {i} was deleted while waiting for it")
                if got.state in ENDED:
                    pending.discard(i)
                    done.append(got)
                    yield got


def check_timeout(timeout: Any) -> float | None:
    """Seconds for a whole wait: None or infinity (no limit), else a finite number (0
    or less: the tasks are read once). NaN compares false with every clock reading, so a
    wait given it would neither time out nor sleep: refused, as text is."""
    if timeout is None or (isinstance(timeout, float) and timeout == math.inf):
        return None
    return max(0.0, values.number("timeout", timeout, -math.inf, math.inf))


def _read_all(listener: Listener, ids: Iterable[int],
              deadline: float | None) -> dict[int, Outcome]:
    ids = list(ids)
    while True:
        try:
            return listener.read(ids)
        except ServerError as exc:
            listener.recover(exc, deadline)


def wait(waiters: Waiters, ids: int | Iterable[int],
         timeout: float | None = None) -> list[Outcome]:
    """Every task's outcome, in the given order, once all have ended: one per id given,
    a repeated id's repeated, so that the list lines up with the ids (zip)."""
    given = as_id_list(ids, once=False)
    by_id = {o.id: o for o in as_completed(waiters, given, timeout)}
    return [by_id[i] for i in given]
