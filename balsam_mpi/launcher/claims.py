"""The leader's claims: when to ask for work, how much, and what to do with the answer.

One claim in flight at most, for what the nodes can start soon (``Dispatcher.demand``).
The claim call runs on the database thread and comes back as ready orders (``launcher/orders.py``);
rows that cannot run are written as failures of their tasks, nothing else. While the
database is away claims pause longer each time.

**No early idle exit while a dead job holds work.** When a claim finds nothing, the same
call lists the other running batch jobs that hold work these filters match, with their
last heartbeat. A launcher started right after one that crashed must not end for lack of
work while the crashed job's tasks wait for its lease to run out: so it counts itself
idle only once every such job has shown it is alive by renewing its heartbeat since this
launcher first saw it, and — if it holds some of that work queued, unstarted — had
``HANDBACK_WAIT_S`` to hand it back (giveback.py): without that wait a launcher started
with ``--idle-timeout 0`` left as soon as the holder's heartbeat came, before the
hand-back could. One that does not is waited for: once its heartbeat is older than
half its lease (a live leader beats at least that often) it is said to be overdue in the
log, and when its lease has run out a sweep requeues its tasks and the next claim takes
them. An earlier run of this launcher's own batch job (the scheduler started the job
again after it died: migration 0021) is such a holder too, whose heartbeat never comes.
The cost, when the holders are alive, is at most one of their heartbeat intervals — 0.1
s, since a leader holding tasks renews at least that often (leader.py) — or
``HANDBACK_WAIT_S`` (1 s) when one holds queued work, and the waiting launcher looks
again every ``HOLDERS_RECHECK_S`` meanwhile, not claim_idle_s.

**Planned claims** (``preference.py``). While some live launcher's filter names
workflows or owners, a claim asks for one workflow (or one owner's rows of it) of this
launcher's share of a fair division, for at most the rows left in that share; when the
share is claimed, the usual claims for free slots only (no margins) until the next
division brings a new share. Only the usual claims decide that work is running out
(``short``) or that this launcher is idle.

**Claiming ahead.** A claim asks for a quarter of the nodes' margins more than they can
take (``AHEAD``), kept in the leader's pool, so the next ends are refilled from the pool
and short tasks are claimed in batches, not one claim per end.

**Short claims.** A claim that found less than the nodes could take (``short``; what it
asked for ahead does not count) tells the dispatcher the work is running out: no margins from then on, until a claim is full again
(dispatch.py, "No stranded tails").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ..base.errors import BalsamError
from ..base.pacing import Backoff
from ..node.resources import EPS, NODE_CAPACITY
from .calls import Calls
from .dispatch import Dispatcher
from .orders import ClaimResult, OrderBuilder
from .preference import Preference
from .reports import ReportBuffer
from .storeport import ClaimFilter, Lease, StorePort

log = logging.getLogger(__name__)

HOLDERS_RECHECK_S = 0.1  # between looks while other jobs hold work these filters match
# A live holder that holds some of that work queued, unstarted, hands it back once it
# hears this launcher is hungry (giveback.py: told at once, heard within a 0.25 s beat,
# then one release): such a holder is waited for this long after it was first seen.
HANDBACK_WAIT_S = 1.0
FIRST_BEATS_KEPT = 1024  # holders whose first heartbeat is remembered, at most
# A claim also asks for this share of the nodes' margins beyond what they can take now,
# held in the leader's pool: the next ends are refilled from there, at once and without a
# claim. Claiming only what the nodes could take made short tasks cost a claim per few
# tasks (each REPORT of an end brought one): a 0.1 s Python run on 4 x 16 made 589 claims
# for 1,920 tasks, 46% of the server's statement time, at ~1.2 ms of its CPU each. Holding
# claims back instead, until the margins were a quarter short, would leave a node's queue
# up to a quarter short of its slots when a wave of its tasks ends together. The pool is
# the launcher's, not a node's: it strands nothing behind a long task, goes to the first
# node with room, and back to the database for a hungry launcher (giveback.py); with no
# margins (work running out) nothing is claimed ahead, nor by a launcher with filters or
# while rows are divided between launchers (preference.py: a share counts the rows each
# launcher holds, so rows held ahead would tilt it).
AHEAD = 0.25


class Claims:
    def __init__(self, calls: Calls, store: StorePort, lease: Lease, builder: OrderBuilder,
                 dispatch: Dispatcher, buffer: ReportBuffer,
                 deliver: Callable[[ClaimResult], object], *, filters: ClaimFilter,
                 limit: int, max_tasks: int, idle_s: float, look_for_held: bool,
                 remaining_min: Callable[[], float | None],
                 preference: Preference | None = None,
                 claim_store: StorePort | None = None) -> None:
        self.calls = calls
        self.store = store
        # The connection the claims run on: their own (calls.py), else the leader's one.
        self.claim_store = claim_store or store
        self.lease = lease
        self.builder = builder
        self.dispatch = dispatch
        self.buffer = buffer
        self.deliver = deliver  # the leader takes what a claim brought
        self.filters = filters
        self.limit = limit
        self.max_tasks = max_tasks
        self.idle_s = idle_s  # wait between claims that found nothing
        self.look_for_held = look_for_held
        self.remaining_min = remaining_min
        self.preference = preference
        self.covers = -1  # the buffer's flush count when the last claim was sent
        self.last_empty = False
        self.first_beat: dict[int, float] = {}  # holder job -> heartbeat first seen
        self.first_seen: dict[int, float] = {}  # holder job -> when, since work ran out
        self.waiting_for: frozenset[int] = frozenset()  # holders not seen alive yet
        self.overdue: frozenset[int] = frozenset()
        self.next_at = 0.0
        # While the database is away claims pause longer each time (the nodes keep
        # running what they have; reports wait in the buffer).
        self.retry = Backoff(max(idle_s, 0.05), 10.0, jitter=0.2)
        self.total = 0
        self.sent = 0  # claims sent (the close logs how many brought self.total tasks)
        self.max_packing = 16
        self.spent_scarce = False  # no margins: this launcher's planned share is claimed

    @property
    def in_flight(self) -> bool:
        return self.calls.busy("claim")

    def soon(self) -> None:
        """Claim at the next chance (ended tasks were written: children may be READY)."""
        self.next_at = 0.0

    def warm(self) -> None:
        """A claim of nothing, as the run starts: a connection's first claim makes the
        server plan its statement and read the tables' catalogs (21 ms here, about 1 ms
        for the next ones), which this one does while the nodes say HELLO and the
        preference is read. Its answer is dropped; a failure is the first claim's."""
        self.calls.start("claim", self.claim_store.claim, self.lease, limit=0, capacity=0.0,
                         max_need=NODE_CAPACITY, filters=self.filters,
                         then=lambda _rows: None, failed=lambda _exc: None)

    def refill(self) -> None:
        """Send a claim for what the nodes can start soon."""
        if self.in_flight or time.monotonic() < self.next_at:
            return
        if self.max_tasks and self.total >= self.max_tasks:
            return
        if self.preference is not None and not self.preference.ready:
            self.preference.step()  # the first claim waits for what to prefer
            return
        planned = self.preference.claim() if self.preference else None
        if self.preference is not None and self.preference.spent:
            # Its share is claimed, the rest is the others': the usual claims, for free
            # slots only (no margins), so an idle node still finds work, and an empty
            # answer makes this launcher hungry for what others hold unstarted.
            self.dispatch.scarce = self.spent_scarce = True
        elif planned is not None and self.spent_scarce:
            self.dispatch.scarce = self.spent_scarce = False  # a new share: margins again
        wants = self.dispatch.wants()
        want = wants.total  # what the nodes can take: less than that back is a short claim
        if want < 1.0 / self.max_packing - EPS:
            return
        # Asked for too, to wait in the pool (see AHEAD); not while the runnable rows are
        # divided between launchers, whose shares count what each one holds.
        divided = planned is not None or bool(self.preference and self.preference.left)
        filtered = bool(self.filters.workflows or self.filters.owners or self.filters.tags)
        ahead = 0.0 if divided or filtered else AHEAD * wants.margins
        limit = min(self.limit, max(8, int((want + ahead) * self.max_packing + 0.999)))
        if self.max_tasks:
            limit = min(limit, self.max_tasks - self.total)
        covers = self.buffer.settled_flushes
        filters = self.filters
        if planned is not None:
            filters, rows = planned
            limit = min(limit, rows)
        self.sent += 1
        self.calls.start("claim", self.builder.claim, self.claim_store, self.lease,
                         filters=filters,
                         look_for_held=self.look_for_held and planned is None,
                         limit=limit, capacity=want + ahead, max_need=NODE_CAPACITY,
                         remaining_min=self.remaining_min(),
                         max_nodes=self.dispatch.max_nodes(),
                         then=lambda got: self._claimed(covers, got, limit, want,
                                                        planned=filters if planned else None),
                         failed=self._failed)

    def _failed(self, exc: BalsamError) -> None:
        pause = self.retry.failed()
        log.warning("claim failed (%s); retrying in %.1f s", exc, pause)
        self.next_at = time.monotonic() + pause

    def _claimed(self, covers: int, got: ClaimResult, limit: int, want: float,
                 planned: ClaimFilter | None = None) -> None:
        now = time.monotonic()
        if planned is not None and self.preference is not None:
            # A planned claim (one workflow): the plan learns what it brought; whether
            # work is running out or this launcher is idle, only the usual claims say.
            self.preference.claimed(planned, got.claimed,
                                    short=short(got, limit, want))
            self.retry.reset()
            self.next_at = now
            self._take(got)
            return
        self.dispatch.scarce = short(got, limit, want) or self.spent_scarce
        if self.retry.failing:
            log.info("claims work again")
            self.retry.reset()
        self.covers = covers
        self._held(got)
        self.last_empty = not got.claimed and not self.waiting_for
        if not got.claimed:
            # Waiting only to see live holders renew (or finish what these filters
            # match): look again soon, so the run ends soon after they do; otherwise
            # the database has nothing for us and claim_idle_s paces the next look.
            # While this launcher still runs tasks, others holding such work may hand
            # some back to it (giveback.py): look again soon then too.
            soon = bool(self.waiting_for) or (bool(got.held)
                                              and not self.dispatch.all_idle())
            self.next_at = now + (min(self.idle_s, HOLDERS_RECHECK_S) if soon
                                  else self.idle_s)
            return
        self.next_at = now
        self._take(got)

    def _take(self, got: ClaimResult) -> None:
        if not got.claimed:
            return
        self.total += got.claimed
        self.max_packing = max(self.max_packing, got.max_packing)
        self.deliver(got)

    def _held(self, got: ClaimResult) -> None:
        """Which holders have not shown they are alive (see the module's docstring)."""
        if got.claimed:
            self.first_seen.clear()  # the hand-back wait counts from each time work ran out
            return
        waiting: set[int] = set()
        overdue: set[int] = set()
        now = time.monotonic()
        for h in got.held:
            first = self.first_beat.setdefault(h.job_id, h.heartbeat_at)
            seen = self.first_seen.setdefault(h.job_id, now)
            if h.heartbeat_at > first and not (h.queued and now - seen < HANDBACK_WAIT_S):
                continue  # alive (and had time to hand back what it holds queued)
            waiting.add(h.job_id)
            if h.overdue:
                overdue.add(h.job_id)
                if h.job_id not in self.overdue and h.job_id == self.lease.job_id:
                    left = h.lease_s - h.silent_s
                    log.warning("an earlier run of this batch job ended without closing it "
                                "and holds tasks for these filters: waiting %s to take "
                                "them over", f"{left:.0f} s for its lease to run out"
                                if left > 0 else "for its lease to be swept")
                elif h.job_id not in self.overdue:
                    left = h.lease_s - h.silent_s
                    log.warning("batch job %s holds tasks for these filters but has not "
                                "heartbeated for %.0f s: waiting %s to take them over",
                                h.job_id, h.silent_s,
                                f"{left:.0f} s for its lease to run out" if left > 0
                                else "for its lease to be swept")
        self.waiting_for, self.overdue = frozenset(waiting), frozenset(overdue)
        if len(self.first_beat) > FIRST_BEATS_KEPT:
            # A launcher that lives for days sees thousands of batch jobs come and go:
            # keep only the holders of this answer (one seen again later waits for one
            # more heartbeat of its own).
            now_held = {h.job_id for h in got.held}
            self.first_beat = {j: b for j, b in self.first_beat.items() if j in now_held}


def short(got: ClaimResult, limit: int, want: float) -> bool:
    """Did the claim find less work than it asked for? Nothing at all, or fewer rows than
    its limit with room left for one more of the largest it brought: the runnable rows
    these filters match ran out (a row that did not fit would have left less room)."""
    if not got.claimed:
        return True
    if got.claimed >= limit:
        return False
    needs = [o.need for o in got.orders]
    return want - sum(needs) >= max(needs, default=NODE_CAPACITY) - EPS
