"""Worker ranks that leave the run: the leader's account of who said BYE, who stopped
answering and who can no longer be reached.

* **BYE**: the normal end of a worker (after a DRAIN, or its own signal); its last REPORT
  rides in the BYE. What it was sent and never started (dropped by its stop, or still on
  its way) goes back to the pool then: a worker that left on its own while the leader
  goes on (it cut its tasks when the leader was silent, as when Slurm suspends and
  resumes the whole job) is sent nothing more, so no failed send would ever tell.
* **Stopped answering** (``liveness.py``): silent past the worker timeout, a cut-off
  drain not finished in time, or never joined.
* **Cannot be reached**: a send to it failed (``comm.py`` records it in ``Comm.gone``).
  One that had said BYE first left before the leader's last word — a worker that drained
  on its own signal (srun hands a job's warning signal to every rank) exits while the
  leader answers its last REPORT; over MPICH's OFI module that answer fails. Its tasks
  are accounted for, and whatever it never received goes back to the pool. One that had
  not said BYE has died — but its BYE may still be among the messages unread (they come
  in order), so it is declared dead only ``GONE_GRACE_S`` after the failed send.

A rank declared dead is buried (``Dispatcher.bury``): what it had started is written as
lost (counted, like a lost lease), what it had not goes to other nodes, and the drain
stops waiting for its BYE.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from ..base.cleantext import one_line
from ..base.pacing import Periodic
from ..protocol import EndKind, Finished
from .dispatch import Dispatcher
from .liveness import WorkerWatch
from .reports import ReportBuffer

log = logging.getLogger(__name__)

# A send that could not reach a worker which has not said BYE: the BYE may be behind the
# messages still unread (they are read in order), so it is declared dead only after this.
GONE_GRACE_S = 1.0


class Departures:
    def __init__(self, expected: int, dispatch: Dispatcher, buffer: ReportBuffer,
                 epoch: int, *, worker_timeout_s: float, report_interval_s: float,
                 on_lost: Callable[[], None]) -> None:
        self.expected = expected
        self.dispatch = dispatch
        self.buffer = buffer
        self.epoch = epoch
        self.on_lost = on_lost  # tasks were written as lost: the run is not idle
        self.liveness = WorkerWatch(expected, worker_timeout_s)
        # A few times a second is plenty (the timeout is several report intervals), and
        # keeps a pass over thousands of ranks out of every turn of the loop.
        self.checks = Periodic(min(0.25, report_interval_s / 2), now=True)
        self.byes: set[int] = set()  # said BYE, or will not be waited for
        self.dead: set[int] = set()  # declared dead: not listened to
        self.left: set[int] = set()  # unreachable after their BYE: nothing more to do
        self.gone_since: dict[int, float] = {}  # when a send first failed to reach them

    @property
    def none_awaited(self) -> bool:
        """No BYE is awaited any more: every worker said it or was declared dead."""
        return len(self.byes) >= self.expected

    def said_bye(self, rank: int) -> None:
        """A worker's BYE, its last REPORT already absorbed: what it never started goes
        back to the pool for the other nodes (or the close releases it)."""
        self.byes.add(rank)
        if rank in self.dead:
            return
        lost, requeued = self._write_lost(rank, f"worker rank {rank} had left")
        if requeued:
            log.info("worker rank %s on %s said BYE: %s task(s) it never started went back "
                     "to the pool", rank, self._host(rank), requeued)
        if lost:  # not expected: a BYE carries every end first
            log.error("worker rank %s left %s started task(s) unreported: written as lost",
                      rank, len(lost))

    def check(self, gone: Mapping[int, str]) -> None:
        """One pass, each turn of the loop: the unreachable now, the silent when due."""
        if gone:
            self._check_gone(gone)
        if self.expected and self.checks.due():
            for rank, why in self.liveness.check(self.byes):
                self._bury(rank, f"worker rank {rank} on {self._host(rank)} stopped "
                                 f"answering ({why})")

    def _check_gone(self, gone: Mapping[int, str]) -> None:
        now = time.monotonic()
        for rank, why in gone.items():
            if rank in self.dead or rank in self.left:
                continue
            first = self.gone_since.setdefault(rank, now)
            if rank in self.byes:
                self.left.add(rank)
                lost, requeued = self._write_lost(rank, f"worker rank {rank} had left")
                # What it never started went back at its BYE (said_bye); this finds
                # more only if something was placed on it after.
                log.info("worker rank %s on %s had left (BYE) before a message reached it "
                         "(%s)%s", rank, self._host(rank), why,
                         f"; {requeued} more task(s) went back to the pool" if requeued
                         else "")
                if lost:
                    log.error("worker rank %s left %s started task(s) unreported: written "
                              "as lost", rank, len(lost))
            elif now - first >= GONE_GRACE_S:
                self._bury(rank, f"worker rank {rank} on {self._host(rank)} cannot be "
                                 f"reached ({why})")

    def _host(self, rank: int) -> str:
        view = self.dispatch.workers.get(rank)
        return view.host if view is not None and view.host else "?"

    def _bury(self, rank: int, reason: str) -> None:
        self.dead.add(rank)
        self.byes.add(rank)
        lost, requeued = self._write_lost(rank, reason)
        log.error("%s: declared dead; %s running task(s) written as lost, %s queued "
                  "one(s) handed to other nodes", reason, len(lost), requeued)

    def _write_lost(self, rank: int, reason: str) -> tuple[list[int], int]:
        lost, requeued = self.dispatch.bury(rank, reason)
        t = time.time()
        self.buffer.add((), [Finished(i, self.epoch, int(EndKind.LOST), -1, t, t,
                                      one_line(reason)) for i in lost])
        if lost:
            self.on_lost()
        return lost, requeued
