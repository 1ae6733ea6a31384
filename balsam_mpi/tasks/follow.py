"""Following a task's output as it is written (``balsam-mpi task out --follow``).

What the files hold is printed first (its last lines, with ``--tail``), then what is
appended, read every ``POLL_S`` until the task has ended — learnt from the database's
notification of its end (``Client.wait``), which is also what paces the reads — and
what it wrote up to its end is read once more. The files are opened afresh for every
read, through the same checks as a single read (``outputs.opened``): a file swapped for a
link meanwhile is refused as it would be the first time. A task not started yet is
waited for. A file that shrank was cut by the launcher's output cap (to its head and
tail) and is followed from its new end; a later run's file (``task.1.out``) is followed
too, under a ``==> name <==`` line as ``tail -f`` marks a change of file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..base.errors import NotFound
from .waiting import WaitTimeout

if TYPE_CHECKING:
    from .client import Client

POLL_S = 0.5

Write = Callable[[Iterable[bytes]], None]
Note = Callable[[str], None]


class _Follower:
    def __init__(self, client: Client, task: Mapping[str, Any], stream: str,
                 tail_lines: int | None, write: Write, note: Note, step: str) -> None:
        self.client = client
        self.task = task
        self.stream = stream
        self.step = step
        self.tail_lines = tail_lines
        self.write = write
        self.note = note
        self.offsets: dict[str, int] = {}  # file name -> bytes printed so far
        self.current: str | None = None  # the file printed last
        self.waiting_said = False

    def read(self) -> None:
        """Print what was added to each file since the last read."""
        try:
            with self.client.outputs(self.task, self.stream, self.step) as files:
                for f in files:
                    self._one(f, several=len(files) > 1)
            self.tail_lines = None  # only what was there at first is cut to its last lines
        except NotFound as exc:
            if not self.waiting_said:
                self.note(f"(waiting for task {self.task['id']} to write: {exc})")
                self.waiting_said = True

    def _one(self, f: Any, *, several: bool) -> None:
        done = self.offsets.get(f.name)
        if done is not None and f.size < done:
            self.note(f"({f.name} was cut to its head and tail by the output cap; "
                      "following it from its new end)")
            self.offsets[f.name] = f.size
            return
        if done == f.size:
            return
        if several and self.current != f.name:
            gap = "" if self.current is None else "\n"
            self.write([f"{gap}==> {f.name} <==\n".encode()])
        self.current = f.name
        if done is None:
            self.write(f.chunks(self.tail_lines))
        else:
            self.write(f.chunks(start=done))
        self.offsets[f.name] = f.size

    def ended(self, wait_s: float) -> bool:
        """Whether the task has ended, waiting up to ``wait_s`` for its end."""
        try:
            self.client.wait([int(self.task["id"])], timeout=wait_s)
        except WaitTimeout:
            return False
        return True


def follow(client: Client, task: Mapping[str, Any], stream: str, tail_lines: int | None,
           write: Write, note: Note, poll_s: float = POLL_S, step: str = "task") -> None:
    """Print the task's output of ``stream`` (of ``step``) and what is appended until it
    has ended."""
    f = _Follower(client, task, stream, tail_lines, write, note, step)
    while True:
        f.read()
        if f.ended(poll_s):
            f.read()  # what it wrote up to its end
            return
