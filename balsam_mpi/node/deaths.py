"""The end of a batch job, seen from one node: a death by a signal waits for the stop.

From the node's stop (``Node.begin_stop``) on, a task that dies of a signal is *cut*
(requeued without spending a retry), not failed. But a scheduler signals every process of
the job at once and in any order, tasks included, so a task may die before this rank's
own signal arrives. A death by a signal is therefore *held* for ``signal_hold_s`` (its
slot stays taken) before it counts as an error, and becomes a cut if the stop comes
within the hold.
"""

from __future__ import annotations

import signal
import time
from typing import NamedTuple

from ..protocol import EndKind
from .runner import TaskProcess


def died_of_signal(rc: int) -> bool:
    """A negative exit code is a death by that signal; 129-192 is how a shell reports
    one of its children's (128 + the signal's number)."""
    return rc < 0 or 128 < rc <= 192


class Death(NamedTuple):
    proc: TaskProcess
    rc: int
    ended: float  # epoch seconds


class HeldDeaths:
    def __init__(self, hold_s: float) -> None:
        self.hold_s = hold_s
        self._held: list[tuple[float, Death]] = []  # (monotonic end of the hold, death)

    def __bool__(self) -> bool:
        return bool(self._held)

    def hold(self, death: Death) -> None:
        self._held.append((time.monotonic() + self.hold_s, death))

    def settle(self, cutting: bool) -> list[Death]:
        """The deaths decided now: all of them, as cuts, once the job is ending; else
        those whose hold is over (they stand as the errors they were)."""
        now = time.monotonic()
        decided = [d for until, d in self._held if cutting or now >= until]
        self._held = [(until, d) for until, d in self._held
                      if not (cutting or now >= until)]
        if cutting:
            for d in decided:
                d.proc.end_kind = EndKind.CUT
        return decided


def signal_name(signum: int) -> str:
    """``SIGHUP`` for 1; a number no signal has is named as such."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def signal_note(tail: str, signum: int) -> str:
    """The tail of a task that a signal ended, which the launcher did not send (its own
    kills end as KILLED, TIMEOUT or CUT), with a last line naming it: the record's
    "exit code -1" said nothing of `scancel --signal=HUP`, or "-9" of the OOM killer."""
    name = signal_name(signum)
    why = (": the kernel's out-of-memory killer sends it, as does kill -9"
           if signum == signal.SIGKILL else "")
    note = (f"[balsam-mpi: the task was ended by signal {signum} ({name}), which this "
            f"launcher did not send{why}]")
    return f"{tail}\n{note}" if tail and not tail.endswith("\n") else tail + note
