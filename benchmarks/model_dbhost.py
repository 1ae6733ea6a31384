"""The database server's cores in the scale model, shared by every launcher's calls.

By default (``Case.db_cores`` 0) the model gives each call its measured time wherever it
comes from: the database host runs every launcher's statements side by side. That holds
while its cores outnumber the calls in flight, and stops holding as launchers are added
to one database — the "launchers per database" what-if. With ``db_cores`` = K, a call
also needs one of K cores for its whole measured time, taken in the order calls are sent
(of the cores free by then, the one freed last, so that cores freed earlier stay free
for calls that can start sooner; else the first to be free). That is an upper bound on
the server's share, since the measured time includes the round trip and the client's
own work; a call whose own thread is still busy may also leave a gap on its core that a
later call could have filled (the share of time the cores are busy stays below 1 even
where they are the limit).
"""

from __future__ import annotations


class DbHost:
    def __init__(self, cores: int) -> None:
        self.cores = cores
        self.free_at = [0.0] * cores  # when each core is next free
        self.busy = 0.0

    def reserve(self, ready: float, cost: float) -> float:
        """When a call that could start at ``ready`` and takes ``cost`` starts."""
        if not self.cores:
            return ready
        free = self.free_at
        fits = [i for i, at in enumerate(free) if at <= ready]
        core = (max(fits, key=free.__getitem__) if fits
                else min(range(self.cores), key=free.__getitem__))
        start = max(ready, free[core])
        free[core] = start + cost
        self.busy += cost
        return start

    def share(self, wall_s: float) -> float | None:
        """How busy the cores were over ``wall_s`` (None when unbounded)."""
        if not self.cores:
            return None
        return self.busy / (self.cores * wall_s) if wall_s > 0 else 0.0
