"""A crowded notification queue (migration 0030): ending tasks still commits, the waiters'
notification is skipped, and waits, as_completed and the Executor find the ends through
their periodic read (tasks/waiting.py, REREAD_S).

Filling the server's queue for real takes 4–8 GB and minutes (a viewer did it in 114 s, the
attack in docs/security.md), so the queue's check, ``notify_queue_crowded()``, is replaced
in this test's database copy by one that says it is crowded."""

from __future__ import annotations

from typing import Any

import pytest

from balsam_mpi import Client
from balsam_mpi.base import db
from balsam_mpi.base.project import Project
from balsam_mpi.tasks import waiting
from balsam_mpi.tasks.executor import Executor
from tests.db.test_waiting import FakeLauncher, add, client, launcher  # noqa: F401

pytestmark = pytest.mark.timeout(60)


def _crowd(su: Any) -> None:
    su.execute("CREATE OR REPLACE FUNCTION notify_queue_crowded() RETURNS boolean "
               "LANGUAGE sql STABLE AS $$ SELECT true $$")


def _heard(pg_project: Project, dbname: str, act: Any) -> list[str]:
    with db.connect(pg_project, dbname=dbname, autocommit=True) as ear:
        ear.execute("LISTEN balsam_task_final")
        act()
        return [n.payload for n in ear.notifies(timeout=1.0)]


def test_ending_tasks_commits_without_a_notification_while_the_queue_is_crowded(
        client: Client, launcher: FakeLauncher, su: Any, pg_project: Project,  # noqa: F811
        dbname: str) -> None:
    ids = add(client, 3)
    assert _heard(pg_project, dbname, lambda: launcher.end({ids[0]: 1})) == [str(ids[0])]
    _crowd(su)
    assert _heard(pg_project, dbname, lambda: launcher.end({ids[1]: 2})) == []
    assert _heard(pg_project, dbname, lambda: client.kill([ids[2]])) == []
    states = {r["id"]: r["state"] for r in client.tasks(workflow="w")}
    assert states == {ids[0]: "JOB_FINISHED", ids[1]: "JOB_FINISHED", ids[2]: "USER_KILLED"}


def test_waits_and_the_executor_find_unannounced_ends(
        client: Client, launcher: FakeLauncher, su: Any,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(waiting, "REREAD_S", 0.3)
    _crowd(su)
    ids = add(client, 3)
    launcher.later(0.5, lambda: launcher.end({ids[0]: 10}))
    assert [o.result for o in client.wait([ids[0]], timeout=20)] == [10]
    launcher.later(0.5, lambda: launcher.end({ids[1]: 11, ids[2]: 12}))
    assert sorted(o.result for o in client.as_completed(ids[1:], timeout=20)) == [11, 12]
    with Executor(client, workflow="ex") as ex:
        f = ex.submit("tests.pyfuncs:add", a=1, b=2)
        launcher.later(0.5, lambda: launcher.end({f.task_id: 3}))
        assert f.result(timeout=20) == 3
