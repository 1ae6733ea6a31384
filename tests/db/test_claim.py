"""The one-statement claim (launcher_claim): exactly once under concurrency, on its index,
filters, priority order, and the running-sum prefix that fits the free capacity."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

from balsam_mpi.base import db
from balsam_mpi.base.project import Project
from balsam_mpi.launcher.store import Store
from balsam_mpi.launcher.storeport import ClaimFilter, Lease


def add_app(conn: psycopg.Connection[Any], name: str = "noop", command: str = "true") -> int:
    row = conn.execute("INSERT INTO apps (name, command) VALUES (%s, %s) RETURNING id",
                       (name, command)).fetchone()
    assert row is not None
    return int(row[0])


def add_tasks(conn: psycopg.Connection[Any], app_id: int, n: int, *, workflow: str = "w",
              packing: int = 1, priority: int = 0, state: str = "READY",
              wall_time_min: float = 0, tags: str = "{}", num_nodes: int = 1) -> list[int]:
    rows = conn.execute(
        "INSERT INTO tasks (workflow, name, app_id, state, node_packing_count, priority, "
        "wall_time_min, tags, num_nodes) SELECT %s, 't', %s, %s, %s, %s, %s, %s::jsonb, %s "
        "FROM generate_series(1, %s) RETURNING id",
        (workflow, app_id, state, packing, priority, wall_time_min, tags, num_nodes, n),
    ).fetchall()
    return [int(r[0]) for r in rows]


def open_lease(store: Store) -> Lease:
    return store.open_job(job_id=None, scheduler="local", scheduler_job_id=None, host="h",
                          nodes=1, ranks=1, filters=ClaimFilter(), wall_time_min=None,
                          lease_sec=60)


def claim(store: Store, lease: Lease, capacity: float = 1000.0, limit: int = 1000,
          **filters: Any) -> list[int]:
    rows = store.claim(lease, limit=limit, capacity=capacity, max_need=1.0,
                       filters=ClaimFilter(**filters))
    return [r.id for r in rows]


def test_claim_marks_rows_and_keeps_them_runnable(store: Store, conn: Any) -> None:
    app = add_app(conn)
    ids = add_tasks(conn, app, 5)
    lease = open_lease(store)
    assert claim(store, lease) == ids
    rows = conn.execute("SELECT state::text, batch_job_id, lease_epoch, claimed_at IS NOT NULL "
                        "FROM tasks ORDER BY id").fetchall()
    assert rows == [("READY", lease.job_id, lease.epoch, True)] * 5
    assert claim(store, lease) == []  # claimed rows are not claimed again
    events = conn.execute("SELECT count(*) FROM task_events WHERE to_state <> 'READY'"
                          ).fetchone()
    assert events == (0,)  # the claim is not a state change: RUNNING comes from the node


def test_claim_is_exactly_once_under_concurrent_claimers(pg_project: Project, dbname: str,
                                                         conn: Any) -> None:
    app = add_app(conn)
    ids = add_tasks(conn, app, 3000, packing=4)
    got: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    def claimer(k: int) -> None:
        try:
            s = Store(db.connect(pg_project, dbname=dbname, autocommit=True), pg_project)
            lease = open_lease(s)
            mine: list[int] = []
            while True:
                batch = claim(s, lease, capacity=7.0, limit=64)
                if not batch:
                    break
                mine += batch
            got[k] = mine
            s.close()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    claimed = [i for mine in got.values() for i in mine]
    assert len(claimed) == len(set(claimed)) == len(ids)  # none twice, none lost
    assert sorted(claimed) == ids
    assert sum(1 for mine in got.values() if mine) >= 2  # they really ran side by side


def test_capacity_keeps_the_prefix_that_fits(store: Store, conn: Any) -> None:
    app = add_app(conn)
    quarter = add_tasks(conn, app, 3, packing=4)  # 0.75 of a node
    whole = add_tasks(conn, app, 1, packing=1)  # 1.0
    eighth = add_tasks(conn, app, 2, packing=8)
    lease = open_lease(store)
    # 0.75 fits, the whole-node task would make 1.75 > 1.5: the prefix stops before it,
    # even though the eighths after it would fit (order is priority, then id).
    assert claim(store, lease, capacity=1.5) == quarter
    assert claim(store, lease, capacity=1.0) == whole
    assert claim(store, lease, capacity=0.1) == []
    assert claim(store, lease, capacity=0.25) == eighth


def test_priority_first_then_id_and_limit(store: Store, conn: Any) -> None:
    app = add_app(conn)
    low = add_tasks(conn, app, 3, priority=0)
    high = add_tasks(conn, app, 3, priority=5)
    lease = open_lease(store)
    # The claim's own order, not the ids': the leader hands them out in this order.
    assert claim(store, lease, limit=4) == high + low[:1]


def test_filters_workflow_tags_owner_wall_time_nodes(store: Store, conn: Any) -> None:
    app = add_app(conn)
    a = add_tasks(conn, app, 2, workflow="a")
    b = add_tasks(conn, app, 2, workflow="b", tags='{"kind": "x", "n": "1"}')
    c = add_tasks(conn, app, 2, workflow="c", wall_time_min=30)
    big = add_tasks(conn, app, 1, workflow="c", num_nodes=2)
    waiting = add_tasks(conn, app, 1, workflow="a", state="AWAITING_PARENTS")
    lease = open_lease(store)
    assert claim(store, lease, workflows=("b",), tags=(("kind", "x"),)) == b
    assert claim(store, lease, workflows=("a", "zzz")) == a
    rows = store.claim(lease, limit=100, capacity=100, max_need=1.0, filters=ClaimFilter(),
                       remaining_min=10.0)
    assert rows == []  # the 30-minute tasks cannot fit in 10 minutes; 2-node ones wait
    assert claim(store, lease, owners=("nobody",)) == []
    assert claim(store, lease) == c  # no wall-time limit now; num_nodes 2 still skipped
    assert big[0] not in claim(store, lease) and waiting[0] not in c


def test_a_closed_or_superseded_lease_claims_nothing(store: Store, conn: Any) -> None:
    app = add_app(conn)
    add_tasks(conn, app, 3)
    lease = open_lease(store)
    stale = Lease(lease.job_id, lease.epoch - 1, False)
    from balsam_mpi.base.errors import BalsamError

    with pytest.raises(BalsamError, match="no longer holds its lease"):
        claim(store, stale)
    store.close_job(lease, "FINISHED", "test")
    with pytest.raises(BalsamError, match="no longer holds its lease"):
        claim(store, lease)


def _claim_plans(pg_project: Project, dbname: str, workflows: list[str] | None) -> str:
    """The plans of the statements inside launcher_claim, from auto_explain (superuser)."""
    from balsam_mpi.dbctl import lifecycle

    info = pg_project.read_server_info()
    notices: list[str] = []
    with lifecycle.admin_connect(pg_project, info, dbname, autocommit=False) as admin:
        admin.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        admin.execute("LOAD 'auto_explain'")
        admin.execute("SET auto_explain.log_min_duration = 0")
        admin.execute("SET auto_explain.log_nested_statements = on")
        admin.execute("SET auto_explain.log_level = 'NOTICE'")
        row = admin.execute("SELECT job_id, lease_epoch FROM launcher_open_job(NULL, 'local', "
                            "NULL, 'h', 1, 1, '{}', NULL, 60)").fetchone()
        assert row is not None
        job, epoch = row
        notices.clear()
        admin.execute("SELECT * FROM launcher_claim(%s, %s, 16, 4.0, 1.0, %s, NULL, NULL, "
                      "NULL, 1)", (job, epoch, workflows))
        admin.rollback()
    return "\n".join(notices)


@pytest.mark.parametrize(("workflows", "analyzed"), [
    (None, False), (["drained"], False), (["drained"], True), (["drained", "other"], True),
], ids=["all-stale-stats", "one-stale-stats", "one-analyzed", "two-analyzed"])
def test_claim_stays_on_its_index(pg_project: Project, dbname: str, conn: Any,
                                  workflows: list[str] | None, analyzed: bool) -> None:
    """The pitfall: a workflow filter once left the index and discarded ~60k rows per
    claim as the workflow drained. The plan must use the runnable partial indexes."""
    app = add_app(conn)
    add_tasks(conn, app, 15000, workflow="other")
    drained = add_tasks(conn, app, 15000, workflow="drained")
    from balsam_mpi.dbctl import lifecycle

    with lifecycle.admin_connect(pg_project, pg_project.read_server_info(), dbname) as admin:
        for state in ("RUNNING", "RUN_DONE", "JOB_FINISHED"):  # as a launcher finishes them
            admin.execute("UPDATE tasks SET state = %s WHERE id = ANY(%s)",
                          (state, drained[:-5]))
    if analyzed:
        info = pg_project.read_server_info()
        with lifecycle.admin_connect(pg_project, info, dbname) as admin:
            admin.execute("ANALYZE tasks")
    plans = _claim_plans(pg_project, dbname, workflows)
    assert "launcher_claim" in plans or "Index" in plans, plans
    claim_plan = plans[plans.index("locked"):] if "locked" in plans else plans
    index = "tasks_runnable_workflow" if workflows else "tasks_runnable"
    assert f"using {index} on tasks" in claim_plan.lower().replace('"', ""), plans
    assert "seq scan on tasks" not in claim_plan.lower(), plans
