"""Which work a launcher claims first when several share a project: the workflows no other
live launcher's filter names.

The claim takes rows by priority, then id, whoever asks. With one launcher limited to
workflow A and another taking everything, the second would take A's rows as readily as
its own, in id order, and the first would run out of work and end while rows only the
second can run are still waiting: both idle part of their time, and the run ends later.
So every ``PEERS_S`` the leader reads (one plain query) which workflows have runnable rows
and which workflows other live launchers name in their filters; when some of the work it
may take is named by nobody else, its claims ask for that first (the claim's workflow
filter, which reads each workflow's rows in priority order from its own index). A claim
that comes back short there is followed at once by the usual claim, and the preference
rests until the next read. The first claim waits for the first read (one short query), as
it is the largest. Equal priorities only: a preferred claim takes the preferred
workflows' highest-priority rows, so across workflows priority yields to this order —
which is why it applies only while others' filters name some of the work.

No preference (the usual claim) when no other launcher has a workflow filter, when all
of this launcher's work is named by others, or when more than ``MAX_PREFERRED`` workflows
would be asked for (each costs the claim an index probe and locks).
"""

from __future__ import annotations

import logging

from ..base.errors import BalsamError
from ..base.pacing import Periodic
from .calls import Calls
from .storeport import ClaimFilter, Lease, Peers, StorePort

log = logging.getLogger(__name__)

PEERS_S = 1.0  # between reads of the peers' filters
MAX_PREFERRED = 8
RUNNABLE_SCAN_MAX = 65  # the query's cap: a list this long may be incomplete


class Preference:
    def __init__(self, calls: Calls, store: StorePort, lease: Lease,
                 filters: ClaimFilter) -> None:
        self.calls = calls
        self.store = store
        self.lease = lease
        self.filters = filters
        self.reads = Periodic(PEERS_S, now=True)
        self.workflows: tuple[str, ...] = ()  # claimed first; () for none
        self.ready = False  # the first read is in: the first claim waits for it

    def step(self) -> None:
        if self.reads.due() and not self.calls.busy("peers"):
            self.calls.start("peers", self.store.claim_peers, self.lease,
                             then=self._read, failed=self._unread)

    def claim_filter(self) -> ClaimFilter | None:
        """The filter of a preferred claim, or None for the usual one."""
        if not self.workflows:
            return None
        return ClaimFilter(self.workflows, self.filters.tags, self.filters.owners)

    def ran_out(self) -> None:
        """A preferred claim came back short: the usual claims until the next read."""
        self.workflows = ()

    def _read(self, peers: Peers) -> None:
        self.workflows = preferred(self.filters, peers)
        self.ready = True

    def _unread(self, exc: BalsamError) -> None:
        self.workflows = ()
        self.ready = True  # the usual claims meanwhile
        log.debug("could not read the other launchers' filters (%s)", exc)


def preferred(filters: ClaimFilter, peers: Peers) -> tuple[str, ...]:
    """The workflows to claim first, or () for the usual claim (see the module)."""
    if not peers.named:
        return ()
    complete = len(peers.runnable) < RUNNABLE_SCAN_MAX  # else the scan stopped early
    if filters.workflows:
        mine = tuple(w for w in filters.workflows if not complete or w in peers.runnable)
    elif complete:
        mine = peers.runnable
    else:
        return ()  # too many workflows to know which are free of others' filters
    first = tuple(w for w in mine if w not in peers.named)
    if not first or len(first) == len(mine) or len(first) > MAX_PREFERRED:
        return ()
    return first
