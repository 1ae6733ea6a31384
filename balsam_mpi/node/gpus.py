"""One node's GPUs: which task holds which device, and how a task is shown only its own.

A worker owns a :class:`GpuPool` of the devices it may hand out (``--gpus-per-node N``
gives ``0..N-1``; an explicit list, or the one the scheduler gave the launcher in its own
``CUDA_VISIBLE_DEVICES``, gives those names). A task asking for ``n`` devices gets ``n``
that no running task holds, or waits; a finished task gives them back. The task then sees
only its devices through the vendor's visibility variable. Device ids are strings because
the runtimes accept more than numbers (NVIDIA UUIDs, Intel ``card.tile`` as ``0.1``).

Pure bookkeeping: no MPI, no process, no device query, so it runs (and is tested) the
same on a laptop. Nothing here was run on a GPU; what the runtimes do with the variables
is their documented behaviour (docs/mpi-tasks.md).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence

from ..base.errors import BalsamError

VISIBILITY_VARS = {
    "nvidia": "CUDA_VISIBLE_DEVICES",
    "amd": "ROCR_VISIBLE_DEVICES",
    "intel": "ZE_AFFINITY_MASK",
}
VENDORS = tuple(VISIBILITY_VARS)
GPU_VENDOR_ENV = "BALSAM_GPU_VENDOR"
# A vendor's device files; Intel has none that tell a data-centre GPU from the integrated
# graphics most CPUs carry, so Intel is only ever named, never guessed.
_DEVICE_FILES = (("nvidia", "/dev/nvidiactl"), ("amd", "/dev/kfd"))


class GpuError(BalsamError):
    """The node's GPUs are configured inconsistently (ids, counts, vendor)."""


class GpuPool:
    """The devices of one node and which are free; never hands one device out twice."""

    def __init__(self, devices: Sequence[str]) -> None:
        devices = [str(d).strip() for d in devices]
        if any(not d or "," in d for d in devices):
            raise GpuError(f"bad GPU ids {devices!r}; give names like 0,1,2,3")
        if len(set(devices)) != len(devices):
            raise GpuError(f"GPU ids {devices!r} repeat a device; list each one once")
        self.devices: tuple[str, ...] = tuple(devices)
        self._free: list[str] = list(devices)  # in the node's order: lowest ids go first

    @classmethod
    def from_count(cls, gpus_per_node: int) -> GpuPool:
        if gpus_per_node < 0:
            raise GpuError(f"--gpus-per-node must not be negative, got {gpus_per_node}")
        return cls([str(i) for i in range(gpus_per_node)])

    @property
    def total(self) -> int:
        return len(self.devices)

    @property
    def free(self) -> int:
        return len(self._free)

    def free_ids(self) -> list[str]:
        return list(self._free)

    def allocate(self, n: int) -> list[str] | None:
        """``n`` free devices, now taken; None when fewer are free (the task waits)."""
        if n < 0:
            raise GpuError(f"a task cannot ask for {n} GPUs")
        if n > self.total:
            raise GpuError(f"a task asks for {n} GPUs but a node has {self.total}; lower "
                           "its gpus_per_rank × ranks_per_node or raise --gpus-per-node")
        if n > len(self._free):
            return None
        taken, self._free = self._free[:n], self._free[n:]
        return taken

    def release(self, ids: Iterable[str]) -> None:
        ids = list(ids)
        held = set(self.devices) - set(self._free)
        stray = [d for d in ids if d not in held]
        if stray or len(set(ids)) != len(ids):
            raise GpuError(f"GPU ids {ids!r} are not all held here (free: {self._free!r}); "
                           "each allocation is released once")
        back = set(ids) | set(self._free)
        self._free = [d for d in self.devices if d in back]  # back in the node's order


def parse_ids(text: str) -> list[str]:
    """``"0,1, 2"`` → ``["0", "1", "2"]`` (the form of the visibility variables)."""
    return [part.strip() for part in text.split(",") if part.strip()]


def node_devices(gpus_per_node: int = 0, devices: Sequence[str] | str | None = None,
                 inherited: str | None = None) -> list[str]:
    """The devices a worker may hand out.

    An explicit list wins (and must agree with ``gpus_per_node`` when both are given).
    Else, when the launcher itself was limited to some devices (``inherited``: its own
    visibility variable, as Slurm sets for a step with GPUs), the first
    ``gpus_per_node`` of those: a task's variable replaces the launcher's, so it must name
    devices the launcher could see, not ``0..N-1`` of a list it never had. Else
    ``0..gpus_per_node-1``.
    """
    if devices is not None:
        ids = parse_ids(devices) if isinstance(devices, str) else [str(d) for d in devices]
        if gpus_per_node and len(ids) != gpus_per_node:
            raise GpuError(f"{len(ids)} GPU ids given for {gpus_per_node} GPUs per node; "
                           "give one id per GPU or leave --gpus-per-node out")
        return ids
    if gpus_per_node < 0:
        raise GpuError(f"--gpus-per-node must not be negative, got {gpus_per_node}")
    seen = parse_ids(inherited or "")
    if seen and gpus_per_node:
        if len(seen) < gpus_per_node:
            raise GpuError(f"--gpus-per-node {gpus_per_node} but the launcher sees only "
                           f"{len(seen)} GPUs ({','.join(seen)}); lower --gpus-per-node")
        return seen[:gpus_per_node]
    return [str(i) for i in range(gpus_per_node)]


def detect_vendor(environ: Mapping[str, str] = os.environ, *, option: str = "",
                  exists: Callable[[str], bool] = os.path.exists) -> str | None:
    """nvidia | amd | intel, or None when it cannot be told (then every variable is set).

    An option, then ``$BALSAM_GPU_VENDOR``, then a visibility variable the launcher was
    started with (the scheduler's or the site's choice), then the vendor's device files.
    """
    name = (option or environ.get(GPU_VENDOR_ENV, "")).strip().lower()
    if name:
        if name not in VENDORS:
            raise GpuError(f"GPU vendor {name!r} is unknown; use one of {', '.join(VENDORS)}")
        return name
    found = [v for v, var in VISIBILITY_VARS.items() if var in environ]
    if "HIP_VISIBLE_DEVICES" in environ and "amd" not in found:
        found.append("amd")
    if len(found) == 1:
        return found[0]
    files = [v for v, path in _DEVICE_FILES if exists(path)]
    return files[0] if len(files) == 1 else None


def visibility_env(vendor: str | None, ids: Sequence[str]) -> dict[str, str]:
    """The variables that show a task only ``ids``; nothing for a task without GPUs.

    Unknown vendor: all three are set, since each runtime reads only its own. A task
    without GPUs gets nothing here, so it sees what the launcher sees (hiding devices
    from it would need a per-vendor "none" value that not every runtime has).
    """
    if not ids:
        return {}
    value = ",".join(ids)
    if vendor is None:
        return {var: value for var in VISIBILITY_VARS.values()}
    if vendor not in VISIBILITY_VARS:
        raise GpuError(f"GPU vendor {vendor!r} is unknown; use one of {', '.join(VENDORS)}")
    return {VISIBILITY_VARS[vendor]: value}


def inherited_ids(vendor: str | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The launcher's own visibility variable for ``vendor`` (for :func:`node_devices`)."""
    if vendor is None:
        return None
    return environ.get(VISIBILITY_VARS[vendor])
