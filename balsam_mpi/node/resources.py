"""A node's capacity and how tasks pack onto it (the node's side; pure: no MPI, no database).

One worker rank is one node of capacity 1.0; a task takes ``1 / node_packing_count`` of
it, as in Balsam. GPUs are whole devices: a task gets its own ids, never shared. Shares
are floats (1/3 + 1/3 + 1/3 must fit in 1.0), so every comparison allows ``EPS``, and the
sum is recomputed from scratch when the node empties so rounding never accumulates.
GPU ids come from a :class:`~balsam_mpi.node.gpus.GpuPool` (strings: numbers, UUIDs, tiles).
The leader's picture of other nodes is ``launcher/workerview.py``.
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
