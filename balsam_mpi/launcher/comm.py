"""The one mpi4py wrapper of the loops: send, poll without spinning.

MPICH busy-waits inside every blocking call (recv, probe, barrier, wait): a rank waiting
that way burns a whole core, which tasks on the same node need. So nothing here blocks:
receiving is ``iprobe`` + ``improbe`` + ``Message.recv`` (a plain ``irecv`` without a buffer
truncates large messages), and sends are ``isend`` whose requests are tested later.
Waiting is the caller's business, through ``pacing.Backoff``.

With this MPICH the first ``iprobe`` after a message arrives often reports nothing and the
second finds it, so :meth:`Comm.poll` probes twice before giving up.

A rank may leave while a message to it is on its way: a worker that drained on its own
signal (srun passes a job's warning signal to every rank of the step) says BYE and exits
before the leader's answer to its last REPORT. Over shared memory such a send succeeds
unread; over MPICH's OFI module (a multi-node srun step: ``netmod.py``) it fails, and the
error used to kill the leader. A failed send is not this rank's fault, so it is not
raised: the destination goes into :attr:`Comm.gone` with MPI's reason, nothing more is
sent to it, and the owner of the loop decides what a missing peer means (the leader:
``launcher/departures.py``; a worker whose leader is gone stops).
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


def mpi_reason(exc: BaseException) -> str:
    """One line from an MPI error: the innermost line of MPICH's error stack that says
    something (``OFI call tinjectdata failed (…)``), else the first line."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if len(lines) == 1:
        return lines[0][:300]
    said = [ln.split(":", 1)[1].strip() for ln in lines if ":" in ln
            and ln.split(":", 1)[1].strip()]
    return (said[-1] if said else lines[0] if lines else type(exc).__name__)[:300]


class Comm:
    """Typed, non-blocking messaging over an mpi4py communicator."""

    def __init__(self, mpi_comm: Any) -> None:
        from mpi4py import MPI

        self._mpi = MPI
        self.comm = mpi_comm
        self.rank: int = mpi_comm.Get_rank()
        self.size: int = mpi_comm.Get_size()
        self._status = MPI.Status()
        self._pending: list[tuple[int, Any]] = []  # (destination, request)
        self.gone: dict[int, str] = {}  # ranks a send could not reach: MPI's reason

    def send(self, dest: int, msg: Message) -> bool:
        """Queue ``msg`` for ``dest``; never waits for the receiver. False if ``dest``
        cannot be reached (it is then in :attr:`gone`; see the module)."""
        if dest in self.gone:
            return False
        try:
            req = self.comm.isend(msg, dest=dest, tag=int(msg.TAG))
            done = req.Test()
        except self._mpi.Exception as exc:
            self._lost(dest, exc)
            return False
        if not done:
            self._pending.append((dest, req))
        if len(self._pending) > 64:
            self.progress()
        return True

    def progress(self) -> None:
        """Let finished sends go (tests each request once; never waits)."""
        if self._pending:
            self._pending = [(dest, req) for dest, req in self._pending
                             if not self._done(dest, req)]

    def _done(self, dest: int, req: Any) -> bool:
        try:
            return bool(req.Test())
        except self._mpi.Exception as exc:
            self._lost(dest, exc)
            return True

    def _lost(self, dest: int, exc: BaseException) -> None:
        self.gone.setdefault(dest, mpi_reason(exc))

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
