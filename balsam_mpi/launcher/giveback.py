"""Handing back: queued tasks this launcher cannot start yet go back to the database when
another live launcher has free slots and nothing to claim (migration 0015).

Within one launcher the recall moves queued tasks from busy nodes to idle ones
(dispatch.py, "No stranded tails"). Between launchers only the database can: near the end
of the work, a launcher whose claims had margins may hold a node's worth of tasks queued
behind long ones while another launcher's claims find nothing and its nodes idle. With
600 s tasks that is a whole extra wave.

Every ``HUNGER_BEAT_S`` (only while it matters: this launcher is hungry, was, or holds
unstarted tasks), and at once when its hunger starts or ends, the leader tells the
database whether it is *hungry* — its last claim came back short and it still has free
slots — and learns whether another live launcher is hungry for a task it holds unstarted
(the other's filters take it); holding none, whether another is hungry at all. While that
is so:

1. no margins (``Dispatcher.others_hungry``): claims ask for free slots only (else a
   launcher would claim back as margin what it has just released);
2. every queued task no node has started is recalled (``Dispatcher.rebalance`` with
   ``to_database``), with the usual fencing: only a task its node names as given back,
   never seen started, returns to the pool;
3. the pool goes first to this launcher's own free slots (``push``), and what is left is
   released by ``launcher_give_back``, which frees only this job's claimed, unstarted
   rows that a hungry launcher's filters take; the rest return to the pool.

A released task is claimed again by whoever has room first, the hungry launcher most
likely; nothing is counted against it (its state never changed). The price when nobody
is hungry: one small call per beat while this launcher holds queued tasks.
"""

from __future__ import annotations

import logging
from collections import deque

from ..base.errors import BalsamError
from ..base.pacing import Periodic
from ..protocol import RunOrder
from .calls import Calls
from .dispatch import Dispatcher
from .storeport import Lease, StorePort

log = logging.getLogger(__name__)

# Well inside 0015's freshness (3 s), and short beside a task of a second or two: a
# holder hears of hunger within a beat (the hungry launcher tells at once).
HUNGER_BEAT_S = 0.25


class GiveBack:
    def __init__(self, calls: Calls, store: StorePort, lease: Lease, dispatch: Dispatcher,
                 *, beat_s: float = HUNGER_BEAT_S) -> None:
        self.calls = calls
        self.store = store
        self.lease = lease
        self.dispatch = dispatch
        self.beats = Periodic(beat_s, now=True)
        # Whether hunger started or ended, between beats: a pass over every worker, so
        # at most every 20 ms (as the recall's own checks).
        self.checks = Periodic(0.02, jitter=0.0)
        self.told_hungry = False  # what the database last heard from this launcher
        self.out: list[RunOrder] = []  # being released (a give_back call in flight)
        self.given = 0  # released in all
        self.stopped = False  # draining: nothing more goes out, or to the nodes from here
        # The last answer said another launcher is hungry for tasks held here: recall
        # them and release them, once per answer (what the database refuses stays).
        self.wanted = False

    @property
    def busy(self) -> bool:
        return bool(self.out) or self.calls.busy("give_back")

    def step(self) -> None:
        if self.stopped:
            return
        self._tell()
        if not self.wanted or self.busy or self.dispatch.recalling:
            return  # (a recall in flight: its tasks come back to the pool first)
        small = [o for o in self.dispatch.pool if o.num_nodes == 1]
        if small:
            self._release(small)
            self.wanted = False  # the next beat's answer decides whether more goes
        elif not self.dispatch.rebalance(to_database=True):
            self.wanted = False  # nothing queued anywhere

    def stop(self) -> None:
        """Draining: nothing more is handed back (the close releases what is left)."""
        self.stopped = True
        self.wanted = False
        self.dispatch.others_hungry = False

    # -- the beat ----------------------------------------------------------------------
    def _tell(self) -> None:
        if self.calls.busy("hunger"):
            return
        beat = self.beats.due()
        if not beat and not self.checks.due():
            return
        hungry = self.dispatch.hungry()
        if hungry == self.told_hungry and not beat:
            return  # hunger that starts or ends is told at once, the rest on the beat
        holding = self.dispatch.holds_unstarted()
        if not (hungry or holding or self.told_hungry or self.dispatch.others_hungry):
            return
        self.told_hungry = hungry
        self.calls.start("hunger", self.store.hunger, self.lease, hungry=hungry,
                         holding=holding, then=lambda yes: self._heard(yes, holding),
                         failed=self._unheard)

    def _heard(self, yes: bool, holding: bool) -> None:
        """``yes``: another launcher is hungry — for tasks held here when ``holding``."""
        if yes and holding and not self.wanted:
            log.info("another launcher has free slots and no work: handing back the "
                     "tasks queued here that no node has started")
        self.wanted = yes and holding
        self.dispatch.others_hungry = yes

    def _unheard(self, exc: BalsamError) -> None:
        # Without an answer keep what is held: a launcher never gives work away blind.
        self.wanted = False
        self.dispatch.others_hungry = False
        log.debug("could not exchange hunger with the database (%s)", exc)

    # -- the release -------------------------------------------------------------------
    def _release(self, orders: list[RunOrder]) -> None:
        ids = {o.id for o in orders}
        self.dispatch.pool = deque(o for o in self.dispatch.pool if o.id not in ids)
        self.out = orders
        self.calls.start("give_back", self.store.give_back, self.lease, [o.id for o in orders],
                         then=self._released, failed=self._kept)

    def _released(self, released: list[int]) -> None:
        gone = set(released)
        self.given += len(gone)
        if gone:
            log.info("handed %s queued task(s) back to the database for another launcher",
                     len(gone))
        self._back([o for o in self.out if o.id not in gone])

    def _kept(self, exc: BalsamError) -> None:
        log.warning("could not hand tasks back (%s); keeping them", exc)
        self._back(self.out)  # the next try waits for the next beat's answer

    def _back(self, orders: list[RunOrder]) -> None:
        self.out = []
        if orders:
            self.dispatch.pool.extendleft(reversed(orders))
            if not self.stopped:  # draining: the close releases what stays in the pool
                self.dispatch.push()
