"""Clocks the tests move.

``Clock``: call it for the time; set ``now`` or add to it (passed where a clock is taken).

``FakeTime``, read as ``time`` by the launcher's modules: how a leader divides and places
work depends on how often it turns within its intervals (claims, heartbeats, liveness,
reports). On the wall clock a busy machine changed that run
to run, and tests of fairness and placement failed under load (test_preference's
five-launcher test: 6 of 8 runs with two other jobs beside it). ``install`` makes every
loaded module of the package, the modules given, and a MemStore's default clock read one
``FakeTime``, whose ``sleep`` only moves it.
"""

from __future__ import annotations

import sys
import time
from types import ModuleType

import pytest

from balsam_mpi.launcher.memstore import MemStore


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeTime:
    """The ``time`` module with ``monotonic``, ``time`` and ``sleep`` on a moved clock."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


def install(monkeypatch: pytest.MonkeyPatch, *modules: ModuleType) -> FakeTime:
    """A new FakeTime as ``time`` of the package's loaded modules and of ``modules``."""
    clock = FakeTime()
    for name, mod in list(sys.modules.items()):
        if name.startswith("balsam_mpi") and getattr(mod, "time", None) is time:
            monkeypatch.setattr(mod, "time", clock)
    for mod in modules:
        monkeypatch.setattr(mod, "time", clock)
    monkeypatch.setattr(MemStore.__init__, "__defaults__", (clock.time,))
    return clock
