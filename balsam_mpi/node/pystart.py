"""How a node readies its Python interpreters (mixed into :class:`~balsam_mpi.node.node.Node`):
the zygote when the launcher starts, and spare interpreters before the first call.

The zygote starts with the launcher (``python_prestart``), not at the first Python call,
and the node's idle waits then fork its *spares* (``python_spares``: one per core by
default; the leader's node forks them at once, before its batch job opens), so the first
wave of calls starts on interpreters that are up instead of waiting for a fork each (the
forks, one after another, were that wave's stagger). A spare has no kind until its first
call (pypool). What it costs a node that never runs Python is the idle processes. A
zygote that cannot start is left to the first call, whose error it then is.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from . import pypool

log = logging.getLogger(__name__)


class PyStart:
    pool: pypool.PyPool | None
    python: pypool.PoolConfig
    stopping: bool
    _env: Mapping[str, str]

    def reap(self, timeout: float) -> bool:
        raise NotImplementedError  # the node's: notices the tasks that ended

    def prestart_python(self, *, spares_now: bool = False) -> None:
        """Start the zygote now; fork the spares too with ``spares_now``."""
        if self.pool is not None:
            return
        pool = self._python_pool()
        try:
            pool.zygote.start()
        except OSError as exc:  # ZygoteError: no such interpreter, no answer
            log.warning("the Python interpreters' zygote did not start (%s); the first "
                        "Python call tries again", exc)
            return
        while spares_now and pool.spare_wanted():
            pool.fork_spare()

    def python_ready(self) -> bool:
        """Whether a Python call may start now: not while the zygote imports its preload
        modules (the call's fork would wait behind them, blocking the node past what its
        leader allows a silent worker). Never blocks; starts the zygote if need be."""
        if not self.python.preload or self.stopping:
            return True
        pool = self._python_pool()
        if pool.zygote.ready:
            return True
        try:
            pool.zygote.start()
        except OSError:
            return True  # the call's own start says why
        return pool.zygote.poll_ready()

    def _python_pool(self) -> pypool.PyPool:
        if self.pool is None:
            self.pool = pypool.PyPool(self._env, self.python)
        return self.pool

    def _fork_spares(self, timeout: float) -> bool | None:
        """Spares, ~1 ms a fork, in a wait of ``timeout`` s, until they are all there:
        True if a task ended meanwhile, False once the wait's time is up (an ASSIGN is
        never kept waiting longer than it was), None with nothing (more) to fork."""
        pool = self.pool
        if pool is None or self.stopping or not pool.spare_wanted():
            return None
        until = time.monotonic() + timeout
        while pool.spare_wanted():
            pool.fork_spare()
            if self.reap(0.0):
                return True
            if time.monotonic() >= until:
                return False
        return None
