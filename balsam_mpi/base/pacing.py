"""How long to wait: one backoff for pauses that grow, one timer for periodic work.

* :class:`Backoff` — a pause that doubles from ``first`` up to ``cap``, shortened by a
  random ``jitter`` fraction, with an optional give-up time. Two uses, one object: an
  idle loop's sleep (``next()`` after a turn with nothing to do, ``reset()`` after any
  activity: the cap bounds both the idle CPU and the latency of what arrives meanwhile),
  and retries (``failed()`` after a failed call, ``ready()`` before the next try,
  ``reset()`` once one works, ``exhausted()`` once failing has lasted ``give_up_s``).
* :class:`Periodic` — work every ``interval_s`` (a heartbeat, a sweep, a poll), each
  interval shortened by a random ``jitter`` fraction.

Jitter only ever shortens a wait: a cap stays a cap, and a heartbeat that must come more
often than half the lease still does. It is there because leaders of one project start
together (one allocation, several batch jobs submitted at once) and would otherwise
sweep, poll and retry against the same server in lockstep for their whole lives.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

Clock = Callable[[], float]


def _shorten(value: float, jitter: float, rng: random.Random) -> float:
    return value * (1.0 - jitter * rng.random()) if jitter > 0 else value


class Backoff:
    def __init__(self, first: float, cap: float, *, factor: float = 2.0,
                 jitter: float = 0.0, give_up_s: float | None = None,
                 rng: random.Random | None = None, clock: Clock = time.monotonic) -> None:
        if not 0.0 <= jitter < 1.0:
            raise ValueError(f"jitter must be in [0, 1), got {jitter}")
        self.first = first
        self.cap = max(cap, first)
        self.factor = factor
        self.jitter = jitter
        self.give_up_s = give_up_s
        self._rng = rng or random.Random()
        self._clock = clock
        self._base = 0.0  # the pause before jitter; 0 = reset
        self.pause = 0.0  # the last pause handed out
        self.until = 0.0  # clock time before which a retry waits
        self.failing_since: float | None = None

    def next(self) -> float:
        """The next pause, longer than the last (up to the cap)."""
        self._base = self.first if self._base <= 0 else min(self.cap, self._base * self.factor)
        self.pause = _shorten(self._base, self.jitter, self._rng)
        return self.pause

    def reset(self) -> None:
        self._base = self.pause = self.until = 0.0
        self.failing_since = None

    def sleep(self, sleeper: Callable[[float], Any] = time.sleep) -> None:
        sleeper(self.next())

    # -- retries ----------------------------------------------------------------------
    def failed(self) -> float:
        """A try failed: the pause before the next one (also kept in ``until``)."""
        now = self._clock()
        if self.failing_since is None:
            self.failing_since = now
        pause = self.next()
        self.until = now + pause
        return pause

    def ready(self) -> bool:
        return self._clock() >= self.until

    @property
    def failing(self) -> bool:
        return self.failing_since is not None

    def exhausted(self) -> bool:
        """Failing for ``give_up_s`` or longer (never, without a give-up time)."""
        return (self.give_up_s is not None and self.failing_since is not None
                and self._clock() - self.failing_since >= self.give_up_s)


class Periodic:
    """``due()`` is true once per interval (the first time after one interval, or at
    once with ``now=True``), and schedules the next."""

    def __init__(self, interval_s: float, *, jitter: float = 0.1, now: bool = False,
                 rng: random.Random | None = None, clock: Clock = time.monotonic) -> None:
        if not 0.0 <= jitter < 1.0:
            raise ValueError(f"jitter must be in [0, 1), got {jitter}")
        self.interval_s = interval_s
        self.jitter = jitter
        self._rng = rng or random.Random()
        self._clock = clock
        self.next_at = clock() if now else self._after(clock())

    def _after(self, now: float) -> float:
        return now + _shorten(self.interval_s, self.jitter, self._rng)

    def due(self) -> bool:
        now = self._clock()
        if now < self.next_at:
            return False
        self.next_at = self._after(now)
        return True

    def soon(self) -> None:
        """Make the next ``due()`` true."""
        self.next_at = self._clock()
