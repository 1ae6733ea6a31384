"""Processes as the tests see them through /proc."""

from __future__ import annotations

from pathlib import Path


def running(pid: int) -> bool:
    """Not gone, and not a zombie (dead; its parent, frozen or gone, has not reaped it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
