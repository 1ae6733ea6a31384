"""Migration 0015: a launcher hands queued, unstarted tasks back to the database when
another live launcher is hungry for them (launcher/giveback.py). The database decides
what may go: only the caller's own claims, at its epoch, never started, that a hungry
launcher's filters take; hunger goes stale when not renewed."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from balsam_mpi.launcher.store import Store
from balsam_mpi.launcher.storeport import ClaimFilter, Lease
from balsam_mpi.protocol import Started
from tests.db.test_checked_writes import as_role, roles, su  # noqa: F401  (fixtures)
from tests.db.test_lease import as_superuser

T0 = 1_900_000_000.0


def add(conn: Any, n: int, workflow: str = "w", tags: str = "{}") -> list[int]:
    app = conn.execute("INSERT INTO apps (name, command) VALUES ('a', 'true') "
                       "ON CONFLICT (name) DO UPDATE SET command = 'true' RETURNING id"
                       ).fetchone()[0]
    rows = conn.execute("INSERT INTO tasks (workflow, app_id, state, tags) SELECT %s, %s, "
                        "'READY', %s::jsonb FROM generate_series(1, %s) RETURNING id",
                        (workflow, app, tags, n)).fetchall()
    return [r[0] for r in rows]


ANY = ClaimFilter()  # no filters: takes every task


def open_job(store: Store, filters: ClaimFilter = ANY) -> Lease:
    return store.open_job(job_id=None, scheduler="local", scheduler_job_id=None, host="h",
                          nodes=1, ranks=1, filters=filters, wall_time_min=None,
                          lease_sec=60.0)


def claim(store: Store, lease: Lease, limit: int,
          filters: ClaimFilter = ANY) -> list[int]:
    return [r.id for r in store.claim(lease, limit=limit, capacity=100.0, max_need=1.0,
                                      filters=filters)]


def free(conn: Any, ids: list[int]) -> bool:
    return all(r[0] is None for r in conn.execute(
        "SELECT batch_job_id FROM tasks WHERE id = ANY (%s)", (ids,)).fetchall())


def test_unstarted_claims_go_back_to_a_hungry_launcher(store: Store, conn: Any) -> None:
    ids = add(conn, 6)
    a = open_job(store)
    assert claim(store, a, 6) == ids
    store.report(a, [Started(i, a.epoch, T0) for i in ids[:2]], [])
    assert store.hunger(a, hungry=False, holding=True) is False  # nobody hungry yet
    b = open_job(store, ClaimFilter(("w",)))
    assert claim(store, b, 4, ClaimFilter(("w",))) == []
    assert store.hunger(b, hungry=True, holding=False) is False
    assert store.hunger(a, hungry=False, holding=True) is True
    assert sorted(store.give_back(a, ids)) == ids[2:]  # the started two stay
    assert free(conn, ids[2:]) and not free(conn, ids[:2])
    assert claim(store, b, 4, ClaimFilter(("w",))) == ids[2:]
    assert store.hunger(a, hungry=False, holding=True) is False  # nothing left to give
    # Nothing was counted against them: no retry, no event beyond the claim's.
    rows = conn.execute("SELECT state::text, lost_retries, error_retries FROM tasks "
                        "WHERE id = ANY (%s)", (ids[2:],)).fetchall()
    assert set(rows) == {("READY", 0, 0)}


@pytest.mark.parametrize("filters, taken", [
    (ClaimFilter(("x",)), []),
    (ClaimFilter(tags=(("k", "v"),)), [0, 1]),
    (ClaimFilter(owners=("nobody",)), []),
    (ClaimFilter(("w",), (("k", "v"),)), [0, 1]),
])
def test_only_what_the_hungry_launchers_filters_take(store: Store, conn: Any,
                                                     filters: ClaimFilter,
                                                     taken: list[int]) -> None:
    tagged = add(conn, 2, tags='{"k": "v", "z": "1"}')
    plain = add(conn, 2)
    a = open_job(store)
    assert sorted(claim(store, a, 4)) == sorted(tagged + plain)
    b = open_job(store, filters)
    store.hunger(b, hungry=True, holding=False)
    assert store.hunger(a, hungry=False, holding=True) is bool(taken)
    assert sorted(store.give_back(a, tagged + plain)) == [tagged[i] for i in taken]


def test_hunger_that_is_not_renewed_or_has_ended_takes_nothing(store: Store,
                                                              conn: Any) -> None:
    ids = add(conn, 3)
    a = open_job(store)
    claim(store, a, 3)
    b = open_job(store)
    store.hunger(b, hungry=True, holding=False)
    assert store.hunger(a, hungry=False, holding=True) is True
    with as_superuser(conn) as su_conn:  # B's last beat was 10 s ago: it may have died
        su_conn.execute("UPDATE batch_jobs SET hungry_at = now() - interval '10 s' "
                        "WHERE id = %s", (b.job_id,))
    assert store.hunger(a, hungry=False, holding=True) is False
    assert store.give_back(a, ids) == []
    store.hunger(b, hungry=True, holding=False)
    store.hunger(b, hungry=False, holding=False)  # fed: no longer hungry
    assert store.hunger(a, hungry=False, holding=True) is False
    store.hunger(b, hungry=True, holding=False)
    store.close_job(b, "FINISHED", "done")  # a closed job is not hungry
    assert store.give_back(a, ids) == []
    assert not free(conn, ids)


def test_a_superseded_epoch_or_another_members_job_gives_nothing(
        store: Store, conn: Any, su: psycopg.Connection[Any],  # noqa: F811
        roles: dict[str, str]) -> None:  # noqa: F811
    ids = add(conn, 2)
    a = open_job(store)
    claim(store, a, 2)
    b = open_job(store)
    store.hunger(b, hungry=True, holding=False)
    assert store.give_back(Lease(a.job_id, a.epoch + 1, True), ids) == []
    with as_role(su, roles["bob"]) as c:
        with pytest.raises(psycopg.Error) as err:
            c.execute("SELECT launcher_give_back(%s, %s, %s)", (a.job_id, a.epoch, ids))
        assert err.value.sqlstate == "42501"
    with as_role(su, roles["bob"]) as c:  # nor may he mark another's job hungry
        with pytest.raises(psycopg.Error) as err:
            c.execute("SELECT launcher_hunger(%s, %s, true, false)", (a.job_id, a.epoch))
        assert err.value.sqlstate == "42501"
    assert not free(conn, ids)


def test_an_idle_launcher_learns_which_holders_hold_work_queued_for_it(
        store: Store, conn: Any) -> None:
    """launcher_held_elsewhere's last column (claims.py, HANDBACK_WAIT_S): a holder with
    unstarted single-node tasks these filters match may hand them back; one that runs
    them all, or holds only what the filters leave, has nothing to give."""
    ids = add(conn, 4)
    other = add(conn, 2, workflow="x")
    a = open_job(store)
    assert sorted(claim(store, a, 6)) == sorted(ids + other)
    b = open_job(store)
    assert [(h.job_id, h.queued) for h in store.held_elsewhere(b, ANY, 1)] == [(a.job_id, True)]
    only_w = ClaimFilter(("w",))
    store.report(a, [Started(i, a.epoch, T0) for i in ids], [])
    assert [(h.job_id, h.queued) for h in store.held_elsewhere(b, only_w, 1)] == [
        (a.job_id, False)]  # held (running), but nothing queued for these filters
    assert [h.queued for h in store.held_elsewhere(b, ANY, 1)] == [True]  # the x tasks
