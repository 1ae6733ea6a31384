"""Which worker ranks still answer (the leader's side; workers report at least every
``report_interval_s``, so their reports are their heartbeat).

A rank is declared dead when nothing has come from it for ``timeout_s`` (several report
intervals), when a cut-off drain has waited for its BYE longer than the kill grace plus
that timeout, or when it never said HELLO within a start-up grace. A frozen rank
(SIGSTOP, a hung node) can then no longer hold up the leader: its running tasks are
written as lost (counted, like a lost lease), what it had not started goes to other
nodes, and a drain ends without its BYE.

The leader's own loop may stall too (a long call, a busy host): the time it was away is
not held against the workers, since their messages were waiting unread.
"""

from __future__ import annotations

import time


class WorkerWatch:
    def __init__(self, expected: int, timeout_s: float, startup_s: float = 300.0) -> None:
        self.expected = expected  # worker ranks: 1 .. expected
        self.timeout_s = timeout_s
        self.startup_s = max(startup_s, 3 * timeout_s)
        self.began = time.monotonic()
        self.last_tick = self.began
        self.heard: dict[int, float] = {}
        self.dead: set[int] = set()
        self.drain_deadline: float | None = None

    def heard_from(self, rank: int, now: float | None = None) -> None:
        self.heard[rank] = time.monotonic() if now is None else now

    def drain_started(self, bound_s: float, now: float | None = None) -> None:
        """A cut-off drain: every rank should say BYE within ``bound_s`` + the timeout."""
        now = time.monotonic() if now is None else now
        if self.drain_deadline is None:
            self.drain_deadline = now + bound_s + self.timeout_s

    def check(self, done: set[int], now: float | None = None) -> list[tuple[int, str]]:
        """Ranks newly found dead, with why; ``done`` are the ranks that said BYE."""
        now = time.monotonic() if now is None else now
        away = now - self.last_tick
        self.last_tick = now
        if away > self.timeout_s / 2:  # this loop was away: their messages were waiting
            for rank in self.heard:
                self.heard[rank] += away
            self.began += away
            if self.drain_deadline is not None:
                self.drain_deadline += away
        found: list[tuple[int, str]] = []
        for rank in range(1, self.expected + 1):
            if rank in self.dead or rank in done:
                continue
            last = self.heard.get(rank)
            if last is None:
                if now - self.began > self.startup_s:
                    found.append((rank, f"never joined within {self.startup_s:g} s"))
            elif now - last > self.timeout_s:
                found.append((rank, f"silent for {now - last:.0f} s"))
            elif self.drain_deadline is not None and now > self.drain_deadline:
                found.append((rank, "did not finish its drain in time"))
        self.dead.update(rank for rank, _why in found)
        return found
