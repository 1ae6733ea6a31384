"""Which work a launcher claims first when several with different filters share a project:
its share of a fair division of the runnable rows.

The claim takes rows by priority, then id, whoever asks. With one launcher limited to
workflow A and another taking everything, the second would take A's rows as readily as
its own, in id order, and the first would run out of work and end while rows only the
second can run are still waiting: both idle part of their time, and the run ends later.

So every ``PEERS_S`` the leader reads (one plain query) how many runnable rows each
workflow has and every live launcher's workflow and owner filters and nodes, and divides
the rows among the launchers so that each gets work in proportion to its nodes, only of
workflows its filter takes, and the largest load is as small as it can be
(``division.py``). Every
leader solves the same problem from the same counts, so their shares agree without a
word between them. This launcher's share is its *plan*: rows per workflow. Its claims
then ask for one planned workflow at a time, the one with the most rows left in the
plan, for no more rows than that: a claim that comes back short there (the workflow ran
out) drops it from the plan, asks for a new division at once, and the next claim follows.
When every planned workflow's rows have been claimed (*spent*), the rest is the others'
share: until the next read the launcher claims only for slots that are free now, with
no margins (``claims.py``), so it neither hoards others' rows nor leaves a slot idle, and
an empty answer makes it hungry for what others hold unstarted (``giveback.py``: the
division's shares are taken at different moments, and one row past an even share is a
whole extra wave). When its share is empty, or no launcher has a workflow filter, the
usual claim runs. The first claim waits for the first read (one
short query), as it is the largest.

A planned claim takes a workflow's highest-priority rows: across workflows, priority
yields to the division, which is why it applies only while some live launcher's filter
names workflows or owners. The division gives out rows not yet claimed and counts what each
launcher holds unfinished toward its load (a launcher that started earlier holds more).
Loads are rows, not node-seconds. While a live launcher filters by owner (members each
running their own tasks) or by tags (a launcher per site, or per kind of node), the rows
are divided per workflow, owner and tag signature (which of the live launchers' distinct
tag filters a row matches), and a planned claim asks for exactly one such kind: one
owner's rows of one workflow, with the tags of the filters its signature matches and
none of the others' (``ClaimFilter.not_tags``), so an open launcher leaves a site's rows
to that site's launcher as it leaves a named workflow to the launcher that names it.
More than ``RUNNABLE_SCAN_MAX - 1`` workflows with runnable rows, more than
``MAX_TAKERS`` live launchers, or more than ``MAX_TAG_FILTERS`` distinct tag filters among
them: the usual claim.
"""

from __future__ import annotations

import logging
import math

from ..base.errors import BalsamError
from ..base.pacing import Periodic
from .calls import Calls
from .division import TagFilter, Taker, divide, kind_parts, sig_filters, workflow_set
from .storeport import ClaimFilter, Lease, Peers, StorePort

log = logging.getLogger(__name__)

PEERS_S = 1.0  # between reads of the counts and the peers' filters
RUNNABLE_SCAN_MAX = 65  # the query's cap: a list this long may be incomplete
MIN_SHARE = 0.5  # rows: a share below this is none
# More live launchers than this: no division (the read leaves it out too). Members can
# open batch jobs at will; thousands of them must not make every leader's division slow.
MAX_TAKERS = 64
# More distinct tag filters among live launchers than this: no division (the read leaves
# it out). A row's signature costs a containment test per filter, for up to 20,000 rows a
# read, and members can open batch jobs with filters at will.
MAX_TAG_FILTERS = 8
ASKED_MAX = 4096  # planned claims' kinds remembered (a kind's filter is the same each time)


class Preference:
    def __init__(self, calls: Calls, store: StorePort, lease: Lease,
                 filters: ClaimFilter) -> None:
        self.calls = calls
        self.store = store
        self.lease = lease
        self.filters = filters
        self.reads = Periodic(PEERS_S, now=True)
        self.left: dict[str, float] = {}  # the plan's rows not yet claimed, per kind
        self.tag_filters: tuple[TagFilter, ...] = ()  # a signature's digits, in order
        self.asked: dict[ClaimFilter, str] = {}  # each planned claim's kind (see ASKED_MAX)
        self.spent = False  # the whole plan claimed: free slots only until the next read
        self.ready = False  # the first read is in: the first claim waits for it

    def step(self) -> None:
        if self.reads.due() and not self.calls.busy("peers"):
            # The division is solved beside the read, off the leader's loop: it is up to
            # BUDGET_S of Python (division.py), the loop's turns are milliseconds.
            self.calls.start("peers", self._divide, then=self._read, failed=self._unread)

    def _divide(self) -> tuple[dict[str, float], tuple[TagFilter, ...]]:
        peers = self.store.claim_peers(self.lease)
        return plan(self.lease.job_id, self.filters, peers), peers.tag_filters

    def claim(self) -> tuple[ClaimFilter, int] | None:
        """The next planned claim (one kind: a workflow, or one owner's rows of it with
        one tag signature; at most this many rows), or None for the usual claim."""
        while self.left:
            key = max(sorted(self.left), key=lambda k: self.left[k])
            rows = max(1, math.ceil(self.left[key] - 1e-6))
            workflow, owner, sig = kind_parts(key)
            owners = self.filters.owners if owner is None else (owner,)
            tags = self.filters.tags
            not_tags: tuple[TagFilter, ...] = ()
            if sig is not None:
                exact = sig_filters(sig, self.tag_filters, self.filters.tags)
                if exact is None:  # no row can have it (never counted): not a share
                    del self.left[key]
                    self.spent = not self.left
                    continue
                tags, not_tags = exact
            wanted = ClaimFilter((workflow,), tags, owners, not_tags)
            self.asked[wanted] = key
            return wanted, rows
        return None

    def claimed(self, planned: ClaimFilter, rows: int, *, short: bool) -> None:
        """A planned claim came back with ``rows``; ``short``: its rows ran out."""
        key = self.asked.get(planned)  # (several claims of a kind may be under way)
        if key is None or key not in self.left:
            return
        self.left[key] -= rows
        if short:  # others took rows the division counted: divide again at once
            self.reads.soon()
        if short or self.left[key] < MIN_SHARE:
            del self.left[key]
            self.spent = not self.left

    def _read(self, read: tuple[dict[str, float], tuple[TagFilter, ...]]) -> None:
        self.left, self.tag_filters = read
        if len(self.asked) > ASKED_MAX:  # kept across reads: a claim may span one
            self.asked.clear()
        self.spent = False
        self.ready = True

    def _unread(self, exc: BalsamError) -> None:
        self.left, self.spent = {}, False
        self.ready = True  # the usual claims meanwhile
        log.debug("could not read the other launchers' filters (%s)", exc)


def plan(job_id: int, filters: ClaimFilter, peers: Peers) -> dict[str, float]:
    """This launcher's share of the division (workflow → rows), or {} for the usual
    claim (see the module)."""
    if (not peers.takers or len(peers.takers) > MAX_TAKERS
            or len(peers.tag_filters) > MAX_TAG_FILTERS
            or len(peers.runnable) >= RUNNABLE_SCAN_MAX):
        return {}
    shares = divide(peers.counts, peers.takers).get(job_id, {})
    own_tags = tuple(sorted(filters.tags))
    me = Taker(job_id, workflow_set(filters.workflows), 1.0,
               owners=workflow_set(filters.owners),
               tag_bit=peers.tag_filters.index(own_tags)
               if own_tags and own_tags in peers.tag_filters else None)
    return {key: rows for key, rows in shares.items() if rows >= MIN_SHARE and me.takes(key)}
