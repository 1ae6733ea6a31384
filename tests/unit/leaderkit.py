"""A leader over the in-memory store, for unit tests: no Postgres (``MemStore``), no MPI (a
fake comm whose workers the test scripts), no task processes (``NullNode``: a task ends
the moment it starts), database calls run at once on the test's thread (``Inline``)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from balsam_mpi.base.project import Project
from balsam_mpi.launcher.calls import Calls
from balsam_mpi.launcher.config import Settings
from balsam_mpi.launcher.dbthread import Inline
from balsam_mpi.launcher.memstore import MemStore
from balsam_mpi.launcher.storeport import ClaimFilter, Lease
from balsam_mpi.leader import Leader
from balsam_mpi.node.node import Node
from balsam_mpi.node.nullnode import NullNode
from balsam_mpi.protocol import (
    Assign,
    Bye,
    Drain,
    EndKind,
    Finished,
    Hello,
    Message,
    Report,
    RunOrder,
    Started,
)

# Fast and deterministic: exit at once when idle, flush every turn.
FAST = dict(idle_timeout_s=0.0, flush_interval_s=0.0, claim_idle_s=0.02, heartbeat_s=0.05,
            expire_check_s=0.05, kill_poll_s=0.01, report_interval_s=0.05)


class FakeComm:
    """Rank 0's side of MPI: what the leader sent, and what it has yet to receive."""

    def __init__(self, size: int) -> None:
        self.rank = 0
        self.size = size
        self.inbox: deque[tuple[int, Message]] = deque()
        self.sent: list[tuple[int, Any]] = []
        self.left: set[int] = set()  # ranks that exited: a send to them fails (MPI's OFI)
        self.gone: dict[int, str] = {}  # as launcher/comm.py records such a failure
        self.failed: list[tuple[int, Any]] = []  # what could not be sent

    def send(self, dest: int, msg: Any) -> bool:
        if dest in self.left or dest in self.gone:
            self.gone.setdefault(dest, "OFI call tinjectdata failed")
            self.failed.append((dest, msg))
            return False
        self.sent.append((dest, msg))
        return True

    def poll(self, source: int | None = None) -> tuple[int, Message] | None:
        return self.inbox.popleft() if self.inbox else None

    def progress(self) -> None:
        pass

    def to(self, rank: int, kind: type | None = None) -> list[Any]:
        return [m for r, m in self.sent if r == rank and (kind is None or isinstance(m, kind))]


