"""The leader's one way to run a database call: a named background command.

``calls.start("claim", fn, *args, then=on_result, failed=on_error)`` hands ``fn`` to the
runner (the database thread, ``launcher/dbthread.py``) unless a call of that name is still in
flight: each name — claim, flush, heartbeat, kills, sweep, adds, close — is one stream of
work whose order matters, and a second copy would only queue behind the first. Each turn
of the leader's loop calls :meth:`Calls.collect`, which runs on the leader's own thread
``then(result)`` of every call that finished, or ``failed(exc)`` when it raised a
:class:`~balsam_mpi.base.errors.BalsamError` (what the store raises on purpose: the server
away, a refused report). Any other exception is a bug and is raised in the loop. No
callback ever runs on the database thread, so the leader's state has one writer.

:meth:`Calls.settle` waits for whatever is in flight and collects it (the end of a run, a
crash); :meth:`Calls.run` is a call the caller waits for (the last writes of a crash).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import wait as wait_all
from dataclasses import dataclass
from typing import Any, TypeVar

from ..base.errors import BalsamError
from .dbthread import Runner

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class _InFlight:
    future: Future[Any]
    then: Callable[[Any], object] | None
    failed: Callable[[BalsamError], object] | None


# The calls that run on the claims' connection when there is one: the claim, whose rows
# are taken FOR UPDATE SKIP LOCKED, and the heartbeat, which writes the job's own row —
# neither ever waits on a task row another session holds. Flushes, kills polls, sweeps
# and the rest stay on the leader's connection, so a statement held up there (a lock, a
# slow server) never delays the lease's renewal (docs/reliability.md).
SIDE_CALLS = ("claim", "heartbeat")


def leader_calls(main: Runner, side: Runner | None) -> Calls:
    """The leader's calls: on ``main``, but SIDE_CALLS on ``side`` when there is one."""
    return Calls(main, routes={} if side is None else dict.fromkeys(SIDE_CALLS, side))


class Calls:
    """``routes``: the runner of some names, where it is not ``runner`` — the claims'
    own connection (``claim_connection``): a claim and a flush then run side by side,
    so a claim sent while a flush of ends is on its way may not see what that flush
    writes (the leader counts only flushes already written as seen:
    ``ReportBuffer.settled_flushes``). Both runners must wake the same ``wake_fd``."""

    def __init__(self, runner: Runner, *, routes: Mapping[str, Runner] | None = None
                 ) -> None:
        self.runner = runner
        self.routes = dict(routes or {})
        if any(r.wake_fd != runner.wake_fd for r in self.routes.values()):
            raise ValueError("every runner of one Calls must wake the same fd")
        self._flight: dict[str, _InFlight] = {}

    @property
    def wake_fd(self) -> int:
        return self.runner.wake_fd

    def busy(self, name: str | None = None) -> bool:
        """Whether the call ``name`` (any call, without a name) is in flight."""
        return bool(self._flight) if name is None else name in self._flight

    def start(self, name: str, fn: Callable[..., T], *args: Any,
              then: Callable[[T], object] | None = None,
              failed: Callable[[BalsamError], object] | None = None,
              urgent: bool = False, **kwargs: Any) -> bool:
        """Submit ``fn(*args, **kwargs)`` as ``name``; False if ``name`` is in flight."""
        if name in self._flight:
            return False
        runner = self.routes.get(name, self.runner)
        future = runner.submit(fn, *args, urgent=urgent, **kwargs)
        self._flight[name] = _InFlight(future, then, failed)
        return True

    def collect(self) -> bool:
        """Run the callbacks of the calls that finished; True if any did."""
        done = [name for name, call in self._flight.items() if call.future.done()]
        for name in done:
            # Out of the table first: a callback may start the next call of its name.
            self._deliver(name, self._flight.pop(name))
        return bool(done)

    @staticmethod
    def _deliver(name: str, call: _InFlight) -> None:
        try:
            result = call.future.result()
        except BalsamError as exc:
            if call.failed is None:
                log.warning("%s failed (%s); will retry", name, exc)
            else:
                call.failed(exc)
            return
        if call.then is not None:
            call.then(result)

    def settle(self, timeout: float | None = None) -> None:
        """Wait for every call in flight (up to ``timeout`` s), then collect them."""
        if self._flight:
            wait_all([c.future for c in self._flight.values()], timeout)
        self.collect()

    def run(self, fn: Callable[..., T], *args: Any, timeout: float | None = None,
            **kwargs: Any) -> T:
        """``fn`` on the runner, waited for: its result, or what it raised."""
        return self.runner.submit(fn, *args, **kwargs).result(timeout)
