"""The one mpi4py wrapper of the loops: send, poll without spinning.

MPICH busy-waits inside every blocking call (recv, probe, barrier, wait): a rank waiting
that way burns a whole core, which tasks on the same node need. So nothing here blocks:
receiving is ``iprobe`` + ``improbe`` + ``Message.recv`` (a plain ``irecv`` without a buffer
truncates large messages), and sends are ``isend`` whose requests are tested later.
Waiting is the caller's business, through ``pacing.Backoff``.

With this MPICH the first ``iprobe`` after a message arrives often reports nothing and the
second finds it, so :meth:`Comm.poll` probes twice before giving up.
"""

from __future__ import annotations

import time
from typing import Any, cast

from ..base.pacing import Backoff
from ..protocol import TAG_TYPES, Message, ProtocolError


def decode(sender: int, tag: int, obj: object) -> Message:
    """A received object as the message its tag says, or ProtocolError naming both."""
    expected = TAG_TYPES.get(tag)  # type: ignore[call-overload]
    if expected is None:
        raise ProtocolError(f"rank {sender} sent a message with tag {tag}, which is not a "
                            "balsam_mpi launcher message (known tags: "
                            f"{', '.join(str(int(t)) for t in TAG_TYPES)})")
    if not isinstance(obj, expected):
        raise ProtocolError(f"rank {sender} sent tag {tag} ({expected.__name__}) with a "
                            f"{type(obj).__name__}")
    return cast(Message, obj)


class Comm:
    """Typed, non-blocking messaging over an mpi4py communicator."""

    def __init__(self, mpi_comm: Any) -> None:
        from mpi4py import MPI

        self._mpi = MPI
        self.comm = mpi_comm
        self.rank: int = mpi_comm.Get_rank()
        self.size: int = mpi_comm.Get_size()
        self._status = MPI.Status()
        self._pending: list[Any] = []

    def send(self, dest: int, msg: Message) -> None:
        """Queue ``msg`` for ``dest``; never waits for the receiver."""
        req = self.comm.isend(msg, dest=dest, tag=int(msg.TAG))
        if not req.Test():
            self._pending.append(req)
        if len(self._pending) > 64:
            self.progress()

    def progress(self) -> None:
        """Let finished sends go (tests each request once; never waits)."""
        if self._pending:
            self._pending = [r for r in self._pending if not r.Test()]

    @property
    def sending(self) -> bool:
        return bool(self._pending)

    def poll(self, source: int | None = None) -> tuple[int, Message] | None:
        """One received message as (source, message), or None; probes twice, never waits."""
        mpi = self._mpi
        src = mpi.ANY_SOURCE if source is None else source
        for _ in range(2):
            if self.comm.iprobe(source=src, tag=mpi.ANY_TAG, status=self._status):
                message = self.comm.improbe(source=src, tag=mpi.ANY_TAG, status=self._status)
                if message is None:  # pragma: no cover - taken between the two probes
                    continue
                sender = self._status.Get_source()
                tag = self._status.Get_tag()
                return sender, decode(sender, tag, message.recv())
        return None

    def flush_sends(self, timeout: float = 5.0) -> bool:
        """Wait (sleeping, not spinning) until queued sends completed; False on timeout."""
        deadline = time.monotonic() + timeout
        backoff = Backoff(0.0002, 0.01)
        while self._pending and time.monotonic() < deadline:
            self.progress()
            if self._pending:
                backoff.sleep()
        return not self._pending
