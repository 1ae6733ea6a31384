"""Where the leader's database calls run: a thread per connection, in order, heartbeats
first.

The leader's loop must keep answering its workers while Postgres works, so every store
call runs on a :class:`DbThread`, one at a time and in submission order; ``urgent`` calls
(heartbeats) go ahead of what waits, so a backlog of flushes never lets the lease run
out. Claims have a thread and a connection of their own (``claim_connection``, on), so
a claim and a flush run side by side (launcher/calls.py says what that changes). A finished call
wakes the leader's ``epoll`` through an eventfd. Before each call a broken connection is
replaced (``StorePort.reconnect``, which raises while the server is away, so the call
fails fast and its caller's backoff decides when to try again).

:class:`Inline` runs the same calls on the caller's thread, at once: for unit tests (a
deterministic leader over the in-memory store) and anything that must not start a thread.

The thread never calls MPI (the launcher asks MPI for ``funneled``: launcher/launch.py).
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from types import TracebackType
from typing import Any, Protocol, TypeVar

from .storeport import StorePort

T = TypeVar("T")
_Call = tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class Runner(Protocol):
    """What runs the leader's database calls (:class:`DbThread`, :class:`Inline`)."""

    wake_fd: int  # readable when a call finished; -1: none (calls finish at once)

    def submit(self, fn: Callable[..., T], *args: Any, urgent: bool = False,
               **kwargs: Any) -> Future[T]: ...


def _call(store: StorePort, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    if store.broken:
        store.reconnect()  # raises while the server is away
    return fn(*args, **kwargs)


class DbThread:
    """``wake_fd``: another thread's, shared (not closed here), so that one ``epoll``
    entry wakes the leader for either (the claims' connection: ``launcher/calls.py``)."""

    def __init__(self, store: StorePort, *, wake_fd: int | None = None,
                 name: str = "balsam-db") -> None:
        self.store = store
        self._own_fd = wake_fd is None
        self.wake_fd = (os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) if wake_fd is None
                        else wake_fd)
        self._queue: deque[_Call] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def __enter__(self) -> DbThread:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def submit(self, fn: Callable[..., T], *args: Any, urgent: bool = False,
               **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        future.add_done_callback(self._wake)
        with self._cond:
            if self._closed:
                raise RuntimeError("the database thread is closed")
            item: _Call = (future, fn, args, kwargs)
            if urgent:
                self._queue.appendleft(item)
            else:
                self._queue.append(item)
            self._cond.notify()
        return future

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or bool(self._queue))
                if not self._queue:
                    return
                future, fn, args, kwargs = self._queue.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = _call(self.store, fn, *args, **kwargs)
            except BaseException as exc:  # handed to whoever waits on the future
                future.set_exception(exc)
            else:
                future.set_result(result)

    def _wake(self, _future: Future[Any]) -> None:
        try:
            os.eventfd_write(self.wake_fd, 1)
        except OSError:
            pass  # closed at shutdown

    def close(self) -> None:
        """Finish what was submitted, then stop the thread (idempotent)."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify()
        self._thread.join()
        if self._own_fd:
            os.close(self.wake_fd)


class Inline:
    """Runs each call at once, on the caller's thread; its future is done on return."""

    wake_fd = -1

    def __init__(self, store: StorePort) -> None:
        self.store = store

    def submit(self, fn: Callable[..., T], *args: Any, urgent: bool = False,
               **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(_call(self.store, fn, *args, **kwargs))
        except Exception as exc:  # the caller takes it from the future
            future.set_exception(exc)
        return future
