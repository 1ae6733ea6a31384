"""A node's capacity and how tasks pack onto it (pure: no MPI, no database).

One worker rank is one node of capacity 1.0; a task takes ``1 / node_packing_count`` of
it, as in Balsam. GPUs are whole devices: a task gets its own ids, never shared. Shares
are floats (1/3 + 1/3 + 1/3 must fit in 1.0), so every comparison allows ``EPS``, and the
sum is recomputed from scratch when the node empties so rounding never accumulates.
GPU ids come from a :class:`~balsam_mpi.gpus.GpuPool` (strings: numbers, UUIDs, tiles).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .gpus import GpuPool

EPS = 1e-9
NODE_CAPACITY = 1.0


def need_of(node_packing_count: int) -> float:
    """The share of one node a task takes."""
    return 1.0 / max(1, int(node_packing_count))


@dataclass
class NodeResources:
    """The free share and GPU ids of one node, and which task holds what."""

    capacity: float = NODE_CAPACITY
    gpus: int = 0
    used: float = 0.0
    devices: Sequence[str] | None = None  # the node's GPU ids (default 0..gpus-1)
    _held: dict[int, tuple[float, tuple[str, ...]]] = field(default_factory=dict)
    pool: GpuPool = field(default_factory=lambda: GpuPool([]))

    def __post_init__(self) -> None:
        self.pool = GpuPool(self.devices if self.devices is not None
                            else [str(i) for i in range(self.gpus)])
        self.gpus = self.pool.total

    @property
    def free(self) -> float:
        return self.capacity - self.used

    @property
    def count(self) -> int:
        return len(self._held)

    def fits(self, need: float, gpus: int = 0) -> bool:
        return need <= self.free + EPS and gpus <= self.pool.free

    def take(self, task_id: int, need: float, gpus: int = 0) -> tuple[str, ...]:
        """Reserve ``need`` and ``gpus`` devices for a task; returns its GPU ids."""
        if task_id in self._held:
            raise ValueError(f"task {task_id} already holds resources here")
        if not self.fits(need, gpus):
            raise ValueError(f"task {task_id} needs {need:.3f} of the node and {gpus} GPUs; "
                             f"{self.free:.3f} and {self.pool.free} are free")
        ids = tuple(self.pool.allocate(gpus) or ())
        self._held[task_id] = (need, ids)
        self.used += need
        return ids

    def holds(self, task_id: int) -> bool:
        return task_id in self._held

    def release(self, task_id: int) -> None:
        need, ids = self._held.pop(task_id)
        if ids:
            self.pool.release(ids)
        self.used = self.used - need if self._held else 0.0


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
