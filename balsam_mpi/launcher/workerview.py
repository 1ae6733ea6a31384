"""The leader's picture of each worker node: what it reported, minus what was sent since,
and how fast it gets through work (so how much it should hold queued). Pure: no MPI, no
database; the node's own accounting is ``node/resources.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from ..node.resources import NODE_CAPACITY


@dataclass
class WorkerView:
    """The leader's picture of one worker: what it reported, minus what was sent since.

    A REPORT says how much was free when the worker wrote it and which ASSIGN it had
    applied by then (``acked``); assignments after that are subtracted, so the leader never
    overcommits a node by more than the margin, however the messages cross.
    """

    rank: int
    host: str = ""  # from its HELLO: the name a launch prefix gives this node
    reported_free: float = NODE_CAPACITY
    acked: int = 0
    running: int = 0
    queued: int = 0
    in_flight: dict[int, float] = field(default_factory=dict)  # ASSIGN seq -> shares sent
    alive: bool = True
    draining: bool = False
    pace: Pace = field(default_factory=lambda: Pace())

    def free(self) -> float:
        return self.reported_free - sum(self.in_flight.values())

    def update(self, reported_free: float, acked: int, running: int, queued: int,
               done_share: float = 0.0, now: float = 0.0) -> None:
        self.pace.record(done_share, now)
        self.reported_free = reported_free
        self.acked = acked
        self.running = running
        self.queued = queued
        for seq in [s for s in self.in_flight if s <= acked]:
            del self.in_flight[seq]

    def sent(self, seq: int, shares: float) -> None:
        if shares > 0:
            self.in_flight[seq] = shares

    def idle(self) -> bool:
        """Nothing running or queued there, and nothing on its way."""
        return self.running == 0 and self.queued == 0 and not self.in_flight


class Wants(NamedTuple):
    """What the nodes could take beyond the leader's pool, in node shares."""

    total: float  # free slots and margins
    margins: float  # the nodes' margins, whatever they hold now


def room(view: WorkerView, margin: float) -> float:
    """How much more the leader may send this worker: its free share plus the margin."""
    if not view.alive or view.draining:
        return 0.0
    return max(0.0, view.free() + margin)


@dataclass
class Pace:
    """How fast a node gets through work (node shares finished per second), and so how
    much it should hold queued: enough to keep going while the leader refills it.

    Short tasks need a deep queue (a 0.1 s task packed 16 to a node frees a slot every
    6 ms); long ones need none, and holding them queued would starve other launchers
    near the end of a campaign. The margin is the share the node finishes in
    ``horizon_s``, within [floor, cap]; until a rate is known it is ``initial``.
    """

    samples: list[tuple[float, float]] = field(default_factory=list)  # (time, cumulative)
    window_s: float = 5.0

    def record(self, done_share: float, now: float) -> None:
        if now <= 0:
            return
        if self.samples and done_share <= self.samples[-1][1]:
            return  # nothing new finished
        self.samples.append((now, done_share))
        while len(self.samples) > 2 and now - self.samples[1][0] > self.window_s:
            self.samples.pop(0)

    def rate(self, now: float) -> float | None:
        """Shares per second over the window (None before two completions are seen)."""
        if len(self.samples) < 2:
            return None
        (t0, d0), (t1, d1) = self.samples[0], self.samples[-1]
        # Between the first and last completion seen; a node that has stopped finishing
        # things (long tasks now) decays as time passes without one.
        span = max(t1 - t0, now - t1, 1e-3)
        return (d1 - d0) / span

    def margin(self, now: float, *, initial: float, horizon_s: float = 1.0,
               floor: float = 0.05, cap: float = 1.0) -> float:
        rate = self.rate(now)
        if rate is None:
            return initial
        return min(cap, max(floor, rate * horizon_s))
