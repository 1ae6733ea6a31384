"""The preference's read (launcher_claim_peers, launcher/preference.py): the workflows
with runnable, unclaimed rows, found by a loose scan of their index, the workflows other
live launchers name in their filters, and — for the division, only while it is needed —
each workflow's rows and each live launcher's filter, nodes and unfinished rows."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from balsam_mpi.launcher.division import Taker, kind
from balsam_mpi.launcher.store import Store
from balsam_mpi.launcher.storeport import ClaimFilter
from balsam_mpi.sql import query
from tests.db.test_hand_back import add, claim, open_job
from tests.db.test_lease import as_superuser, go_silent


def test_runnable_workflows_and_the_live_peers_filters(store: Store, conn: Any) -> None:
    add(conn, 3, workflow="b")
    add(conn, 2, workflow="a")
    taken = add(conn, 1, workflow="c")
    me = open_job(store)
    assert store.claim_peers(me).runnable == ("a", "b", "c")
    claim(store, me, 1, ClaimFilter(("c",)))
    assert taken and store.claim_peers(me).runnable == ("a", "b")  # c's one row claimed
    assert store.claim_peers(me).named == frozenset()
    one = open_job(store, ClaimFilter(("a", "x")))
    open_job(store)  # no filter: names nothing
    assert store.claim_peers(me).named == {"a", "x"}
    assert store.claim_peers(one).named == frozenset()  # its own filter is not a peer's
    go_silent(conn, one)  # its lease ran out: no longer a live peer
    assert store.claim_peers(me).named == frozenset()


def test_the_scan_stops_after_65_workflows(store: Store, conn: Any) -> None:
    for i in range(70):
        add(conn, 1, workflow=f"w{i:02}")
    me = open_job(store)
    assert len(store.claim_peers(me).runnable) == 65


def test_the_scan_probes_the_runnable_index(conn: Any) -> None:
    sql = query("launcher_claim_peers")
    plan = "\n".join(r[0] for r in conn.execute(
        "EXPLAIN " + sql.replace("%(job)s", "0")).fetchall())
    assert "tasks_runnable_workflow" in plan and "Seq Scan on tasks" not in plan, plan


def test_the_divisions_counts_only_while_a_live_launcher_filters(store: Store,
                                                                 conn: Any) -> None:
    add(conn, 3, workflow="a")
    add(conn, 5, workflow="b")
    me = open_job(store)
    assert store.claim_peers(me).takers == ()  # alone: nothing to divide
    other = open_job(store)
    assert store.claim_peers(me).takers == ()  # nobody filters: the usual claims
    one = open_job(store, ClaimFilter(("a",)))
    assert len(claim(store, one, 2, ClaimFilter(("a",)))) == 2
    peers = store.claim_peers(me)
    assert peers.counts == {"a": 1, "b": 5}  # claimed rows are not counted
    assert peers.takers == (Taker(me.job_id, None, 1.0, 0.0),
                            Taker(other.job_id, None, 1.0, 0.0),
                            Taker(one.job_id, frozenset({"a"}), 1.0, 2.0))
    with as_superuser(conn) as su:  # members cannot write tasks directly (0007)
        su.execute("UPDATE tasks SET state = 'RUNNING' WHERE batch_job_id = %s",
                   (one.job_id,))
        assert store.claim_peers(me).takers[2].held == 2.0  # running rows are held
        su.execute("UPDATE tasks SET state = 'RUN_DONE' WHERE batch_job_id = %s",
                   (one.job_id,))
    assert store.claim_peers(me).takers[2].held == 0.0  # ended rows are not
    go_silent(conn, one)
    assert store.claim_peers(me).takers == ()  # the filtered one is gone


def test_an_owner_filter_makes_the_division_count_per_owner(store: Store,
                                                            conn: Any) -> None:
    """Members each running a launcher for their own tasks: a launcher limited to
    alice's tasks cannot take a whole workflow, so the rows are counted per owner."""
    add(conn, 2, workflow="a")  # the test's own role
    with as_superuser(conn) as su:
        app = su.execute("SELECT id FROM apps WHERE name = 'a'").fetchone()[0]
        for owner, n in (("alice", 3), ("bob", 1)):
            su.execute("INSERT INTO tasks (workflow, app_id, state, owner) SELECT 'a', %s, "
                       "'READY', %s FROM generate_series(1, %s)", (app, owner, n))
    add(conn, 4, workflow="b")
    me = open_job(store)
    other = open_job(store, ClaimFilter((), (), ("alice",)))
    mine = conn.execute("SELECT session_user").fetchone()[0]
    peers = store.claim_peers(me)
    assert peers.counts == {kind("a", "alice"): 3, kind("a", "bob"): 1, kind("a", mine): 2,
                            kind("b", mine): 4}
    assert peers.takers == (Taker(me.job_id, None, 1.0, 0.0, None),
                            Taker(other.job_id, None, 1.0, 0.0, frozenset({"alice"})))
    assert [t.takes(kind("a", "alice")) for t in peers.takers] == [True, True]
    assert [t.takes(kind("a", "bob")) for t in peers.takers] == [True, False]
    go_silent(conn, other)
    assert store.claim_peers(me).counts == {}  # no filter left: the usual claims


