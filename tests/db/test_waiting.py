"""Waiting without polling (tasks/waiting.py, tasks/executor.py, `task wait`): LISTEN first, read the
states, then sleep until a notification; a timeout is one clear error; a notification is
only a hint. A thread plays the launcher, through the launcher's own database calls."""

from __future__ import annotations

import concurrent.futures as cf
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from click.testing import CliRunner

from balsam_mpi import Client
from balsam_mpi.base import db
from balsam_mpi.base.errors import BalsamError, NotFound, PermissionDenied, UsageError
from balsam_mpi.base.project import Project
from balsam_mpi.cli import cli
from balsam_mpi.launcher.store import Store
from balsam_mpi.launcher.storeport import ClaimFilter
from balsam_mpi.protocol import EndKind, Finished, Started
from balsam_mpi.tasks import waiting
from balsam_mpi.tasks.executor import STOP_CHECK_S, Executor

pytestmark = pytest.mark.timeout(30)
T0 = 1_900_000_000.0


class FakeLauncher:
    """Claims and ends tasks through the launcher's functions, as a leader would."""

    def __init__(self, project: Project, dbname: str) -> None:
        self.store = Store(db.connect(project, dbname=dbname, autocommit=True), project)
        self.lease = self.store.open_job(
            job_id=None, scheduler="local", scheduler_job_id=None, host="h", nodes=1,
            ranks=1, filters=ClaimFilter(), wall_time_min=None, lease_sec=60)

    def end(self, values: dict[int, Any], kind: EndKind = EndKind.DONE) -> None:
        import json

        self.store.claim(self.lease, limit=1000, capacity=1000.0, max_need=1.0,
                         filters=ClaimFilter())
        ep = self.lease.epoch
        self.store.report(
            self.lease, [Started(i, ep, T0) for i in values],
            [Finished(i, ep, int(kind), 0 if kind == EndKind.DONE else 1, T0, T0 + 1,
                      "" if kind == EndKind.DONE else "Traceback …\nValueError: bad x",
                      None if v is None else json.dumps(v)) for i, v in values.items()])

    def start(self, ids: list[int]) -> None:
        """Claim and start the tasks (RUNNING), ending none."""
        self.store.claim(self.lease, limit=1000, capacity=1000.0, max_need=1.0,
                         filters=ClaimFilter())
        self.store.report(self.lease, [Started(i, self.lease.epoch, T0) for i in ids], [])

    def later(self, delay: float, fn: Callable[[], None]) -> threading.Thread:
        def run() -> None:
            time.sleep(delay)
            fn()

        t = threading.Thread(target=run)
        t.start()
        return t

    def close(self) -> None:
        self.store.close()


@pytest.fixture()
def launcher(pg_project: Project, dbname: str) -> Any:
    fake = FakeLauncher(pg_project, dbname)
    yield fake
    fake.close()


@pytest.fixture()
def client(dbname: str) -> Any:
    with Client() as c:
        c.add_app("fit", python="tests.pyfuncs:add")
        yield c


def add(client: Client, n: int) -> list[int]:
    return client.add_tasks([{"app": "fit", "workflow": "w", "params": {"a": i, "b": 1}}
                             for i in range(n)])


def test_wait_returns_when_the_last_task_ends(client: Client, launcher: FakeLauncher) -> None:
    ids = add(client, 3)
    launcher.end({ids[0]: 10})
    t = launcher.later(0.5, lambda: launcher.end({ids[1]: 11, ids[2]: None}))
    out = client.wait(ids, timeout=30)
    t.join()
    assert [(o.id, o.state, o.result) for o in out] == [
        (ids[0], "JOB_FINISHED", 10), (ids[1], "JOB_FINISHED", 11),
        (ids[2], "JOB_FINISHED", None)]
    assert client.result(ids[1]) == 11


def test_as_completed_yields_the_ended_first_then_each_as_it_ends(
        client: Client, launcher: FakeLauncher) -> None:
    ids = add(client, 3)
    launcher.end({ids[2]: "first"})
    order = []
    t = launcher.later(0.3, lambda: (launcher.end({ids[1]: "second"}), time.sleep(0.3),
                                     launcher.end({ids[0]: "third"})))
    for outcome in client.as_completed(ids, timeout=30):
        order.append(outcome.result)
    t.join()
    assert order == ["first", "second", "third"]


