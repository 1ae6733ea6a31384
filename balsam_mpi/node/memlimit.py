"""How much memory a node's tasks may use together: the node's physical memory, or less
where the batch system confines the job to a cgroup (Slurm's ``ConstrainRAMSpace``, the
cgroup hooks of PBS and Flux): the lowest memory limit of the launcher's own cgroup and
of every cgroup above it up to the mount's root, as each of them applies. Read once per
node (``pypool``), cgroup v2 (``memory.max``) and v1 (``memory.limit_in_bytes``).

A Python call's default memory cap is its share of this (docs/python-tasks.md): taken
from the physical memory alone, a job given 8 GiB of a 256 GiB node let each of 16 calls
reach 16 GiB, and the first to pass the job's limit met the OOM killer instead of a
``MemoryError`` of its own.
"""

from __future__ import annotations

import os

from . import cgroupfs

V2_FILE = "memory.max"
V1_FILE = "memory.limit_in_bytes"


def usable_bytes(proc: str = "/proc/self") -> int:
    """The node's physical memory, or the lowest cgroup memory limit over it."""
    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    limits = [physical]
    placed = cgroupfs.own_cgroups(proc)
    for key, name in ((cgroupfs.UNIFIED, V2_FILE), ("memory", V1_FILE)):
        if key in placed:
            limit = lowest_limit(placed[key].path, placed[key].mount, name)
            if limit is not None:
                limits.append(limit)
    return min(limits)


def lowest_limit(leaf: str, top: str, name: str) -> int | None:
    """The smallest number in ``name`` in ``leaf`` and each directory above it up to
    ``top`` (both included); None if none holds one ("max": no limit there)."""
    found: list[int] = []
    top = os.path.normpath(top)
    here = os.path.normpath(leaf)
    while True:
        try:
            with open(os.path.join(here, name)) as fh:
                text = fh.read().strip()
            if text.isdigit():
                found.append(int(text))
        except OSError:
            pass
        if here == top or len(here) <= len(top):
            break
        here = os.path.dirname(here)
    return min(found) if found else None
