"""Questions about other processes that several parts ask."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """Whether a process of that pid exists (signal 0: nothing is sent). Another user's
    process answers PermissionError: it exists. A pid can be reused, so a caller that
    cares whose it is asks more (dbctl/cluster.py looks at the data directory too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
