"""Where this process's cgroups are in the file system. ``/proc/self/cgroup`` names each
hierarchy's cgroup by its path inside the hierarchy; ``/proc/self/mountinfo`` says where
each hierarchy — or, in a container, a sub-tree of it — is mounted. Read by the task
cgroups (``cgroup``: v2) and the memory limit (``memlimit``: v2, and v1's memory
controller)."""

from __future__ import annotations

import os
from dataclasses import dataclass

UNIFIED = ""  # the key of the v2 hierarchy; a v1 hierarchy's are its controllers' names


@dataclass(frozen=True)
class Placed:
    path: str  # this process's cgroup directory
    mount: str  # the mount point it is under


def own_cgroups(proc: str = "/proc/self") -> dict[str, Placed]:
    """This process's cgroup directory in each mounted hierarchy: ``UNIFIED`` for v2,
    each controller's name (``memory``, …) for v1. Empty when /proc cannot be read."""
    try:
        with open(os.path.join(proc, "cgroup")) as fh:
            lines = [ln.rstrip("\n").split(":", 2) for ln in fh]
        with open(os.path.join(proc, "mountinfo")) as fh:
            mounts = [ln.split() for ln in fh]
    except OSError:
        return {}
    rels: dict[str, str] = {}
    for fields in lines:
        if len(fields) != 3:
            continue
        number, controllers, rel = fields
        if number == "0" and not controllers:
            rels[UNIFIED] = rel
        else:
            for name in controllers.split(","):
                rels.setdefault(name, rel)
    out: dict[str, Placed] = {}
    for fields in mounts:
        sep = fields.index("-") if "-" in fields else -1
        if sep < 0 or len(fields) < sep + 4:
            continue
        kind = fields[sep + 1]
        keys = ([UNIFIED] if kind == "cgroup2" else
                fields[sep + 3].split(",") if kind == "cgroup" else [])
        for key in keys:
            if key in rels and key not in out:
                placed = _placed(rels[key], fields[3], fields[4])
                if placed is not None:
                    out[key] = placed
    return out


def _placed(rel: str, mount_root: str, point: str) -> Placed | None:
    """The cgroup ``rel`` under a mount of the sub-tree ``mount_root`` at ``point`` (a
    container's namespace shows its own root); None if it is not under that sub-tree."""
    root = mount_root.rstrip("/")
    if rel != mount_root and not rel.startswith(root + "/"):
        return None
    inner = rel[len(root):].lstrip("/")
    return Placed(os.path.join(point, inner) if inner else point, point)