def test_a_timeout_is_one_error_saying_what_has_not_ended(
        client: Client, launcher: FakeLauncher) -> None:
    ids = add(client, 3)
    launcher.end({ids[0]: 1})
    t0 = time.monotonic()
    with pytest.raises(waiting.WaitTimeout) as err:
        client.wait(ids, timeout=0.5)
    assert time.monotonic() - t0 >= 0.5
    assert str(err.value).startswith("timed out after 0.5 s: 2 of 3 tasks have not ended")
    assert [o.id for o in err.value.pending] == ids[1:] and err.value.exit_code == 3
    assert [o.id for o in err.value.done] == ids[:1]


def test_failures_and_kills_end_a_wait_and_result_raises_them(
        client: Client, launcher: FakeLauncher) -> None:
    ids = add(client, 2)
    t = launcher.later(0.3, lambda: (launcher.end({ids[0]: None}, EndKind.ERROR),
                                     client.kill([ids[1]])))
    out = client.wait(ids, timeout=30)
    t.join()
    assert [o.state for o in out] == ["FAILED", "USER_KILLED"]
    with pytest.raises(waiting.TaskFailed) as err:
        client.result(ids[0])
    assert str(err.value) == f"task {ids[0]} FAILED (exit code 1): ValueError: bad x"
    assert err.value.outcome.exit_code == 1


def test_a_failure_is_described_by_its_exception_line_not_its_messages_last() -> None:
    """A traceback's exception may say more over several lines (and carriage returns):
    the one line is the exception's own; other output keeps its last line."""
    tail = ("Traceback (most recent call last):\n  File \"m.py\", line 1, in f\n"
            "    raise ValueError(msg)\nValueError: bad input\x1b[2J\n  at row 3\r"
            "row 4\n\n")
    failed = waiting.Outcome(7, "FAILED", None, 1, "exit code 1", tail)
    # Spelled out, as every line a waiter may print (docs/security.md).
    assert waiting.describe(failed) == \
        "task 7 FAILED (exit code 1): ValueError: bad input\\x1b[2J"
    chained = ("Traceback (most recent call last):\n  File ...\nKeyError: 'x'\n\nDuring "
               "handling of the above exception, another exception occurred:\n\n" + tail)
    assert waiting.last_words(chained) == "ValueError: bad input\x1b[2J"
    assert waiting.last_words("step 1\nstep 2: no such file\n") == "step 2: no such file"
    assert waiting.last_words("ok\rdone\n") == "ok\rdone"  # a \r hides nothing
    assert waiting.last_words("  File \"x\"\nTraceback (most recent call last):\n  cut") \
        == "cut"  # a traceback cut before its exception line: the last line


def test_no_wake_up_is_lost_between_the_read_and_the_sleep(
        client: Client, launcher: FakeLauncher, monkeypatch: pytest.MonkeyPatch) -> None:
    """The task ends right after the waiter read it as running: only the notification,
    queued because the waiter LISTENed before reading, can wake it."""
    [tid] = add(client, 1)
    real = waiting.Listener.read
    calls = []

    def read_then_end(self: waiting.Listener, ids: Any) -> Any:
        out = real(self, ids)
        if not calls:
            launcher.end({tid: "caught"})
        calls.append(1)
        return out

    monkeypatch.setattr(waiting.Listener, "read", read_then_end)
    assert client.result(tid, timeout=20) == "caught"


def test_a_notification_is_only_a_hint(client: Client, conn: Any, pg_project: Project,
                                       dbname: str, launcher: FakeLauncher) -> None:
    from balsam_mpi.dbctl import lifecycle

    ids = add(client, 2)
    with pytest.raises(PermissionDenied), db.translated():  # pg_notify: revoked (0007)
        conn.execute("SELECT pg_notify('balsam_task_final', %s)", (str(ids[0]),))
    # Whoever may (the superuser here) still only gives hints: the waiter reads the tasks.
    admin = lifecycle.admin_connect(pg_project, pg_project.read_server_info(), dbname)
    try:
        for payload in (f"{ids[0]},{ids[1]}", "x,,-1,99999999999999999999999", ""):
            launcher.later(0.1, lambda p=payload: admin.execute(  # type: ignore[misc]
                "SELECT pg_notify('balsam_task_final', %s)", (p,)))
        with pytest.raises(waiting.WaitTimeout):
            client.wait(ids, timeout=1.0)  # woken, read them: still READY
    finally:
        admin.close()


