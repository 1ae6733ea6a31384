"""task_api's channel without MPI or a database: the socket a node's tasks talk to, the
requests it yields, its answers; and the new protocol fields."""

from __future__ import annotations

import pickle
import threading
from typing import Any

import pytest

from balsam_mpi import protocol as p
from balsam_mpi import task_api
from balsam_mpi.node.channel import TaskChannel


def call(chan: TaskChannel, tasks: list[dict[str, Any]], task_id: int = 9
         ) -> tuple[threading.Thread, dict[str, Any]]:
    env = {**chan.env(), "BALSAM_TASK_ID": str(task_id)}
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["ids"] = task_api.add_tasks(tasks, environ=env, timeout=10)
        except task_api.TaskApiError as exc:
            out["error"] = str(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def requests(chan: TaskChannel, n: int) -> list[Any]:
    got: list[Any] = []
    for _ in range(2000):
        got += chan.poll()
        if len(got) >= n:
            return got
        threading.Event().wait(0.005)
    raise AssertionError(f"only {len(got)} of {n} requests arrived")


def test_a_request_and_its_answer() -> None:
    chan = TaskChannel(3)
    try:
        thread, out = call(chan, [{"app": "a", "workflow": "w", "parents": [9]}])
        [req] = requests(chan, 1)
        assert req.parent == 9 and req.tasks == ({"app": "a", "workflow": "w", "parents": [9]},)
        assert chan.pending == 1
        chan.reply(req.id, (41,))
        thread.join(10)
        assert out == {"ids": [41]} and chan.pending == 0
        thread, out = call(chan, [{"app": "nope"}])
        [req] = requests(chan, 1)
        chan.reply(req.id, (), "no app named 'nope'")
        thread.join(10)
        assert out == {"error": "no app named 'nope'"}
    finally:
        chan.close()


def test_closing_answers_whoever_waits() -> None:
    chan = TaskChannel(1)
    thread, out = call(chan, [{"app": "a"}])
    requests(chan, 1)
    chan.close()
    thread.join(10)
    assert "stopping" in out["error"]


def test_outside_a_task_the_api_says_so() -> None:
    with pytest.raises(task_api.TaskApiError, match="inside a task"):
        task_api.add_tasks([{"app": "a"}], environ={})
    assert not task_api.inside_task({"BALSAM_TASK_ID": "1"})


def test_new_messages_travel_with_their_tags() -> None:
    msg = p.AddTasks(rank=2, parent=5, tasks=({"app": "a"},), req=1)
    assert p.TAG_TYPES[p.Tag.ADD_TASKS] is p.AddTasks and msg.TAG == p.Tag.ADD_TASKS
    order = p.RunOrder(1, 1, ("x",), "/d", num_nodes=2, ranks_per_node=2, hosts=("a", "b"))
    assign = p.Assign(3, hold=(order,), release=(4,), added=((1, (7, 8), ""),))
    assert pickle.loads(pickle.dumps(assign)) == assign
    assert p.PROTOCOL_VERSION >= 3  # bumped for ADD_TASKS (and for later messages)
