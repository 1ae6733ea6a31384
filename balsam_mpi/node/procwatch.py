"""What a node sleeps on: one ``epoll`` over its tasks' pidfds and a few other descriptors.

A task's end makes its pidfd readable, so a node can sleep as long as it likes and still
wake the instant one ends. Beside the pidfds the set holds the task_api socket (a running
task asks to add tasks) and, on the leader, the database thread's eventfd (a call
finished). Waiting never spins: a wait shorter than epoll's millisecond still sleeps.
"""

from __future__ import annotations

import os
import select
import time
from types import TracebackType

from . import pidfds


class ProcWatch:
    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._tasks: dict[int, int] = {}  # pidfd -> task id
        self._wake_fds: set[int] = set()  # eventfds: drained when they fire
        self._others: set[int] = set()  # readable means "look": the caller reads them
        # Without pidfds, their stand-ins' news (pidfds, exitnotes): serviced on waking.
        self._notes = pidfds.stand_ins()
        if self._notes is not None:
            self._epoll.register(self._notes.fileno(), select.EPOLLIN)

    def __enter__(self) -> ProcWatch:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def add_task(self, pidfd: int, task_id: int) -> None:
        self._tasks[pidfd] = task_id
        self._epoll.register(pidfd, select.EPOLLIN)

    def remove_task(self, pidfd: int) -> None:
        self._epoll.unregister(pidfd)
        del self._tasks[pidfd]

    def watch(self, fd: int) -> None:
        """Also wake when ``fd`` is readable (the task_api socket)."""
        self._others.add(fd)
        self._epoll.register(fd, select.EPOLLIN)

    def wake_on(self, fd: int) -> None:
        """Also wake when the eventfd ``fd`` is signalled (and reset it)."""
        self._wake_fds.add(fd)
        self._epoll.register(fd, select.EPOLLIN)

    def wait(self, timeout: float) -> tuple[list[int], bool]:
        """Sleep up to ``timeout`` s: (ids of tasks whose process ended, whether anything
        at all woke it)."""
        # epoll's resolution is 1 ms; round up so a short wait still sleeps, never spins.
        ms = 0 if timeout <= 0 else max(1, int(timeout * 1000 + 0.999))
        if not self._tasks and not self._wake_fds and not self._others:
            if ms:
                time.sleep(ms / 1000.0)
            return [], False
        ended: list[int] = []
        events = self._epoll.poll(ms / 1000.0 if ms else 0)
        if self._notes is not None and any(fd == self._notes.fileno() for fd, _ in events):
            self._notes.service()  # closes the stand-ins of what ended: readable now
            seen = {fd for fd, _ in events}
            events += [e for e in self._epoll.poll(0) if e[0] not in seen]
        for fd, _mask in events:
            task_id = self._tasks.get(fd)
            if task_id is not None:
                ended.append(task_id)
            elif fd in self._wake_fds:
                try:
                    os.eventfd_read(fd)
                except BlockingIOError:
                    pass
        return ended, bool(events)

    def close(self) -> None:
        self._epoll.close()