def test_unknown_and_deleted_tasks_are_not_found(client: Client,
                                                 launcher: FakeLauncher) -> None:
    ids = add(client, 2)
    with pytest.raises(NotFound, match=f"no task with id {ids[1] + 100}"):
        client.wait([ids[0], ids[1] + 100], timeout=5)
    t = launcher.later(0.3, lambda: client.delete([ids[1]]))
    with pytest.raises(NotFound, match="deleted while waiting"):
        client.wait(ids, timeout=10)
    t.join()


def test_waits_nest_and_leave_nothing_listening(client: Client,
                                                launcher: FakeLauncher) -> None:
    ids = add(client, 4)
    launcher.end({ids[0]: 0, ids[2]: 2})
    t = launcher.later(0.3, lambda: launcher.end({ids[1]: 1, ids[3]: 3}))
    outer = []
    for o in client.as_completed(ids[:2], timeout=20):
        outer.append(o.result)
        assert [x.result for x in client.as_completed(ids[2:], timeout=20)] == [2, 3]
    t.join()
    assert outer == [0, 1]
    for listener in client._waiters._idle:
        assert listener.conn is not None
        n = listener.conn.execute("SELECT count(*) FROM pg_listening_channels()").fetchone()
        assert n == (0,)


# -- the executor ----------------------------------------------------------------------
def test_executor_futures_resolve_when_their_tasks_end(client: Client,
                                                       launcher: FakeLauncher) -> None:
    with Executor(client, workflow="ex", node_packing_count=4) as ex:
        f1 = ex.submit("tests.pyfuncs:add", a=1, b=2)
        f2 = ex.submit("tests.pyfuncs:add", a=3, b=4)
        assert not f1.done()
        row = client.get(f1.task_id)
        assert (row["workflow"], row["node_packing_count"], row["params"]) == (
            "ex", 4, {"a": 1, "b": 2})
        launcher.later(0.3, lambda: launcher.end({f1.task_id: 3}))
        assert f1.result(timeout=20) == 3
        launcher.later(0.3, lambda: launcher.end({f2.task_id: None}, EndKind.ERROR))
        with pytest.raises(waiting.TaskFailed, match="ValueError: bad x"):
            f2.result(timeout=20)
        it = ex.map("tests.pyfuncs:add", [{"a": i, "b": 0} for i in range(5)], timeout=20)
        ids = [r["id"] for r in client.tasks(workflow="ex", state="READY")]
        assert len(ids) == 5
        launcher.later(0.3, lambda: launcher.end({i: n for n, i in enumerate(ids)}))
        assert list(it) == [0, 1, 2, 3, 4]


def test_executor_cancel_kills_and_shutdown_waits(client: Client,
                                                  launcher: FakeLauncher) -> None:
    ex = Executor(client)
    f1 = ex.submit("tests.pyfuncs:add", a=1, b=2)
    f2 = ex.submit("tests.pyfuncs:add", a=1, b=2)
    assert f1.cancel() and f1.cancelled()
    assert client.get(f1.task_id)["state"] == "USER_KILLED"
    launcher.later(0.3, lambda: launcher.end({f2.task_id: 9}))
    ex.shutdown(wait=True)
    assert f2.result() == 9 and not f2.cancel()
    assert ex._watcher is not None and not ex._watcher.is_alive()
    with pytest.raises(RuntimeError):
        ex.submit("tests.pyfuncs:add", a=1, b=2)
    assert cf.wait([f1, f2]).not_done == set()


def test_executor_names_the_app_the_owner_must_add(client: Client) -> None:
    with Executor(client) as ex:
        with pytest.raises(UsageError) as err:
            ex.submit("tests.pyfuncs:noop")
        assert str(err.value) == (
            "fn_path: no app calls tests.pyfuncs:noop; the project owner (or an "
            "--app-admin member) must add one: balsam-mpi app add NAME --python "
            "tests.pyfuncs:noop")
        with pytest.raises(UsageError, match="^fn_path: 'not a path'"):
            ex.submit("not a path")
        with pytest.raises(UsageError, match="^params: a Python task takes keyword"):
            ex.submit("tests.pyfuncs:add", 1, 2)
    assert client.counts() == {}


