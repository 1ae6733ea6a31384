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

V2_FILE = "memory.max"
V1_FILE = "memory.limit_in_bytes"


def usable_bytes(proc: str = "/proc/self") -> int:
    """The node's physical memory, or the lowest cgroup memory limit over it."""
    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    limits = [physical]
    for leaf, top, name in _memory_cgroups(proc):
        limit = lowest_limit(leaf, top, name)
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


def _memory_cgroups(proc: str) -> list[tuple[str, str, str]]:
    """(this process's cgroup directory, its mount point, the limit's file name) for the
    v2 hierarchy and the v1 memory controller, where each is mounted."""
    try:
        with open(os.path.join(proc, "cgroup")) as fh:
            lines = [ln.rstrip("\n").split(":", 2) for ln in fh]
        with open(os.path.join(proc, "mountinfo")) as fh:
            mounts = [ln.split() for ln in fh]
    except OSError:
        return []
    v2 = next((p for n, c, p in (ln for ln in lines if len(ln) == 3)
               if n == "0" and c == ""), None)
    v1 = next((p for _, c, p in (ln for ln in lines if len(ln) == 3)
               if "memory" in c.split(",")), None)
    out: list[tuple[str, str, str]] = []
    for fields in mounts:
        sep = fields.index("-") if "-" in fields else -1
        if sep < 0 or len(fields) < sep + 4:
            continue
        kind, options = fields[sep + 1], fields[sep + 3].split(",")
        if kind == "cgroup2" and v2 is not None:
            out += _placed(v2, fields[3], fields[4], V2_FILE)
        elif kind == "cgroup" and "memory" in options and v1 is not None:
            out += _placed(v1, fields[3], fields[4], V1_FILE)
    return out


def _placed(rel: str, mount_root: str, point: str, name: str) -> list[tuple[str, str, str]]:
    """The cgroup ``rel`` (as /proc/self/cgroup names it) under a mount of the sub-tree
    ``mount_root`` at ``point`` (a container's namespace shows its own root)."""
    root = mount_root.rstrip("/")
    if rel != mount_root and not rel.startswith(root + "/"):
        return []
    inner = rel[len(root):].lstrip("/")
    return [(os.path.join(point, inner) if inner else point, point, name)]