class FakeWorker:
    """A worker rank the test drives: HELLO, then each ASSIGN is answered with a REPORT
    that starts its tasks (and ends them too, if ``finish``) and ends the killed ones;
    a DRAIN is answered by cutting what runs and saying BYE."""

    def __init__(self, comm: FakeComm, rank: int, finish: bool = True) -> None:
        self.comm = comm
        self.rank = rank
        self.finish = finish
        self.seen = 0  # ASSIGNs taken from comm.sent
        self.running: dict[int, RunOrder] = {}
        self.killed: list[int] = []  # ids the leader told it to stop
        self.silent = False  # frozen: answers nothing
        self.gone = False  # said BYE
        comm.inbox.append((rank, Hello(rank=rank, host=f"h{rank}", pid=1, cores=1, gpus=0)))

    def answer(self) -> None:
        if self.silent or self.gone:
            return
        now = time.time()
        if self.comm.to(self.rank, Drain):
            cut = tuple(Finished(o.id, o.epoch, int(EndKind.CUT), -15, now, now)
                        for o in self.running.values())
            self.running.clear()
            self.comm.inbox.append((self.rank, Bye(self.rank, self._report(0, (), cut))))
            self.gone = True
            return
        assigns = self.comm.to(self.rank, Assign)
        new, self.seen = assigns[self.seen:], len(assigns)
        if not new:
            return
        started = tuple(Started(o.id, o.epoch, now) for a in new for o in a.tasks)
        for a in new:
            self.running.update((o.id, o) for o in a.tasks)
        ended = [Finished(i, o.epoch, int(EndKind.KILLED), -15, now, now)
                 for a in new for i in a.kill if (o := self.running.pop(i, None))]
        self.killed += [i for a in new for i in a.kill]
        if self.finish:
            ended += [Finished(o.id, o.epoch, 0, 0, now, now) for o in self.running.values()]
            self.running.clear()
        self.comm.inbox.append((self.rank, self._report(new[-1].seq, started, tuple(ended))))

    def leave(self) -> None:
        """Drain on its own (a signal of its own): cut what runs, REPORT it, say BYE and
        exit, so that whatever the leader sends it afterwards fails."""
        now = time.time()
        cut = tuple(Finished(o.id, o.epoch, int(EndKind.CUT), -15, now, now)
                    for o in self.running.values())
        self.running.clear()
        self.comm.inbox.append((self.rank, self._report(0, (), cut)))
        self.comm.inbox.append((self.rank, Bye(self.rank, self._report(0, (), ()))))
        self.gone = True
        self.comm.left.add(self.rank)

    def end(self, *ends: Finished) -> None:
        """Report these ends (of tasks it runs) in its next REPORT."""
        for f in ends:
            self.running.pop(f.id, None)
        self.comm.inbox.append((self.rank, self._report(0, (), ends)))

    def end_all(self, kind: EndKind = EndKind.DONE, rc: int = 0) -> list[int]:
        ids = list(self.running)
        now = time.time()
        self.end(*(Finished(o.id, o.epoch, int(kind), rc, now, now)
                   for o in self.running.values()))
        return ids

    def _report(self, acked: int, started: tuple[Started, ...],
                finished: tuple[Finished, ...]) -> Report:
        return Report(rank=self.rank, acked=acked, free=1.0 - len(self.running) / 4,
                      running=len(self.running), queued=0, started=started,
                      finished=finished)


@dataclass
class Kit:
    store: MemStore
    calls: Calls
    lease: Lease
    node: Node
    comm: FakeComm | None
    leader: Leader
    workers: list[FakeWorker]

    def turns(self, until: Callable[[], bool], limit_s: float = 20.0) -> None:
        """Turn the leader's loop (workers answering) until ``until()``."""
        deadline = time.monotonic() + limit_s
        while not until():
            assert time.monotonic() < deadline, "the leader never got there"
            for w in self.workers:
                w.answer()
            if not self.leader.turn():
                time.sleep(0.001)

    def run(self, limit_s: float = 20.0) -> str:
        self.turns(lambda: self.leader.ended is not None, limit_s)
        assert self.leader.ended is not None
        return self.leader.ended

    def states(self) -> dict[int, str]:
        return {i: t.state for i, t in self.store.tasks.items()}


def make(tmp_path: Path, tasks: int = 0, *, workers: int = 0, node: Node | None = None,
         store: MemStore | None = None, finish: bool = True, deadline: float | None = None,
         adopt: int | None = None, **settings: Any) -> Kit:
    store = store or MemStore()
    if "a" not in store.apps:
        store.add_app("a")
    if tasks:
        store.add_tasks([{"app": "a", "name": f"t{i}"} for i in range(tasks)])
    lease = store.open_job(job_id=adopt, scheduler="local", scheduler_job_id=None, host="h",
                           nodes=workers + 1, ranks=workers + 1, filters=ClaimFilter(),
                           wall_time_min=None, lease_sec=settings.get("lease_s", 60.0))
    calls = Calls(Inline(store))
    node = node or NullNode(die_with_parent=False)
    comm = FakeComm(workers + 1) if workers else None
    leader = Leader(Settings(**{**FAST, **settings}), comm, Project(tmp_path), store, calls,
                    lease, node, deadline=deadline)  # type: ignore[arg-type]
    if leader.claims.preference is not None:  # its first read, as the first turn does
        leader.claims.preference.step()
        calls.collect()
    fakes = [FakeWorker(comm, r, finish) for r in range(1, workers + 1)] if comm else []
    return Kit(store, calls, lease, node, comm, leader, fakes)
