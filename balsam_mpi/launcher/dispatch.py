"""Which node gets which claimed task: the leader's pool, its picture of every node, and
the ASSIGN messages (tasks to start, ids to kill).

A node is sent at most its free share plus a margin that follows its pace
(``workerview.Pace``); assignments it had not yet acknowledged when it wrote its last
report are counted as taken, so crossing messages never overcommit it. The leader's own
local node is fed the same way, directly.

Multi-node tasks (``num_nodes > 1``) go to worker nodes only, whole and idle: the first
reserved node is the head (it starts the task with the launch prefix over every reserved
node's HELLO host), the others hold their node until the head's task ends. While the
oldest such task waits, the workers closest to idle are reserved for it and get no new
small tasks, so a stream of small tasks cannot starve it; the leader's own node keeps
running small ones. A killed waiting task gives its reserved nodes back at once.

Free capacity comes before queue depth: tasks go first to nodes with room to start them
now (the leader's own node first), and only then into the queues of busy nodes (their
margin), so no node idles while claimed tasks wait behind a long task elsewhere.

The local node gets its run orders and kills from here, as a worker gets them in an
ASSIGN; it is stepped (tasks started, exits noticed) only by the leader's loop.

**No stranded tails.** Margins are worth queueing only while the database has more work
than the nodes can start. Once a claim comes back short (``scarce``: it left room for
at least one more of its rows unfilled, or found nothing), margins are zero: tasks go to
free slots only, and the claims ask for free slots only, until a claim is full again.
Tasks queued before that on busy nodes would still wait there while other nodes idle, so
with the pool empty the leader *recalls* them (``rebalance``): it asks the busiest nodes
for as many of their queued tasks as other nodes have free slots (ASSIGN ``recall``);
a node drops those still queued and names them in its next REPORT (``returned``) — the
rest had started and stay where they are. Only a task its node named as returned, that
the leader had recalled from that very node and not seen start, goes back to the pool;
so a task given back is never run twice. One recall at a time: the next waits until
every recalled node has answered (or is declared dead, which returns all it never
started anyway). The leader's own node gives back at once, in-process.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence

from ..node.node import Node
from ..node.resources import EPS, NODE_CAPACITY
from ..protocol import LOCAL, Assign, Drain, EndKind, Finished, Report, RunOrder
from .kills import KillTracker
from .workerview import Pace, Wants, WorkerView, room


class Dispatcher:
    def __init__(self, local: Node, send: Callable[[int, Assign | Drain], None], *,
                 margin: float = 0.5, margin_max: float = 1.0, horizon_s: float = 2.0,
                 kill_poll_s: float = 1.5) -> None:
        self.local = local
        self.local_pace = Pace()
        self.send = send
        # A node's margin (resources.Pace): ``margin`` until its pace is known, then what
        # it finishes in ``horizon_s``, at most ``margin_max``.
        self.initial_margin = margin
        self.margin_max = max(margin, margin_max)
        self.horizon_s = horizon_s
        self.pool: deque[RunOrder] = deque()
        self.workers: dict[int, WorkerView] = {}
        self.seq = 0
        self.kills = KillTracker(kill_poll_s)
        self.local_open = True  # False once draining
        self.big: deque[RunOrder] = deque()  # multi-node tasks waiting for whole nodes
        self.reserved: set[int] = set()  # ranks kept free for big[0]
        self.spans: dict[int, list[int]] = {}  # running multi-node task -> ranks, head 1st
        self.in_big: set[int] = set()  # ranks of those: no small tasks queued behind them
        self.scarce = False  # the last claim came back short: no margins (see above)
        # Another launcher is hungry for tasks held here: no margins either, and what no
        # node has started goes back to the database (launcher/giveback.py).
        self.others_hungry = False
        self.recalling: dict[int, int] = {}  # task id -> rank asked to give it back
        self.recall_seq: dict[int, int] = {}  # rank -> seq of the ASSIGN that asked

    def margin(self, pace: Pace) -> float:
        """The share a node may hold beyond its free capacity (see workerview.Pace);
        none while the database has less work than the nodes could queue."""
        if self.scarce or self.others_hungry:
            return 0.0
        return pace.margin(time.monotonic(), initial=self.initial_margin,
                           horizon_s=self.horizon_s, cap=self.margin_max)

    def demand(self) -> float:
        """How much (in node shares) the nodes could take now beyond the pool."""
        return self.wants().total

    def wants(self) -> Wants:
        """What the nodes could take now beyond the pool, and their margins in all (node
        shares)."""
        self.local_pace.record(self.local.done_share, time.monotonic())
        total = margins = 0.0
        if self.local_open:
            margins = self.margin(self.local_pace)
            total = max(0.0, self.local.free() + margins)
        for v in self.workers.values():
            if v.rank in self.reserved or v.rank in self.in_big or not v.alive or v.draining:
                continue
            margin = self.margin(v.pace)
            total += room(v, margin)
            margins += margin
        return Wants(total - sum(t.need for t in self.pool), margins)

    def hungry(self) -> bool:
        """The last claim came back short and free slots are still empty."""
        return self.scarce and self.demand() > EPS

    def holds_unstarted(self) -> bool:
        """Claimed tasks no node has started: in the pool, or queued beyond a node's
        free slots (what a recall could take back)."""
        return bool(self.pool) or (self.local_open and self.local.free() < -EPS) or any(
            v.alive and v.free() < -EPS for v in self.workers.values())

    def max_nodes(self) -> int:
        """The largest num_nodes worth claiming now: the live workers, or 1 while a
        multi-node task already waits (big tasks are not hoarded)."""
        if self.big:
            return 1
        return max(1, sum(1 for v in self.workers.values() if v.alive and not v.draining))

    def reported(self, rank: int, msg: Report) -> WorkerView:
        view = self.workers.setdefault(rank, WorkerView(rank))
        view.update(msg.free, msg.acked, msg.running, msg.queued, msg.done_share,
                    time.monotonic())
        return view

    def _take(self, space: float) -> list[RunOrder]:
        out: list[RunOrder] = []
        while self.pool and self.pool[0].need <= space + EPS:
            order = self.pool.popleft()
            if order.num_nodes > 1:
                self.big.append(order)  # placed on whole worker nodes (place_big)
                continue
            space -= order.need
            out.append(order)
        return out

    def _sift(self) -> None:
        """Move multi-node tasks at the head of the pool to the big queue."""
        while self.pool and self.pool[0].num_nodes > 1:
            self.big.append(self.pool.popleft())

    def _room(self, view: WorkerView, margin: bool = True) -> float:
        if view.rank in self.reserved or view.rank in self.in_big:
            return 0.0
        return room(view, self.margin(view.pace) if margin else 0.0)

    def place_big(self) -> None:
        """Start the oldest multi-node tasks whose nodes are free; reserve nodes for the
        first one that has to wait."""
        self._sift()
        self.reserved = set()
        while self.big:
            order = self.big[0]
            usable = [v for v in self.workers.values() if v.alive and not v.draining]
            if len(usable) < order.num_nodes:
                return  # workers still joining (the claim never asks for more than live)
            # Closest to idle first; ties by rank, so the head is stable.
            usable.sort(key=lambda v: (not v.idle(), v.running + v.queued, v.rank))
            chosen = usable[:order.num_nodes]
            if not all(v.idle() and v.reported_free >= NODE_CAPACITY - EPS for v in chosen):
                self.reserved = {v.rank for v in chosen}
                return
            self.big.popleft()
            self._start_big(order, chosen)

    def _start_big(self, order: RunOrder, nodes: Sequence[WorkerView]) -> None:
        head, rest = nodes[0], nodes[1:]
        order = order._replace(hosts=tuple(v.host for v in nodes))
        self.seq += 1
        head.sent(self.seq, NODE_CAPACITY)
        self.kills.placed((order,), head.rank)
        self.send(head.rank, Assign(self.seq, (order,)))
        for view in rest:
            self.seq += 1
            view.sent(self.seq, NODE_CAPACITY)
            self.send(view.rank, Assign(self.seq, hold=(order,)))
        self.spans[order.id] = [v.rank for v in nodes]
        self.in_big.update(v.rank for v in nodes)

    def ended(self, finished: Sequence[Finished]) -> None:
        """Release the nodes that held for multi-node tasks that ended."""
        if not self.spans:
            return
        for fin in finished:
            ranks = self.spans.pop(fin.id, None)
            if ranks is None:
                continue
            self.in_big.difference_update(ranks)
            for rank in ranks[1:]:
                view = self.workers.get(rank)
                if view is not None and view.alive:
                    self.seq += 1
                    self.send(rank, Assign(self.seq, release=(fin.id,)))

    def answer_adds(self, rank: int, added: tuple[tuple[int, tuple[int, ...], str], ...]
                    ) -> None:
        """The ids of the tasks a worker's tasks added (task_api)."""
        self.seq += 1
        self.send(rank, Assign(self.seq, added=added))

    def assign_to(self, view: WorkerView, always: bool = False,
                  margin: bool = True) -> None:
        """Send ``view`` what fits its room, with its margin or without (an empty ASSIGN
        too when ``always``: the answer to a REPORT)."""
        if self.big or (self.pool and self.pool[0].num_nodes > 1):
            self.place_big()
        tasks = self._take(self._room(view, margin))
        if not tasks and not always:
            return
        self.seq += 1
        view.sent(self.seq, sum(t.need for t in tasks))
        self.kills.placed(tasks, view.rank)
        self.send(view.rank, Assign(self.seq, tuple(tasks)))

    def fill_local(self, margin: bool = True) -> None:
        if not self.local_open:
            return
        space = self.local.free() + (self.margin(self.local_pace) if margin else 0.0)
        if self.pool and self.pool[0].need <= space + EPS:
            tasks = self._take(space)
            self.kills.placed(tasks, LOCAL)
            self.local.enqueue(tasks)  # started by the leader's next step of its node

    def push(self) -> None:
        """Unprompted ASSIGNs after a claim found new work: first what nodes can start
        now (the leader's own node first), then the queues of busy ones."""
        self.place_big()
        self.fill_local(margin=False)
        for margin in (False, True):
            for view in self.workers.values():
                if not self.pool:
                    return
                if view.alive and self._room(view, margin) >= self.pool[0].need - EPS:
                    self.assign_to(view, margin=margin)
        self.fill_local()

    def kill(self, killed: Iterable[int]) -> int:
        """Stop these tasks wherever they are; returns how many were out."""
        gone = set(killed)
        self.pool = deque(t for t in self.pool if t.id not in gone)
        was_big = len(self.big)
        if self.big:
            self.big = deque(t for t in self.big if t.id not in gone)
        n = 0
        for rank, ids in self.kills.by_rank(gone).items():
            n += len(ids)
            if rank == LOCAL:
                self.local.kill(ids, EndKind.KILLED)
            elif rank in self.workers and self.workers[rank].alive:
                self.seq += 1
                self.send(rank, Assign(self.seq, (), tuple(ids)))
        if len(self.big) != was_big:
            # The nodes kept for a killed waiting task: free (or kept for the next one).
            self.reserved = set()
            self.push()
        return n

    def bury(self, rank: int, reason: str) -> tuple[list[int], int]:
        """A worker that stopped answering: nothing more goes to it (it is told to cut
        everything, should it wake), the multi-node tasks it took part in give their
        other nodes back, and what it had never started returns to the pool. Returns
        (ids it had started, to be written as lost; how many went back to the pool)."""
        view = self.workers.get(rank)
        if view is not None:
            if view.alive:
                self.send(rank, Drain(reason, 0.0, True))
            view.alive = False
            view.draining = True
        started, waiting = self.kills.on_rank(rank)
        self.recall_seq.pop(rank, None)
        self._settle_recalls(rank)  # what it never started comes back below, once
        mine = set(started) | {t.id for t in waiting}
        for task_id, ranks in list(self.spans.items()):
            if rank not in ranks:
                continue
            ranks.remove(rank)
            self.in_big.discard(rank)
            if task_id in mine:  # it was the head: the other nodes stop holding
                del self.spans[task_id]
                self.in_big.difference_update(ranks)
                for other in ranks:
                    if other in self.workers and self.workers[other].alive:
                        self.seq += 1
                        self.send(other, Assign(self.seq, release=(task_id,)))
        self.pool.extendleft(reversed([t for t in waiting if t.num_nodes == 1]))
        self.big.extendleft(reversed([t for t in waiting if t.num_nodes > 1]))
        self.reserved = set()
        self.push()
        return started, len(waiting)

    # -- recalls: queued tasks moved from busy nodes to free slots ---------------------------
    def rebalance(self, to_database: bool = False) -> int:
        """With the work running out (``scarce``, the pool empty), recall queued tasks
        from the nodes that cannot start them yet, as many as other nodes have free
        slots for; ``to_database``: every one of them, for another launcher
        (giveback.py). Returns how many were asked back."""
        wanted = self.others_hungry if to_database else self.scarce
        if not wanted or self.pool or self.recalling or self.big:
            return 0
        views = [v for v in self.workers.values() if v.alive and not v.draining
                 and v.rank not in self.reserved and v.rank not in self.in_big]
        local_free = self.local.free() if self.local_open else 0.0
        free = max(0.0, local_free) + sum(max(0.0, v.free()) for v in views)
        excess = {v.rank: -v.free() for v in views if v.free() < -EPS}
        if self.local_open and local_free < -EPS:
            excess[LOCAL] = -local_free
        if to_database:
            free = float("inf")
        if free < EPS or not excess:
            return 0
        unstarted = self._unstarted(set(excess))
        asked = 0
        for rank in sorted(excess, key=lambda r: -excess[r]):
            take, room_left = [], min(excess[rank], free)
            for order in reversed(unstarted.get(rank, [])):  # the last queued first
                if order.need > room_left + EPS:
                    break
                take.append(order)
                room_left -= order.need
            if not take:
                continue
            free -= sum(o.need for o in take)
            asked += len(take)
            self._recall(rank, take)
            if free < EPS:
                break
        if self.pool:  # the leader's own node gave back at once
            self.push()
        return asked

    def _unstarted(self, ranks: set[int]) -> dict[int, list[RunOrder]]:
        """These ranks' tasks not reported started, in the order they were sent."""
        if LOCAL in ranks:
            out = {LOCAL: list(self.local.queue)}
        else:
            out = {}
        started, orders = self.kills.started, self.kills.orders
        for task_id, rank in self.kills.where.items():
            if rank in ranks and rank != LOCAL and task_id not in started:
                order = orders.get(task_id)
                if order is not None:
                    out.setdefault(rank, []).append(order)
        return out

    def _recall(self, rank: int, orders: list[RunOrder]) -> None:
        if rank == LOCAL:
            back = self.local.give_back(o.id for o in orders)
            for order in back:
                self.kills.forget(order.id)
            self.pool.extendleft(reversed(back))
            return
        self.seq += 1
        self.recall_seq[rank] = self.seq
        self.recalling.update((o.id, rank) for o in orders)
        self.send(rank, Assign(self.seq, recall=tuple(o.id for o in orders)))

    def took_back(self, rank: int, returned: Sequence[int], acked: int) -> int:
        """A worker's answer to a recall: the tasks it gave back go to the head of the
        pool — only those recalled from it and never seen started (fencing); once it has
        applied the recall, the rest of what was asked stays where it started. Returns
        how many went back to the pool."""
        back: list[RunOrder] = []
        for task_id in returned:
            order = self.kills.orders.get(task_id)
            if (self.recalling.get(task_id) != rank or order is None
                    or self.kills.where.get(task_id) != rank
                    or task_id in self.kills.started):
                continue  # not ours to take back from it (killed meanwhile, or foreign)
            del self.recalling[task_id]
            self.kills.forget(task_id)
            back.append(order)
        seq = self.recall_seq.get(rank)
        if seq is not None and acked >= seq:
            del self.recall_seq[rank]
            self._settle_recalls(rank)
        self.pool.extendleft(reversed(back))
        return len(back)

    def _settle_recalls(self, rank: int) -> None:
        for task_id in [i for i, r in self.recalling.items() if r == rank]:
            del self.recalling[task_id]

    def all_idle(self) -> bool:
        return (not self.pool and not self.big and not self.local.busy()
                and all(v.idle() or not v.alive for v in self.workers.values()))