# -- the command line ----------------------------------------------------------------
def test_task_wait_exit_status_says_how_they_ended(client: Client,
                                                   launcher: FakeLauncher) -> None:
    ids = add(client, 3)
    runner = CliRunner()
    launcher.end({ids[0]: 1})
    res = runner.invoke(cli, ["task", "wait", str(ids[0])])
    assert (res.exit_code, res.output) == (0, f"task {ids[0]} JOB_FINISHED\n")
    launcher.later(0.3, lambda: launcher.end({ids[1]: None}, EndKind.ERROR))
    res = runner.invoke(cli, ["task", "wait", str(ids[0]), str(ids[1]), "--json"])
    assert res.exit_code == 1, res.output
    assert '"state": "FAILED"' in res.output and '"result": 1' in res.output
    res = runner.invoke(cli, ["task", "wait", str(ids[2]), "--timeout", "0.3"])
    assert res.exit_code == 3
    assert "timed out after 0.3 s: 1 of 1 tasks have not ended" in res.output
    for bad in (["x"], [str(ids[2]), "--timeout", "soon"], [str(ids[2]), "--timeout", "-1"]):
        res = runner.invoke(cli, ["task", "wait", *bad])
        assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output


def test_task_wait_says_apart_a_task_that_does_not_exist(client: Client,
                                                         launcher: FakeLauncher) -> None:
    """A script must not take a mistyped or deleted id for a failed task (exit 1)."""
    ids = add(client, 2)
    runner = CliRunner()
    res = runner.invoke(cli, ["task", "wait", str(ids[0]), str(ids[-1] + 1000)])
    assert res.exit_code == 4, res.output
    assert res.output.endswith(f": error: no task with id {ids[-1] + 1000}\n")
    assert len(res.output.strip().splitlines()) == 1
    t = launcher.later(0.3, lambda: client.delete([ids[1]]))
    res = runner.invoke(cli, ["task", "wait", str(ids[1]), "--timeout", "20"])
    t.join()
    assert res.exit_code == 4, res.output
    assert f"task {ids[1]} was deleted while waiting for it" in res.output


def test_task_wait_takes_the_filters_of_task_ls(client: Client,
                                                launcher: FakeLauncher) -> None:
    """`task wait --workflow W` waits for the tasks W holds when the wait starts, as a
    shell script that fans out a workflow and waits for it would."""
    ids = add(client, 2)
    other = client.add_tasks([{"app": "fit", "workflow": "v", "params": {"a": 9, "b": 1}}])
    runner = CliRunner()
    t = launcher.later(0.3, lambda: launcher.end({ids[0]: 1, ids[1]: 2}))
    res = runner.invoke(cli, ["task", "wait", "--workflow", "w", "--timeout", "20"])
    t.join()
    assert res.exit_code == 0, res.output
    assert sorted(res.output.splitlines()) == [f"task {i} JOB_FINISHED" for i in ids]
    res = runner.invoke(cli, ["task", "wait", "--workflow", "w", "--quiet"])
    assert (res.exit_code, res.output) == (0, "2 tasks ended: 2 JOB_FINISHED\n")
    # ids and filters narrow each other, as for kill / retry / rm
    res = runner.invoke(cli, ["task", "wait", str(other[0]), "--workflow", "w"])
    assert res.exit_code == 4 and res.output.endswith(
        ": error: no task matches the ids and filters given\n"), res.output
    res = runner.invoke(cli, ["task", "wait", "--workflow", "nosuch"])
    assert res.exit_code == 4, res.output
    res = runner.invoke(cli, ["task", "wait", "--workflow", "v", "--timeout", "0.2"])
    assert res.exit_code == 3 and "1 of 1 tasks have not ended" in res.output
    res = runner.invoke(cli, ["task", "wait"])
    assert res.exit_code == 2 and "give task ids or a filter" in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1


# -- connections that drop, odd arguments ------------------------------------------------
def drop_connections(su: Any, application_name: str) -> int:
    """Have the server end the connections of this application name, as a restart or an
    idle timeout would, and see them gone."""
    pids = [r[0] for r in su.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
        (application_name,)).fetchall()]
    for pid in pids:
        su.execute("SELECT pg_terminate_backend(%s)", (pid,))
    while su.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)",
                     (pids,)).fetchone() != (0,):
        time.sleep(0.05)
    return len(pids)


