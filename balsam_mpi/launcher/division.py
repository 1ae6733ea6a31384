"""A fair division of the runnable work among live launchers whose filters differ.

Each workflow ``w`` has ``counts[w]`` runnable rows; each live launcher ``l`` has a weight
(its nodes), holds ``held[l]`` rows unfinished, and takes either every workflow or those
its filter names. While some live launcher also filters by owner (members each running
their own tasks) or by tags (a launcher per site or per kind of node), the rows are
counted per workflow, owner and *tag signature* instead (a *kind*: ``kind(w, owner,
sig)``; the signature says which of the live launchers' distinct tag filters a row
matches, one ``0``/``1`` each), and a launcher takes a kind when its filters take all of
it. The division ``x[l][w]`` gives every row to a launcher that may take it and makes the
largest load per weight, ``(held[l] + sum_w x[l][w]) / weight[l]``, as
small as it can be. The run's work then ends on every launcher at about the same time,
instead of open launchers taking, in id order, the rows only a filtered launcher could
run and leaving it idle at the end.

This is a transportation problem. The smallest feasible load ``T`` is found by bisection,
each step a max-flow feasibility test (source → workflow, capacity its rows; workflow →
launcher, unbounded, where the filter allows; launcher → sink, ``T × weight`` less what
it holds, in whole rows, so the division is in whole rows too). Sizes are small: at most
64 workflows with rows (the preference's scan) and 64 launchers, usually a handful, so a
test is a few hundred edges. The answer is deterministic — the same counts and launchers
give every leader the same division — so leaders that read the same counts agree without
talking to each other; each uses only its own row (``preference.py``).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

BISECTIONS = 40  # the load's bracket shrinks 2^40-fold: far below one row
# A shortest-path max flow needs at most O(V·E) augmentations, but crafted counts and
# filters (64 × 64) could make that seconds of Python: past this, no division this time.
BUDGET_S = 0.05
_EPS = 1e-9


# Between the parts of a kind's key: no stored name holds a NUL (values.text refuses it,
# and Postgres text cannot hold one), so a key splits back one way only. An owner is never
# empty (a UNIX name) and a signature has a digit per filter, so "" stands for "any".
_SEP = "\x00"


def kind(workflow: str, owner: str | None = None, sig: str | None = None) -> str:
    """The division's key for a workflow's rows, or for those of one owner and of one tag
    signature (None: any)."""
    if owner is None and sig is None:
        return workflow
    return f"{workflow}{_SEP}{owner or ''}{_SEP}{sig or ''}"


def kind_parts(key: str) -> tuple[str, str | None, str | None]:
    """(workflow, owner, signature) of a kind; None: any owner, any tags."""
    workflow, sep, rest = key.partition(_SEP)
    if not sep:
        return workflow, None, None
    owner, _, sig = rest.partition(_SEP)
    return workflow, owner or None, sig or None


class Taker(NamedTuple):
    """A live launcher as the division sees it."""

    job_id: int
    workflows: frozenset[str] | None  # None: every workflow
    weight: float  # its nodes
    held: float = 0.0  # rows it holds unfinished (claimed or running)
    owners: frozenset[str] | None = None  # None: every owner's tasks
    tag_bit: int | None = None  # its tag filter's place in a signature; None: no tags

    def takes(self, key: str) -> bool:
        """Whether its filters take every row of this kind (a launcher limited to some
        owners, or to tags, takes no rows that were not counted per owner, or per tag
        signature)."""
        workflow, owner, sig = kind_parts(key)
        if self.workflows is not None and workflow not in self.workflows:
            return False
        if self.owners is not None and (owner is None or owner not in self.owners):
            return False
        return self.tag_bit is None or (sig is not None and len(sig) > self.tag_bit
                                        and sig[self.tag_bit] == "1")

    @property
    def narrowed(self) -> bool:
        return (self.workflows is not None or self.owners is not None
                or self.tag_bit is not None)


TagFilter = tuple[tuple[str, str], ...]  # a launcher's --tag pairs, sorted


def signature(tags: Mapping[str, Any], filters: Sequence[TagFilter]) -> str:
    """Which of ``filters`` a row's tags match (all of a filter's pairs), a digit each."""
    return "".join("1" if all(tags.get(k) == v for k, v in f) else "0" for f in filters)


def sig_filters(sig: str, filters: Sequence[TagFilter], own: TagFilter = ()
                ) -> tuple[TagFilter, tuple[TagFilter, ...]] | None:
    """The claim filters that take exactly a signature's rows: the pairs every row has
    (``own`` and each matched filter's, merged) and the filters no row matches; None when
    no row can have it (two matched filters give one key two values)."""
    pairs = dict(own)
    for digit, f in zip(sig, filters, strict=True):
        if digit == "1":
            for k, v in f:
                if pairs.setdefault(k, v) != v:
                    return None
    unmatched = tuple(f for digit, f in zip(sig, filters, strict=True) if digit == "0")
    return tuple(sorted(pairs.items())), unmatched


def workflow_set(names: Iterable[str]) -> frozenset[str] | None:
    """A filter's workflows as a taker's: None (every workflow) for an empty filter."""
    named = frozenset(names)
    return named or None


def divide(counts: Mapping[str, int], takers: Sequence[Taker],
           budget_s: float = BUDGET_S) -> dict[int, dict[str, float]]:
    """Rows of each workflow per launcher (job id → workflow → rows), loads balanced.

    Workflows no launcher takes are left out; launchers with no share get an empty map —
    every launcher does when the division takes longer than ``budget_s`` (the leader's
    loop waits for it; the usual claims then run until the next read).
    """
    people = sorted((t for t in takers if t.weight > 0), key=lambda t: t.job_id)
    work = {w: float(int(n)) for w, n in sorted(counts.items())
            if n > 0 and any(t.takes(w) for t in people)}
    out: dict[int, dict[str, float]] = {t.job_id: {} for t in takers}
    if not work:
        return out
    total = sum(work.values())
    low = max(t.held / t.weight for t in people)  # no division lowers what is held
    high = low + total / min(t.weight for t in people)  # one launcher could take all
    flow = _Flow(work, people, time.monotonic() + budget_s)
    try:
        best = flow.route(high)
        for _ in range(BISECTIONS):
            mid = (low + high) / 2
            routed = flow.route(mid)
            if routed is None:
                low = mid
            else:
                high, best = mid, routed
    except _TooSlow:
        return out
    assert best is not None  # the upper bound is always feasible
    for (w, job), rows in best.items():
        if rows >= 0.5:  # not a flow pushed back to nothing
            out[job][w] = rows
    return out


class _TooSlow(Exception):
    """The division ran past its budget."""


class _Flow:
    """Max flow on source → workflows → launchers → sink, rebuilt for each load."""

    def __init__(self, work: Mapping[str, float], people: Sequence[Taker],
                 deadline: float) -> None:
        self.work = work
        self.people = people
        self.deadline = deadline
        # Launchers that take fewer workflows come first among a workflow's edges, so the
        # search routes rows to those that cannot take others before the open ones.
        order = sorted(people, key=lambda t: (not t.narrowed, len(t.workflows or ()),
                                              len(t.owners or ()), t.tag_bit is None,
                                              t.job_id))
        self.edges = {w: [t for t in order if t.takes(w)] for w in work}

    def route(self, load: float) -> dict[tuple[str, int], float] | None:
        """The rows each launcher gets when none carries more than ``load`` per weight, or
        None when the work does not fit."""
        left = dict(self.work)  # source → workflow: rows not yet routed
        # Whole rows: with whole capacities every push is whole, so the division is too
        # (fractions rounded up by each leader would over-claim, and one row past an even
        # share is a whole extra wave for its launcher).
        room = {t.job_id: float(max(0, math.floor(load * t.weight - t.held + 1e-9)))
                for t in self.people}  # launcher → sink
        sent: dict[tuple[str, int], float] = {}  # (workflow, launcher) → rows
        need = sum(left.values())
        while need > _EPS:
            if time.monotonic() > self.deadline:
                raise _TooSlow
            found = self._path(left, room, sent)
            if found is None:
                break
            start, steps, end = found
            push = min([left[start], room[end]]
                       + [sent[(w, j)] for w, j, forward in steps if not forward])
            left[start] -= push
            room[end] -= push
            for w, j, forward in steps:
                sent[(w, j)] = sent.get((w, j), 0.0) + (push if forward else -push)
            need -= push
        return sent if need < 0.5 else None

    def _path(self, left: Mapping[str, float], room: Mapping[int, float],
              sent: Mapping[tuple[str, int], float]) -> _Path | None:
        """A shortest augmenting path: from a workflow with rows left, through
        workflow → launcher steps (forward: more rows there; backward: rows already sent
        there move to another launcher), to a launcher with room."""
        to_w: dict[str, _Step | None] = {w: None for w in self.work if left[w] > _EPS}
        to_l: dict[int, _Step] = {}
        queue: deque[str] = deque(to_w)
        while queue:
            w = queue.popleft()
            for t in self.edges[w]:
                if t.job_id in to_l:
                    continue
                to_l[t.job_id] = (w, t.job_id, True)
                if room[t.job_id] > _EPS:
                    return _unwind(to_w, to_l, t.job_id)
                for back in self.work:  # rows sent there may move elsewhere
                    if back not in to_w and sent.get((back, t.job_id), 0.0) > _EPS:
                        to_w[back] = (back, t.job_id, False)
                        queue.append(back)
        return None


_Step = tuple[str, int, bool]  # (workflow, launcher, forward)
_Path = tuple[str, list[_Step], int]  # (start workflow, steps, end launcher)


def _unwind(to_w: Mapping[str, _Step | None], to_l: Mapping[int, _Step], end: int) -> _Path:
    steps: list[_Step] = []
    step = to_l[end]
    while True:
        steps.append(step)
        w = step[0]
        back = to_w[w]
        if back is None:
            steps.reverse()
            return w, steps, end
        steps.append(back)
        step = to_l[back[1]]
