"""The state machine as the database really runs it (hypothesis, stateful): random
sequences of what users and launchers do — add (with parents), dep, kill, retry, delete,
claim, start, end in every way a launcher reports, drain, close a job — and after every
step each recorded event is a legal move of ``models.TRANSITIONS``, and each task's state
is the last state its history records.

This is the check behind "only the legal moves exist": ``tasks/states.py`` is the table, the
SQL functions and triggers are what moves tasks; they must agree."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from balsam_mpi.base import db
from balsam_mpi.base.errors import BalsamError
from balsam_mpi.base.project import Project
from balsam_mpi.dbctl.lifecycle import admin_connect
from balsam_mpi.launcher.store import Store
from balsam_mpi.launcher.storeport import ClaimFilter, Lease
from balsam_mpi.protocol import EndKind, Finished, Started
from balsam_mpi.tasks.client import Client
from balsam_mpi.tasks.states import TRANSITIONS, TaskState

# Moves a run must have exercised, so the test cannot pass by never getting there.
MUST_SEE = {("READY", "RUNNING"), ("RUNNING", "RUN_DONE"), ("RUN_DONE", "JOB_FINISHED"),
            ("RUNNING", "RUN_ERROR"), ("RUNNING", "RESTART_READY"), ("READY", "USER_KILLED"),
            ("AWAITING_PARENTS", "READY"), ("USER_KILLED", "READY")}
FIRST = {TaskState.CREATED, TaskState.READY, TaskState.AWAITING_PARENTS, TaskState.FAILED}
KINDS = [k for k in EndKind if k is not EndKind.KILLED]  # KILLED is never written
T0 = 1_900_000_000.0


def test_every_recorded_move_is_legal(pg_project: Project, dbname: str) -> None:
    info = pg_project.read_server_info()
    clock = itertools.count()
    seen: set[tuple[str | None, str]] = set()

    class Tasks(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            with admin_connect(pg_project, info, dbname=dbname) as admin:
                admin.execute("TRUNCATE tasks, task_deps, task_events, batch_jobs, apps "
                              "RESTART IDENTITY CASCADE")
            self.client = Client()
            self.client.add_app("a", "true")
            self.store = Store(db.connect(pg_project, dbname=dbname, autocommit=True))
            self.lease: Lease | None = None

        def teardown(self) -> None:
            self.client.close()
            self.store.close()

        # -- helpers ------------------------------------------------------------------
        def _ids(self, *states: str, claimed: bool | None = None) -> list[int]:
            rows = self.store.conn.execute(
                "SELECT id, state::text, batch_job_id FROM tasks ORDER BY id").fetchall()
            return [r[0] for r in rows if (not states or r[1] in states) and (
                claimed is None or (r[2] is not None) == claimed)]

        def _pick(self, ids: list[int], i: int) -> int | None:
            return ids[i % len(ids)] if ids else None

        def _job(self) -> Lease:
            if self.lease is None:
                self.lease = self.store.open_job(
                    job_id=None, scheduler="local", scheduler_job_id=None, host="h",
                    nodes=1, ranks=1, filters=ClaimFilter(), wall_time_min=None,
                    lease_sec=60)
            return self.lease

        @initialize()
        def scripted(self) -> None:
            """The common paths once per example, then random steps from there."""
            [p] = self.client.add_tasks([{"app": "a", "workflow": "w"}])
            self.client.add_tasks([{"app": "a", "workflow": "w", "parents": [p]}])
            [t] = self.client.add_tasks([{"app": "a", "workflow": "w"}])
            self.client.kill([t])
            self.client.retry([t])
            for kind in (EndKind.DONE, EndKind.ERROR, EndKind.CUT):
                self.run_one(kind, 0)

        # -- what users do ------------------------------------------------------------
        @rule(n=st.integers(1, 3), parent=st.integers(0, 50), fails=st.booleans())
        def add(self, n: int, parent: int, fails: bool) -> None:
            ids = self._ids()
            task: dict[str, Any] = {"app": "a", "workflow": "w", "fail_with_parents": fails}
            p = self._pick(ids, parent)
            if p is not None and parent % 2:
                task["parents"] = [p]
            self.client.add_tasks([dict(task) for _ in range(n)])

        @rule(a=st.integers(0, 50), b=st.integers(0, 50))
        def dep(self, a: int, b: int) -> None:
            ids = self._ids()
            p, c = self._pick(ids, a), self._pick(ids, b)
            if p is not None and c is not None:
                try:
                    self.client.add_dependency(p, c)
                except BalsamError:  # cycles, started children: refused, nothing written
                    pass

        @rule(i=st.integers(0, 50))
        def kill(self, i: int) -> None:
            t = self._pick(self._ids(), i)
            if t is not None:
                self.client.kill([t])

        @rule(i=st.integers(0, 50))
        def retry(self, i: int) -> None:
            t = self._pick(self._ids("FAILED", "USER_KILLED"), i)
            if t is not None:
                self.client.retry([t])

        @rule(i=st.integers(0, 50))
        def delete(self, i: int) -> None:
            t = self._pick(self._ids("JOB_FINISHED", "FAILED", "USER_KILLED", "READY"), i)
            if t is not None:
                self.client.delete([t])

        # -- what launchers do --------------------------------------------------------
        @rule(limit=st.integers(1, 4))
        def claim(self, limit: int) -> None:
            self.store.claim(self._job(), limit=limit, capacity=100.0, max_need=1.0,
                             filters=ClaimFilter())

        @rule(i=st.integers(0, 50))
        def start(self, i: int) -> None:
            lease = self._job()
            t = self._pick(self._ids("READY", "RESTART_READY", claimed=True), i)
            if t is not None:
                self.store.report(lease, [Started(t, lease.epoch, T0 + next(clock))], [])

        @rule(i=st.integers(0, 50), kind=st.sampled_from(KINDS), rc=st.integers(0, 3))
        def end(self, i: int, kind: EndKind, rc: int) -> None:
            lease = self._job()
            t = self._pick(self._ids("RUNNING"), i)
            if t is not None:
                at = T0 + next(clock)
                self.store.report(lease, [], [Finished(t, lease.epoch, int(kind), rc, at - 1,
                                                       at, "tail")])

        @rule(kind=st.one_of(st.just(EndKind.DONE), st.sampled_from(KINDS)),
              rc=st.integers(0, 3))
        def run_one(self, kind: EndKind, rc: int) -> None:
            """A whole run at once: add a task, claim one, start it, end it."""
            self.client.add_tasks([{"app": "a", "workflow": "w"}])
            lease = self._job()
            claimed = self.store.claim(lease, limit=1, capacity=100.0, max_need=1.0,
                                       filters=ClaimFilter())
            for c in claimed:
                at = T0 + next(clock)
                self.store.report(lease, [Started(c.id, lease.epoch, at)], [
                    Finished(c.id, lease.epoch, int(kind), rc, at, at + 1, "tail")])

        @rule(state=st.sampled_from(["FINISHED", "FAILED", "LOST"]))
        def close_job(self, state: str) -> None:
            if self.lease is not None:
                self.store.close_job(self.lease, state, "test")
                self.lease = None

        # -- what must hold after every step ----------------------------------------------
        @invariant()
        def every_event_is_a_legal_move(self) -> None:
            for frm, to, task in self.store.conn.execute(
                    "SELECT from_state::text, to_state::text, task_id FROM task_events"):
                seen.add((frm, to))
                dst = TaskState(to)
                if frm is None:
                    assert dst in FIRST, (task, frm, to)
                else:
                    assert dst in TRANSITIONS[TaskState(frm)], (task, frm, to)

        @invariant()
        def the_state_is_the_last_event(self) -> None:
            rows = self.store.conn.execute(
                "SELECT t.id, t.state::text, (SELECT e.to_state::text FROM task_events e "
                "WHERE e.task_id = t.id ORDER BY e.id DESC LIMIT 1) FROM tasks t").fetchall()
            for task, state, last in rows:
                assert state == last, (task, state, last)

    run_state_machine_as_test(Tasks, settings=settings(
        max_examples=30, stateful_step_count=30, deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
    assert MUST_SEE <= seen, sorted(MUST_SEE - seen, key=str)