def test_a_wait_after_the_server_dropped_the_kept_connection_reconnects(
        client: Client, launcher: FakeLauncher, su: Any) -> None:
    """The connection a wait keeps for the next one learns that the server ended it
    only when used: the next wait must take a new one, not fail."""
    ids = add(client, 2)
    launcher.end({ids[0]: 1})
    assert client.result(ids[0], timeout=20) == 1
    assert drop_connections(su, "balsam_mpi-wait") == 1
    t = launcher.later(0.3, lambda: launcher.end({ids[1]: 2}))
    assert client.result(ids[1], timeout=20) == 2
    t.join()


def test_a_timeout_must_be_a_number(client: Client, launcher: FakeLauncher) -> None:
    import math

    from balsam_mpi.base.errors import InputError

    ids = add(client, 3)
    launcher.end({ids[0]: 1, ids[1]: 2})
    # NaN compares false with every clock reading: a wait given it, for a task that has
    # not ended, neither slept nor timed out (a busy loop, for ever).
    for bad in (math.nan, "5", -math.inf):
        with pytest.raises(InputError, match="^timeout: "):
            client.wait(ids, timeout=bad)  # type: ignore[arg-type]
    assert [o.result for o in client.wait(ids[:2], timeout=math.inf)] == [1, 2]
    assert [o.result for o in client.wait(ids[:2], timeout=-1)] == [1, 2]


def test_ids_are_taken_as_kill_and_retry_take_them(client: Client,
                                                   launcher: FakeLauncher) -> None:
    import numpy as np

    from balsam_mpi.base.errors import InputError

    ids = add(client, 2)
    launcher.end({ids[0]: 1, ids[1]: 2})
    client.update(np.array(ids), priority=1)  # as the other calls take them
    assert [o.result for o in client.wait(np.array(ids))] == [1, 2]
    assert client.result(np.int64(ids[1])) == 2  # type: ignore[arg-type]
    with pytest.raises(InputError, match="^ids: .* is not a task id"):
        client.wait([ids[0], 2**63])  # past bigint: named, not a database error
    with pytest.raises(InputError, match="^ids: "):
        client.wait("12")  # type: ignore[arg-type]


def test_wait_gives_one_outcome_per_id_given(client: Client,
                                            launcher: FakeLauncher) -> None:
    """So that zip(ids, client.wait(ids)) lines up, a repeated id included."""
    ids = add(client, 2)
    launcher.end({ids[0]: 1, ids[1]: 2})
    assert [o.result for o in client.wait([ids[1], ids[0], ids[1]])] == [2, 1, 2]
    assert [o.result for o in client.as_completed([ids[1], ids[0], ids[1]])] == [2, 1]


