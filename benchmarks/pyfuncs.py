"""The functions the `python` scenario's tasks call (imported by the warm interpreters)."""

from __future__ import annotations

import time


def noop() -> None:
    return None


def small(i: int = 0) -> dict[str, object]:
    """A small result, so that the flush writes results too."""
    return {"i": i, "ok": True, "score": 0.5}


def sleep(s: float) -> None:
    time.sleep(s)
