"""A discrete-event model of the launcher: leaders, their database thread, worker nodes.

It follows the launcher's own rules (leader.py, launcher/dispatch.py): a node holds up to its
capacity plus a margin in tasks (running + queued + assigned on the way), the margin
following the node's pace (:class:`balsam_mpi.node.resources.Pace`, used as is: what the node
finishes in ``claim_horizon_s``, between 0.05 and ``claim_margin_max`` of a node,
``claim_margin`` until two completions are seen); the leader
answers every REPORT at once with an ASSIGN from its pool; it keeps one claim in flight,
asking for what the nodes can take (capped by ``claim_limit``); it flushes buffered
starts and ends when ``flush_size`` wait or the oldest is ``flush_interval_s`` old; claims
and flushes run on two database threads per leader, claims on one and the rest on the
other (``Policy.claim_connection``; off, all in order on one). A node starts its queued
tasks one after another (each costs ``spawn_s`` of the node's one worker process) and
reports its changes at once, one REPORT per pass of its loop (tasks ending together are
reported together, so the first node to report gets first pick of the leader's pool —
which is how a node's queue can hold tasks while another node idles, at the end of a
run, as measured before the recall). Once a claim comes back short the leader keeps no
margins, and while its pool is empty it recalls queued tasks from nodes holding more than
they can start to nodes with free slots (dispatch.py, "No stranded tails": a recall
message, the node's answer, then the leader's push; one recall at a time:
``model_recall.py``). Between launchers, queued tasks
go back to the table for a leader that is hungry (``model_giveback.py``,
``Policy.give_back``). Every cost is a :class:`Costs` field measured elsewhere
(scenarios `leader`, `noop`, `utilization`, `ceiling`); see ``ASSUMPTIONS``.

Scale: a node is simulated per task slot, but with ``reps`` < nodes only ``reps``
representative nodes per launcher are simulated, each standing for ``nodes / reps``
identical nodes: its reports cost the leader that many times over, and its claims take
that many tasks. With fixed task durations the nodes of a launcher behave alike, so this
keeps the events per task slot, not per node; the error it adds is measured in tests.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from balsam_mpi.launcher.workerview import Pace

from . import model_giveback as giveback
from . import model_recall as recalls
from .model_dbhost import DbHost
from .model_params import ASSUMPTIONS, Case, Costs, Policy, Result, interpolate, paired_share

__all__ = ["ASSUMPTIONS", "Case", "Costs", "Model", "Policy", "Result", "interpolate",
           "simulate"]

@dataclass
class _Node:
    free: int
    queued: int = 0
    inflight: int = 0
    spawn_free_at: float = 0.0
    held: int = 0  # what the leader believes the node holds: assigned less reported ends
    done: int = 0  # ends the leader has heard of
    pace: Pace = field(default_factory=Pace)
    report_started: int = 0  # changes waiting for the node's next REPORT
    report_ended: int = 0
    report_due: bool = False


@dataclass
class _Leader:
    nodes: list[_Node]
    weight: float
    pool: float = 0.0
    cpu_free_at: float = 0.0
    db_free_at: float = 0.0
    claims_db_free_at: float = 0.0  # the claims' own connection (Policy.claim_connection)
    claiming: bool = False
    exhausted: bool = False
    scarce: bool = False  # the last claim came back short: no margins (Policy.recall)
    others_hungry: bool = False  # another leader is hungry: no margins, hand back
    hungry_at: float | None = None  # as batch_jobs.hungry_at (model_giveback.py)
    giving: int = 0  # recall answers awaited before the release
    given: float = 0.0
    recalling: bool = False
    flushing: bool = False
    buffered: float = 0.0
    buffered_ends: float = 0.0
    oldest: float | None = None
    timer_at: float | None = None
    cpu_busy: float = 0.0
    db_busy: float = 0.0
    first_start: float = math.inf
    last_end: float = 0.0
    busy_slot_s: float = 0.0
    done: float = 0.0
    closed_at: float | None = None
    claims: int = 0
    flushes: int = 0


class Model:
    def __init__(self, case: Case, costs: Costs, policy: Policy | None = None,
                 trace: bool = False) -> None:
        self.case, self.c, self.p = case, costs, policy or Policy()
        self.starts: list[float] | None = [] if trace else None  # for tests
        reps = min(case.nodes, case.reps or case.nodes)
        self.remaining = float(case.tasks)
        self.leaders = [_Leader([_Node(case.packing) for _ in range(reps)], case.nodes / reps)
                        for _ in range(case.launchers)]
        # Idle nodes report once per report_interval_s: a standing share of the leader's
        # core, so every other leader cost is stretched by 1 / (1 - share).
        share = case.nodes * costs.leader_msg_s / self.p.report_interval_s
        self.stretch = 1.0 / max(1e-3, 1.0 - share)
        self.margin_cap = max(self.p.claim_margin, self.p.claim_margin_max)
        self.heap: list[tuple[float, int, str, tuple[Any, ...]]] = []
        self.db_host = DbHost(case.db_cores)  # model_dbhost.py: 0 cores, unbounded
        self.seq = 0
        self.now = 0.0
        self.rng = random.Random(1)  # the same draws every run: results are repeatable

    # -- plumbing ---------------------------------------------------------------------
    def _at(self, t: float, kind: str, *data: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, data))

    def _cpu(self, ld: _Leader, li: int, cost: float, kind: str, *data: Any) -> None:
        """Queue leader CPU work (FIFO, one core); its effect happens when it is done."""
        cost *= self.stretch
        start = max(self.now, ld.cpu_free_at)
        ld.cpu_free_at = start + cost
        ld.cpu_busy += cost
        self._at(ld.cpu_free_at, kind, li, *data)

    def _db(self, ld: _Leader, li: int, cost: float, kind: str, *data: Any,
            claim: bool = False) -> None:
        """A call on the leader's database thread; a ``claim`` on the claims' own one
        (Policy.claim_connection, as launcher/calls.py routes them), else in the line."""
        own = claim and self.p.claim_connection
        start = self.db_host.reserve(
            max(self.now, ld.claims_db_free_at if own else ld.db_free_at), cost)
        if own:
            ld.claims_db_free_at = start + cost
        else:
            ld.db_free_at = start + cost
        ld.db_busy += cost
        self._at(start + cost, kind, li, *data)

    def run(self, max_events: int = 20_000_000) -> Result:
        for li, _ in enumerate(self.leaders):
            self._at(self.c.startup_s, "ready", li)
        giveback.start_beats(self)
        events = 0
        handlers: dict[str, Callable[..., None]] = {"ready": self._ready, "claimed": self._claimed, "pushed": self._pushed,
                    "report": self._report_arrives, "served": self._served,
                    "assign": self._assign_arrives, "end": self._end,
                    "flushed": self._flushed, "timer": self._timer,
                    "send": self._send_report}
        for part in (giveback, recalls):
            handlers.update({k: partial(getattr(part, k), self) for k in part.HANDLERS})
        while self.heap and events < max_events:
            self.now, _, kind, data = heapq.heappop(self.heap)
            handlers[kind](*data)
            events += 1
        return self._result(events)

    # -- leader -----------------------------------------------------------------------
    def _room(self, ld: _Leader, node: _Node, margins: bool = True) -> int:
        """Tasks the leader may still send this node, as far as its reports tell it."""
        no_margin = not margins or (self.p.recall and ld.scarce) or ld.others_hungry
        margin = 0.0 if no_margin else node.pace.margin(
            self.now, initial=self.p.claim_margin, horizon_s=self.p.claim_horizon_s,
            floor=self.p.margin_floor, cap=self.margin_cap)
        packing = self.case.packing
        return packing + int(margin * packing + 1e-9) - node.held

    def _ready(self, li: int) -> None:
        self._try_claim(self.leaders[li], li)

    def _try_claim(self, ld: _Leader, li: int) -> None:
        if ld.claiming or ld.exhausted:
            return
        want = self._want(ld)
        if want < 1:
            return
        ahead = self.p.claim_ahead * ld.weight * sum(  # claims.AHEAD: margins, to the pool
            self._room(ld, n) - self._room(ld, n, False) for n in ld.nodes)
        limit = min(self.p.claim_limit, max(8, math.ceil(want + ahead)))
        ld.claiming = True
        ld.claims += 1
        rows = min(limit, self.remaining)  # decided when the statement runs: see _claimed
        self._db(ld, li, self.c.claim(rows), "claimed", limit, want, claim=True)

    def _want(self, ld: _Leader) -> float:
        # As dispatch.demand: a node holding more than its room (its margin shrank as
        # its pace changed) asks for nothing, and does not cancel another's room.
        return sum(max(0, self._room(ld, n)) for n in ld.nodes) * ld.weight - ld.pool

    def _claimed(self, li: int, limit: float, want: float) -> None:
        ld = self.leaders[li]
        got = min(limit, self.remaining)
        ld.scarce = got < min(limit, want) - 1e-9  # less than asked: the rows ran out
        if got >= ld.weight:  # whole tasks of the representative nodes
            got = math.floor(got / ld.weight + 1e-9) * ld.weight
        self.remaining -= got
        ld.claiming = False
        if got <= 0:
            ld.exhausted = True
            if self.p.give_back:  # others may hand work back: look again while busy
                self._at(self.now + self.p.relook_s, "relook", li)
            self._maybe_close(ld)
            return
        ld.pool += got
        # The leader builds each claimed task's spec now, then pushes to nodes with room.
        pushes = sum(1 for n in ld.nodes if self._room(ld, n) > 0) * ld.weight
        self._cpu(ld, li, got * self.c.leader_task_s + pushes * self.c.leader_msg_s,
                  "pushed")

    def _pushed(self, li: int) -> None:
        ld = self.leaders[li]
        self._push(ld, li)
        self._try_claim(ld, li)

    def _push(self, ld: _Leader, li: int) -> None:
        """As dispatch.push: every node's free slots first, then their margins."""
        for margins in (False, True):
            for ri, node in enumerate(ld.nodes):
                self._give(ld, li, ri, node, margins)

    def _give(self, ld: _Leader, li: int, ri: int, node: _Node, margins: bool = True) -> None:
        k = min(self._room(ld, node, margins), int(ld.pool / ld.weight + 1e-9))
        if k > 0:
            ld.pool -= k * ld.weight
            node.inflight += k
            node.held += k
            self._at(self.now + self.c.msg_latency_s, "assign", li, ri, k)

    def _report_arrives(self, li: int, ri: int, started: int, ended: int) -> None:
        ld = self.leaders[li]
        cost = ld.weight * (self.c.leader_msg_s + self.c.leader_item_s * (started + ended))
        self._cpu(ld, li, cost, "served", ri, started, ended)

    def _served(self, li: int, ri: int, started: int, ended: int) -> None:
        ld = self.leaders[li]
        if ld.oldest is None and (started or ended):
            ld.oldest = self.now
        ld.buffered += (started + ended) * ld.weight
        ld.buffered_ends += ended * ld.weight
        node = ld.nodes[ri]
        node.held -= ended
        if ended:
            node.done += ended
            node.pace.record(node.done / self.case.packing, self.now)
        self._give(ld, li, ri, ld.nodes[ri])
        self._try_claim(ld, li)
        self._try_flush(ld, li)
        recalls.maybe_recall(self, ld, li)
        self._maybe_close(ld)

    def _try_flush(self, ld: _Leader, li: int) -> None:
        if ld.flushing or not ld.buffered or ld.oldest is None:
            return
        due = ld.oldest + self.p.flush_interval_s
        if ld.buffered < self.p.flush_size and self.now < due:
            if ld.timer_at is None or ld.timer_at > due:
                ld.timer_at = due
                self._at(due, "timer", li)
            return
        ends, starts = ld.buffered_ends, ld.buffered - ld.buffered_ends
        paired = min(starts, ends) * paired_share(self.now - ld.oldest, self.case.duration_s)
        ld.buffered = ld.buffered_ends = 0.0
        ld.oldest = None
        ld.flushing = True
        ld.flushes += 1
        cost = self.c.flush(starts, ends, paired)
        self._db(ld, li, cost, "flushed")

    def _timer(self, li: int) -> None:
        ld = self.leaders[li]
        ld.timer_at = None
        self._try_flush(ld, li)

    def _flushed(self, li: int) -> None:
        ld = self.leaders[li]
        ld.flushing = False
        self._try_flush(ld, li)
        self._maybe_close(ld)

    def _maybe_close(self, ld: _Leader) -> None:
        if ld.closed_at is not None or not ld.exhausted or ld.pool >= ld.weight - 1e-9 or ld.flushing:
            return
        # What the leader knows: every task it sent has been reported ended.
        if ld.buffered or any(n.held > 0 for n in ld.nodes):
            return
        ld.closed_at = max(self.now, ld.cpu_free_at) + self.c.close_s

    # -- nodes ------------------------------------------------------------------------
    def _assign_arrives(self, li: int, ri: int, k: int) -> None:
        node = self.leaders[li].nodes[ri]
        node.inflight -= k
        node.queued += k
        self._start(li, ri, node, ended=0)

    def _end(self, li: int, ri: int) -> None:
        node = self.leaders[li].nodes[ri]
        node.free += 1
        self._start(li, ri, node, ended=1)

    def _start(self, li: int, ri: int, node: _Node, ended: int) -> None:
        """Start what fits, one spawn after another, then report the changes: one REPORT
        per pass of the worker's loop, so tasks ending together are reported together."""
        ld = self.leaders[li]
        started = 0
        t = max(self.now, node.spawn_free_at)
        step = self.c.spawn_s
        if self.c.host_spawn_s > 0 and node.free > 0 and node.queued > 0:
            # One host's cores, shared by the nodes spawning now (this one too): each of
            # them starts a task every ``sharing × host_spawn_s`` at most, so that
            # together they start one every host_spawn_s. (A host booked start by start
            # let one node's pass reserve it ahead, and the other nodes then waited for
            # that pass: the nodes were spawning one after another at one node's pace.)
            sharing = 1 + sum(1 for other in self.leaders for n in other.nodes
                              if n is not node and n.spawn_free_at > self.now)
            step = max(step, sharing * self.c.host_spawn_s)
        while node.free > 0 and node.queued > 0:
            t += step
            node.free -= 1
            node.queued -= 1
            started += 1
            ld.first_start = min(ld.first_start, t)
            if self.starts is not None:
                self.starts.append(t)
            d = self.case.duration_s
            if self.case.jitter:
                d *= 1.0 + self.case.jitter * (2.0 * self.rng.random() - 1.0)
            end = t + d
            ld.last_end = max(ld.last_end, end)
            ld.busy_slot_s += d * ld.weight
            ld.done += ld.weight
            self._at(end, "end", li, ri)
        node.spawn_free_at = t
        node.report_started += started
        node.report_ended += ended
        if (started or ended) and not node.report_due:
            node.report_due = True  # after every event of this instant (heap order)
            self._at(t, "send", li, ri)

    def _send_report(self, li: int, ri: int) -> None:
        node = self.leaders[li].nodes[ri]
        if node.spawn_free_at > self.now:  # still spawning what later events queued
            self._at(node.spawn_free_at, "send", li, ri)
            return
        started, ended = node.report_started, node.report_ended
        node.report_started = node.report_ended = 0
        node.report_due = False
        self._at(self.now + self.c.msg_latency_s, "report", li, ri, started, ended)

    def _result(self, events: int) -> Result:
        out = Result(events=events, db_cores_busy=self.db_host.share(self.now))
        for ld in self.leaders:
            closed = ld.closed_at if ld.closed_at is not None else self.now
            slots = self.case.nodes * self.case.packing
            out.per_launcher.append({
                "slots": slots, "wall_s": closed, "busy_slot_s": ld.busy_slot_s,
                "utilization": ld.busy_slot_s / (slots * closed) if closed else math.nan,
                "done": ld.done, "first_start_s": ld.first_start,
                "last_end_s": ld.last_end, "tail_idle_s": max(0.0, closed - ld.last_end),
                "leader_cpu_busy": ld.cpu_busy / closed if closed else math.nan,
                "db_thread_busy": ld.db_busy / closed if closed else math.nan,
                "claims": ld.claims, "flushes": ld.flushes, "given": ld.given,
            })
        return out


def simulate(case: Case, costs: Costs, policy: Policy | None = None) -> dict[str, float]:
    result = Model(case, costs, policy).run()
    return {**result.summary(), "events": float(result.events)}