def test_the_executor_reads_again_after_its_connection_drops(
        client: Client, launcher: FakeLauncher, su: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The connection drops as the watcher reads a new task: that task's end and later
    tasks' ends still resolve their futures."""
    real = Executor._settle
    dropped = []

    def drop_then_settle(self: Executor, listener: waiting.Listener, ids: Any,
                         pending: set[int]) -> None:
        if not dropped:
            dropped.append(drop_connections(su, "balsam_mpi-executor"))
        real(self, listener, ids, pending)

    monkeypatch.setattr(Executor, "_settle", drop_then_settle)
    with Executor(client) as ex:
        f = ex.submit("tests.pyfuncs:add", a=1, b=2)
        launcher.end({f.task_id: 3})
        assert f.result(timeout=20) == 3
        g = ex.submit("tests.pyfuncs:add", a=1, b=3)
        t = launcher.later(0.3, lambda: launcher.end({g.task_id: 4}))
        assert g.result(timeout=20) == 4
        t.join()
    assert dropped == [1]


def test_an_executor_that_stopped_watching_adds_nothing_more(
        client: Client, launcher: FakeLauncher, monkeypatch: pytest.MonkeyPatch) -> None:
    """A watcher that fails for good fails its futures; a later submit must not return
    a future nobody will resolve (shutdown would wait for it forever)."""
    def broken(self: waiting.Listener, ids: Any) -> Any:
        raise RuntimeError("a bug")

    ex = Executor(client)
    monkeypatch.setattr(waiting.Listener, "read", broken)
    f = ex.submit("tests.pyfuncs:add", a=1, b=2)
    chained: list[BaseException] = []
    called = threading.Event()

    def submit_next(done: cf.Future[Any]) -> None:  # runs in the watcher's thread
        try:
            ex.submit("tests.pyfuncs:add", a=2, b=2)
        except BaseException as exc:
            chained.append(exc)
        called.set()

    f.add_done_callback(submit_next)
    with pytest.raises(RuntimeError, match="a bug"):
        f.result(timeout=20)
    assert called.wait(20)
    assert [type(e) for e in chained] == [BalsamError]
    with pytest.raises(BalsamError, match="^this executor cannot watch tasks any more "
                                          r"\(a bug\)"):
        ex.submit("tests.pyfuncs:add", a=1, b=2)
    assert [t["id"] for t in client.tasks()] == [f.task_id]
    ex.shutdown(wait=True)


def test_a_cancel_whose_kill_fails_leaves_the_future_to_the_task(
        client: Client, launcher: FakeLauncher, monkeypatch: pytest.MonkeyPatch) -> None:
    from balsam_mpi.base.errors import ServerError

    with Executor(client) as ex:
        f = ex.submit("tests.pyfuncs:add", a=1, b=2)
        real_kill = client.kill

        def lost(*args: Any, **kwargs: Any) -> Any:
            raise ServerError("lost the database connection")

        monkeypatch.setattr(client, "kill", lost)
        with pytest.raises(ServerError):
            f.cancel()
        monkeypatch.setattr(client, "kill", real_kill)
        assert not f.done()
        real_kill([f.task_id])  # someone else's kill: the future says so
        with pytest.raises(waiting.TaskFailed, match="USER_KILLED"):
            f.result(timeout=20)


def test_map_timeout_counts_from_the_call(client: Client, launcher: FakeLauncher) -> None:
    """As concurrent.futures has it: a result not there ``timeout`` seconds after map()
    was called is a TimeoutError, however late the iteration starts."""
    with Executor(client) as ex:
        it = ex.map("tests.pyfuncs:add", [{"a": 1, "b": 1}], timeout=2.0)
        [tid] = client.ids(workflow="executor")
        time.sleep(2.1)
        t = launcher.later(0.5, lambda: launcher.end({tid: 2}))
        with pytest.raises(cf.TimeoutError):
            next(it)
        t.join()


def test_the_executor_keeps_no_future_once_settled(client: Client,
                                                   launcher: FakeLauncher) -> None:
    """A driver that submits for days must not hold every future and result it had."""
    import gc
    import weakref

    with Executor(client) as ex:
        f = ex.submit("tests.pyfuncs:add", a=1, b=2)
        launcher.end({f.task_id: 3})
        assert f.result(timeout=20) == 3
        gone = weakref.ref(f)
        del f
        # The watcher settles one future after the other: g's result means it is done
        # with f.
        g = ex.submit("tests.pyfuncs:add", a=2, b=2)
        launcher.end({g.task_id: 4})
        assert g.result(timeout=20) == 4
        gc.collect()
        assert gone() is None


def test_a_wait_whose_timeout_finds_the_server_gone_fails_at_once(
        client: Client, su: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The timeout passes and the last read finds the server gone: the wait must end
    with the lost connection, not reconnect for as long as the server stays away."""
    from balsam_mpi.base.errors import ServerError, ServerNotRunning

    [tid] = add(client, 1)
    real_connect, real_sleep = db.connect, waiting.Listener.sleep
    gone = threading.Event()

    def connect(*args: Any, **kwargs: Any) -> Any:
        if gone.is_set():
            raise ServerNotRunning("the server is not running")
        return real_connect(*args, **kwargs)

    def sleep_then_lose_the_server(self: waiting.Listener, timeout: Any) -> Any:
        hinted = real_sleep(self, timeout)
        if hinted is None:  # the timeout passed; the server goes away just then
            drop_connections(su, "balsam_mpi-wait")
            gone.set()
        return hinted

    monkeypatch.setattr(db, "connect", connect)
    monkeypatch.setattr(waiting.Listener, "sleep", sleep_then_lose_the_server)
    try:
        with pytest.raises(ServerError, match="^lost the database connection"):
            client.wait([tid], timeout=0.5)
    finally:
        gone.clear()


def test_submits_from_several_threads_add_each_task_once_under_one_watcher(
        client: Client, launcher: FakeLauncher) -> None:
    """A concurrent.futures executor is submitted to from several threads (and from done
    callbacks, on the watcher's): one connection must not carry two transactions at once,
    and the first submits must not start two watchers."""
    import collections

    with Executor(client, workflow="threads") as ex:
        futures: list[cf.Future[Any]] = []
        errors: list[BaseException] = []
        start = threading.Barrier(4)

        def submit_many(k: int) -> None:
            start.wait()
            try:
                for j in range(15):
                    futures.append(ex.submit("tests.pyfuncs:add", a=k, b=j))
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=submit_many, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        watchers = [t for t in threading.enumerate() if t.name == "balsam-executor"]
        assert len(watchers) == 1
        rows = list(client.tasks(workflow="threads"))
        params = collections.Counter((r["params"]["a"], r["params"]["b"]) for r in rows)
        assert len(rows) == 60 and set(params.values()) == {1}
        follow: list[cf.Future[Any]] = []
        first = futures[0]
        first.add_done_callback(
            lambda f: follow.append(ex.submit("tests.pyfuncs:add", a=100, b=f.result())))
        launcher.end({f.task_id: 1 for f in futures})
        assert all(f.result(timeout=20) == 1 for f in futures)
        deadline = time.monotonic() + 20
        while not follow and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(follow) == 1
        launcher.end({follow[0].task_id: 101})
        assert follow[0].result(timeout=20) == 101


def test_a_task_deleted_while_its_future_waits_is_not_found(
        client: Client, launcher: FakeLauncher) -> None:
    """As `wait` says it: NotFound, not a bare error."""
    with Executor(client, workflow="gone") as ex:
        f = ex.submit("tests.pyfuncs:add", a=1, b=2)
        client.delete([f.task_id])
        with pytest.raises(NotFound, match=f"task {f.task_id} was deleted"):
            f.result(timeout=20)


@pytest.mark.parametrize("error", ["server", "permission"])
def test_task_wait_says_apart_a_wait_that_could_not_be_made(
        client: Client, monkeypatch: pytest.MonkeyPatch, error: str) -> None:
    """A lost server or a refusal is neither a failed task (1) nor a missing one (4): a
    script that retries failures must not rerun work because the database was away."""
    from balsam_mpi.base.errors import ServerError

    ids = add(client, 1)

    def away(*_args: Any, **_kw: Any) -> Any:
        if error == "server":
            raise ServerError("lost the connection to the database server")
        raise PermissionDenied("not a member of this project")

    monkeypatch.setattr(Client, "as_completed", away)
    res = CliRunner().invoke(cli, ["task", "wait", str(ids[0])])
    assert res.exit_code == 5, res.output
    assert len(res.output.strip().splitlines()) == 1
    assert "could not wait" in res.output



@pytest.mark.parametrize("args", [["1"], ["--workflow", "w"]])
def test_task_wait_with_the_server_down_from_the_start_could_not_wait(
        client: Client, monkeypatch: pytest.MonkeyPatch, args: list[str]) -> None:
    """The server already away when the wait starts (the connection, or the filters' ids)
    exited 1, the status of a failed task, where the server lost during it gives 5."""
    from balsam_mpi.base.errors import ServerError

    def down(*_args: Any, **_kw: Any) -> Any:
        raise ServerError("the server for P is not running on vm:5432")

    monkeypatch.setattr(Client, "__init__", down)
    res = CliRunner().invoke(cli, ["task", "wait", *args])
    assert res.exit_code == 5, res.output
    assert len(res.output.strip().splitlines()) == 1
    assert "could not wait: the server for P is not running" in res.output

def test_as_completed_checks_its_ids_and_starts_its_clock_when_called(
        client: Client, launcher: FakeLauncher) -> None:
    """As concurrent.futures.as_completed: bad input fails at the call, and the timeout
    counts from the call, not from the first next()."""
    with pytest.raises(UsageError):
        client.as_completed(["x"])  # type: ignore[list-item]
    with pytest.raises(UsageError):
        client.as_completed([1], timeout=float("nan"))
    ids = add(client, 1)
    it = client.as_completed(ids, timeout=0.5)
    time.sleep(0.6)  # the whole timeout passes before the first next()
    # The task ends soon after that next(): counted from the first next(), the iteration
    # would yield it; counted from the call, its time is up already.
    t = launcher.later(0.3, lambda: launcher.end({ids[0]: 1}))
    with pytest.raises(waiting.WaitTimeout):
        next(it)
    t.join()


# -- notifications from anyone ---------------------------------------------------------
@pytest.fixture()
def viewer(su: Any) -> Any:
    """A viewer's session: the least trusted role that may connect at all."""
    from psycopg import sql as pgsql

    name = f"w_viewer_{os.getpid()}"
    su.execute(pgsql.SQL("CREATE ROLE {} LOGIN IN ROLE balsam_viewer").format(
        pgsql.Identifier(name)))
    su.execute(pgsql.SQL("SET SESSION AUTHORIZATION {}").format(pgsql.Identifier(name)))
    yield su
    su.execute("RESET SESSION AUTHORIZATION")
    su.execute(pgsql.SQL("DROP ROLE {}").format(pgsql.Identifier(name)))


def notify(conn: Any, payload: str) -> None:
    """The NOTIFY command: no privilege governs it, unlike pg_notify (revoked, 0007)."""
    from psycopg import sql as pgsql

    conn.execute(pgsql.SQL("NOTIFY balsam_task_final, {}").format(pgsql.Literal(payload)))


# Digits to str.isdigit that int() does not read, digits of other scripts, and noise.
HOSTILE_PAYLOADS = ["²", "1,²,3", "⁴⁵", "①", "١٢", "𝟗", "٣" * 19, " 1", "1" * 7999]


@pytest.mark.parametrize("payload", HOSTILE_PAYLOADS)
def test_a_viewers_notification_neither_breaks_nor_ends_a_wait(
        client: Client, viewer: Any, launcher: FakeLauncher, payload: str) -> None:
    """Any role that may connect may NOTIFY the waiters' channel with any text: a
    superscript digit (a digit to ``str.isdigit``, not to ``int``) once made every
    waiter of the project raise ValueError."""
    ids = add(client, 2)
    payload = payload.replace("1", str(ids[0]), 1) if payload.startswith("1,") else payload
    t = launcher.later(0.2, lambda: notify(viewer, payload))
    with pytest.raises(waiting.WaitTimeout):
        client.wait(ids, timeout=1.0)  # woken, read nothing or read them: still READY
    t.join()


def test_a_payload_names_only_ids_in_ascii_digits() -> None:
    assert waiting.parse_payload("7,²,١٢,𝟗, 8,9,x,,12345678901234567890") == {7, 9}


def test_a_viewers_notification_does_not_stop_an_executor(
        client: Client, viewer: Any, launcher: FakeLauncher) -> None:
    with Executor(client) as ex:
        f = ex.submit("tests.pyfuncs:add", a=1, b=2)
        notify(viewer, f"²,{f.task_id}")
        time.sleep(2 * STOP_CHECK_S)  # the watcher has read it
        launcher.end({f.task_id: 3})
        assert f.result(timeout=20) == 3
        g = ex.submit("tests.pyfuncs:add", a=1, b=3)
        launcher.end({g.task_id: 4})
        assert g.result(timeout=20) == 4


def test_a_failed_tasks_message_cannot_act_on_the_waiters_terminal() -> None:
    """Any member's program writes its own output tail, and whoever waits for its task
    gets TaskFailed: the interpreter prints that message, uncaught, on their terminal."""
    o = waiting.Outcome(7, "FAILED", None, 1, "killed\x1b]0;owned\x07",
                        "ok\nValueError: \x1b[2J\x1b[1;1Hall fine\u202e\x9b\n")
    message = str(waiting.TaskFailed(o))
    assert message == ("task 7 FAILED (killed\\x1b]0;owned\\x07): ValueError: "
                       "\\x1b[2J\\x1b[1;1Hall fine\\u202e\\x9b")
    assert o.output_tail.endswith("\u202e\x9b\n")  # what programs read is left as it was


def test_a_future_is_running_once_its_task_runs_and_cancel_then_leaves_it(
        client: Client, launcher: FakeLauncher, monkeypatch: pytest.MonkeyPatch) -> None:
    """running() was never true. It is once the watcher reads the task RUNNING (its read of
    every pending task, every REREAD_S: shortened here); from then on cancel() is
    concurrent.futures' (False, the task left alone) and kill() stops the task."""
    monkeypatch.setattr(waiting, "REREAD_S", 0.2)
    with Executor(client) as ex:
        f = ex.submit("tests.pyfuncs:add", a=1, b=2)
        assert not f.running()
        launcher.start([f.task_id])
        deadline = time.monotonic() + 20
        while not f.running() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert f.running() and not f.done()
        assert not f.cancel() and not f.cancelled()
        assert client.get(f.task_id)["state"] == "RUNNING"
        assert f.kill()
        with pytest.raises(waiting.TaskFailed, match="USER_KILLED"):
            f.result(timeout=20)
        assert not f.cancelled()
