"""The model's part of "No stranded tails" (launcher/dispatch.py ``rebalance``).

Once a claim comes back short the leader keeps no margins, and while its pool is empty it
asks the node holding the most beyond its slots for as many queued tasks as the other
nodes have free slots: a recall message, the node's answer (what it has not started), then
the leader's push of what came back. One recall at a time. ``Policy.recall`` off is the
launcher as it was before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .model import Model, _Leader

HANDLERS = ("recall", "returned")  # event kinds


def maybe_recall(m: Model, ld: _Leader, li: int) -> None:
    """Pool empty, work running out: recall from the node holding the most."""
    if not (m.p.recall and ld.scarce) or ld.recalling or ld.pool >= ld.weight:
        return
    packing = m.case.packing
    free = sum(max(0, packing - n.held) for n in ld.nodes)
    donor = max(range(len(ld.nodes)), key=lambda i: ld.nodes[i].held)
    k = min(free, ld.nodes[donor].held - packing)
    if k > 0:
        ld.recalling = True
        m._at(m.now + m.c.msg_latency_s, "recall", li, donor, k)


def recall(m: Model, li: int, ri: int, k: int) -> None:
    """The node gives back what it has not started (inflight ones arrived first)."""
    node = m.leaders[li].nodes[ri]
    back = min(k, node.queued)
    node.queued -= back
    node.held -= back
    m._at(m.now + m.c.msg_latency_s, "returned", li, back)


def returned(m: Model, li: int, back: int) -> None:
    ld = m.leaders[li]
    ld.recalling = False
    ld.pool += back * ld.weight
    m._cpu(ld, li, ld.weight * m.c.leader_msg_s, "pushed")
