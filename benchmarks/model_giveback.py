"""The model's part of handing back between launchers (launcher/giveback.py, 0015).

Every ``Policy.hunger_beat_s`` each leader makes one small database call, in order on its
database thread: it records whether it is hungry (its last claim was short or empty and
it has free slots) and hears whether another live leader is. While another is hungry a
leader keeps no margins; one that holds queued tasks also recalls every one from its nodes
(a message each way), gives its own free slots what came back, and releases the rest to
the table (one more call). A leader whose claim found nothing looks again every
``relook_s`` while its nodes are busy, as the launcher does, so it takes what others
release. The model has no filters: every leader takes every task.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .model_recall import maybe_recall

if TYPE_CHECKING:
    from .model import Model

HUNGER_FRESH_S = 3.0  # as 0015: hunger not renewed for this long no longer counts


HANDLERS = ("beat", "heard", "recall_all", "gave", "released", "relook")  # event kinds


def start_beats(m: Model) -> None:
    if not m.p.give_back:
        return
    n = len(m.leaders)
    for li in range(n):  # staggered, as independent launchers are
        m._at(m.p.hunger_beat_s * (1 + li / n), "beat", li)


def beat(m: Model, li: int) -> None:
    ld = m.leaders[li]
    if ld.closed_at is not None:
        return
    m._db(ld, li, m.c.claim(0), "heard")
    m._at(m.now + m.p.hunger_beat_s, "beat", li)


def heard(m: Model, li: int) -> None:
    ld = m.leaders[li]
    packing = m.case.packing
    free = sum(max(0, packing - n.held) for n in ld.nodes)
    ld.hungry_at = m.now if (ld.scarce or ld.exhausted) and free > 0 else None
    holding = ld.pool >= ld.weight or any(n.queued or n.inflight for n in ld.nodes)
    # Another hungry: no margins (as launcher_hunger answers a leader holding nothing);
    # a holder also recalls and releases (the model has no filters: every leader takes
    # every task).
    ld.others_hungry = any(
        o is not ld and o.closed_at is None and o.hungry_at is not None
        and m.now - o.hungry_at < HUNGER_FRESH_S for o in m.leaders)
    maybe_recall(m, ld, li)  # the leader's own rebalance runs on a timer too
    if not (ld.others_hungry and holding) or ld.giving:
        return
    asked = [ri for ri, n in enumerate(ld.nodes) if n.queued or n.inflight]
    ld.giving = len(asked)
    for ri in asked:
        m._at(m.now + m.c.msg_latency_s, "recall_all", li, ri)
    if not asked:
        gave(m, li, 0, answered=False)


def recall_all(m: Model, li: int, ri: int) -> None:
    node = m.leaders[li].nodes[ri]
    back = node.queued
    node.queued = 0
    node.held -= back
    m._at(m.now + m.c.msg_latency_s, "gave", li, back)


def gave(m: Model, li: int, back: int, answered: bool = True) -> None:
    ld = m.leaders[li]
    ld.pool += back * ld.weight
    ld.giving -= int(answered)
    m._push(ld, li)  # own free slots first
    if ld.giving > 0:
        return
    amount = ld.pool if ld.pool >= ld.weight else 0.0
    ld.pool -= amount
    ld.giving = 0
    if amount:
        m._db(ld, li, m.c.claim(amount), "released", amount)


def released(m: Model, li: int, amount: float) -> None:
    m.remaining += amount
    m.leaders[li].given += amount


def relook(m: Model, li: int) -> None:
    """A leader whose claim found nothing looks again while its nodes are busy."""
    ld = m.leaders[li]
    if ld.closed_at is not None or not ld.exhausted:
        return
    if m._want(ld) >= 1:
        ld.exhausted = False
        m._try_claim(ld, li)
    else:
        m._at(m.now + m.p.relook_s, "relook", li)