def test_a_tag_filter_makes_the_division_count_per_tag_signature(store: Store,
                                                                conn: Any) -> None:
    """A launcher per site beside an open one: the rows are counted per signature (which
    of the live tag filters each matches), and a planned claim of one signature takes
    exactly its rows, leaving the others' alone (0022's not_tags)."""
    site_a = add(conn, 3, workflow="a", tags='{"site": "a", "x": "1"}')
    site_b = add(conn, 2, workflow="a", tags='{"site": "b"}')
    plain = add(conn, 4, workflow="a")
    me = open_job(store)
    a_job = open_job(store, ClaimFilter((), (("site", "a"),)))
    b_job = open_job(store, ClaimFilter((), (("site", "b"),)))
    peers = store.claim_peers(me)
    assert peers.tag_filters == ((("site", "a"),), (("site", "b"),))
    assert peers.counts == {kind("a", None, "10"): 3, kind("a", None, "01"): 2,
                            kind("a", None, "00"): 4}
    assert [t.tag_bit for t in peers.takers] == [None, 0, 1]
    assert [t.takes(kind("a", None, "10")) for t in peers.takers] == [True, True, False]
    # The open launcher's share of untagged rows: none of either site's.
    untagged = ClaimFilter(("a",), (), (), peers.tag_filters)
    assert sorted(claim(store, me, 10, untagged)) == plain
    assert sorted(claim(store, a_job, 10, ClaimFilter(("a",), (("site", "a"),), (),
                                                      ((("site", "b"),),)))) == site_a
    assert sorted(claim(store, b_job, 10, ClaimFilter((), (("site", "b"),)))) == site_b
    go_silent(conn, a_job)
    go_silent(conn, b_job)
    assert store.claim_peers(me).counts == {}  # no filter left: the usual claims
    for i in range(9):  # more distinct tag filters than a division is worth
        open_job(store, ClaimFilter((), (("k", str(i)),)))
    assert store.claim_peers(me).counts == {}


@pytest.mark.parametrize("filters", [
    '"wf"', '{"workflows": "wf"}', '{"workflows": [{"a": 1}]}', '{"workflows": [1]}',
    '{"owners": ["u", null]}', '{"tags": ["x"]}',
    # Since 0022 the division reads tag filters too, and keys claims by them: a value
    # that is not text (a leader could not hash it) is refused as well.
    '{"tags": {"a": {"b": 1}}}', '{"tags": {"a": [1]}}', '{"tags": {"a": 1}}',
    '{"tags": {"a": null}}',
])
def test_a_filter_of_another_shape_is_refused(conn: Any, filters: str) -> None:
    """Stored as given, such a filter broke every launcher's read of its peers (the
    division's read handed a leader values it could not use) and hunger (0019)."""
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("SELECT * FROM launcher_open_job(NULL, 'local', NULL, 'h', 1, 1, "
                     "%s::jsonb, NULL, 60)", (filters,))
    conn.rollback()
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("SELECT batch_job_submit('local', 'h', 1, %s::jsonb, NULL)", (filters,))
    conn.rollback()


def test_a_live_job_whose_filters_predate_the_check_is_left_out(store: Store,
                                                                conn: Any) -> None:
    """A filter stored before 0022 with a tag value that is not text (the constraint is
    not re-checked on old rows) must not reach a leader's division."""
    add(conn, 2, workflow="a")
    me = open_job(store)
    odd = open_job(store, ClaimFilter((), (("site", "a"),)))
    with as_superuser(conn) as su:
        su.execute("ALTER TABLE batch_jobs DROP CONSTRAINT batch_jobs_filters_shape")
        su.execute("""UPDATE batch_jobs SET filters = '{"tags": {"site": {"x": 1}}}' """
                   "WHERE id = %s", (odd.job_id,))
    peers = store.claim_peers(me)
    assert [t.job_id for t in peers.takers] == [] and peers.tag_filters == ()


def test_the_filters_a_launcher_writes_are_accepted(store: Store, conn: Any) -> None:
    wanted = ClaimFilter(("a", "b"), {"k": "v"}, ("me",))
    lease = open_job(store, wanted)  # the constraint would have refused it
    assert conn.execute("SELECT filters FROM batch_jobs WHERE id = %s",
                        (lease.job_id,)).fetchone()[0] == wanted.as_json()
