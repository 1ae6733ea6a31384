"""``Client.add_tasks`` of an iterator in bounded memory (tasks/spool.py): past
``SPOOL_AFTER`` tasks, a generator's tasks are checked as they are read and spooled for
the write, never held as a list, and the add writes exactly what the list path writes."""

from __future__ import annotations

import errno
import gc
import io
import pickle
import tempfile
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from balsam_mpi import Client
from balsam_mpi.base.errors import BalsamError, InputError
from balsam_mpi.tasks import spool, writer

from .test_cli_tasks import _state
from .test_streamed_add import _mixed, _rows, hello, stored_parents  # noqa: F401  (hello: a fixture)


class Task(dict[str, Any]):
    """A task the test can count while it lives (a plain dict takes no weak reference)."""

    __slots__ = ("__weakref__",)


@pytest.fixture()
def small(monkeypatch: pytest.MonkeyPatch) -> None:
    """Spooled past 200 tasks, written in chunks of at most 300."""
    monkeypatch.setattr(spool, "SPOOL_AFTER", 200)
    monkeypatch.setattr(writer, "FIRST_CHUNK", 50)
    monkeypatch.setattr(writer, "CHUNK", 300)


def _plain(n: int, workflow: str) -> Iterator[dict[str, Any]]:
    for i in range(n):
        yield {"app": "hello", "workflow": workflow, "name": f"t{i}",
               "params": {"who": str(i)}, "tags": {"i": str(i)}}


def test_a_generator_is_not_held(hello: None, small: None,  # noqa: F811
                                 conn: psycopg.Connection) -> None:
    """3,000 tasks from a generator: when it yields its last, at most a few of the ones
    before are still alive (the list path held all 3,000 until the add ended)."""
    n = 3000
    refs: list[weakref.ref[Task]] = []
    at_end: list[int] = []

    def tasks() -> Iterator[Task]:
        for i, fields in enumerate(_plain(n, "gen")):
            task = Task(fields)
            refs.append(weakref.ref(task))
            if i == n - 1:
                gc.collect()
                at_end.append(sum(r() is not None for r in refs))
            yield task

    with Client() as c:
        ids = c.add_tasks(tasks())
    assert len(ids) == n and ids == sorted(ids)
    assert at_end and at_end[0] <= 5, f"{at_end[0]} of {n} tasks alive at the generator's end"
    assert conn.execute("SELECT count(*) FROM tasks WHERE workflow = 'gen'").fetchone() == (n,)
    got = conn.execute("SELECT name FROM tasks WHERE id = ANY(%s) ORDER BY id",
                       (ids,)).fetchall()
    assert [r[0] for r in got] == [f"t{i}" for i in range(n)]


def test_a_generator_writes_what_a_list_writes(hello: None, small: None,  # noqa: F811
                                               conn: psycopg.Connection,
                                               su: psycopg.Connection) -> None:
    """Rows, dependencies and events as the list path's: independent tasks in chunks,
    and a batch with keys (children before their parents, stored parents finished and
    failed) padded past the spool's threshold."""
    with Client() as c:
        assert len(c.add_tasks(_plain(1000, "plain-gen"))) == 1000  # spooled
        c.add_tasks(list(_plain(1000, "plain-list")))
    assert _rows(conn, "plain-gen") == _rows(conn, "plain-list")

    padding = [{"name": f"pad{i}", "params": {"who": str(i)}, "parents": ["z"]}
               for i in range(400)]
    batch = padding + _mixed("w", *stored_parents(su))
    with Client() as c:
        c.add_tasks([{"app": "hello", "workflow": "dag-list", **t} for t in batch])
        c.add_tasks({"app": "hello", "workflow": "dag-gen", **t} for t in batch)
    listed, spooled = _rows(conn, "dag-list"), _rows(conn, "dag-gen")
    assert spooled == listed
    assert len(spooled[0]) == len(batch) and len(spooled[1]) > 400


def _with_bad(n: int, bad_at: int, **bad: Any) -> Iterator[dict[str, Any]]:
    for i, task in enumerate(_plain(n, "bad")):
        yield {**task, **bad} if i == bad_at else task


@pytest.mark.parametrize("bad, expected", [
    ({"num_nodes": 0}, "task #2501: num_nodes"),
    ({"app": "nope"}, "task #2501: app: no app named"),
    ({"parents": ["nowhere"]}, "task #2501: parents: no task of this batch has key"),
    ({"params": {"who": threading.Lock()}}, "task #2501: params"),
])
def test_a_bad_task_far_into_a_generator_adds_nothing(
        hello: None, small: None, conn: psycopg.Connection,  # noqa: F811
        bad: dict[str, Any], expected: str) -> None:
    """The error the list path gives, naming the task's position; nothing written."""
    before = _state(conn)
    errors = []
    for tasks in (_with_bad(3000, 2500, **bad), list(_with_bad(3000, 2500, **bad))):
        with Client() as c, pytest.raises(InputError) as raised:
            c.add_tasks(tasks)
        errors.append(str(raised.value))
    assert errors[0] == errors[1] and errors[0].startswith(expected), errors
    assert _state(conn) == before


def test_labels_name_a_spooled_task(hello: None, small: None,  # noqa: F811
                                    conn: psycopg.Connection) -> None:
    labels = [f"row {i + 10}" for i in range(600)]
    with Client() as c, pytest.raises(InputError, match=r"^row 509: wall_time_min"):
        c.add_tasks(_with_bad(600, 499, wall_time_min=-1), labels=labels)
    assert conn.execute("SELECT count(*) FROM tasks WHERE workflow = 'bad'").fetchone() == (0,)


def test_a_value_only_pickle_refuses_is_one_line_and_adds_nothing(
        hello: None, small: None, conn: psycopg.Connection,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A task the checks accept but the spool cannot keep: refused by its position, in
    the write's transaction, before anything is committed."""
    real = pickle.dumps

    def dumps(obj: Any, *args: Any, **kwargs: Any) -> bytes:
        if isinstance(obj, dict) and obj.get("name") == "t300":
            raise TypeError("cannot pickle this")
        data: bytes = real(obj, *args, **kwargs)
        return data

    monkeypatch.setattr(pickle, "dumps", dumps)
    before = _state(conn)
    with Client() as c, pytest.raises(InputError) as raised:
        c.add_tasks(_plain(600, "unkept"))
    assert str(raised.value) == ("task #301: a value of this task cannot be kept for the "
                                 "write (TypeError: cannot pickle this); give tasks as "
                                 "JSON-like values, or as a list")
    assert _state(conn) == before


def test_a_short_generator_and_a_list_take_the_list_path(
        hello: None, small: None, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """No spool for what is held anyway: a list of any length, an iterator of at most
    SPOOL_AFTER tasks."""
    made: list[int] = []
    real = spool.SpooledTasks.__init__

    def init(self: spool.SpooledTasks, *args: Any, **kwargs: Any) -> None:
        made.append(1)
        real(self, *args, **kwargs)

    monkeypatch.setattr(spool.SpooledTasks, "__init__", init)
    with Client() as c:
        assert len(c.add_tasks(_plain(200, "short"))) == 200
        assert len(c.add_tasks(list(_plain(500, "listed")))) == 500
        assert made == []
        assert len(c.add_tasks(_plain(201, "long"))) == 201
        assert made == [1]


def test_a_full_tmpdir_is_one_clear_error_and_adds_nothing(
        hello: None, small: None, conn: psycopg.Connection,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    class Full(io.BytesIO):
        def write(self, data: Any) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "TemporaryFile", lambda **kwargs: Full())
    before = _state(conn)
    with Client() as c, pytest.raises(BalsamError) as raised:
        c.add_tasks(_plain(600, "full"))
    message = str(raised.value)
    assert message.startswith("could not keep the tasks for the write in $TMPDIR (")
    assert "No space left on device); nothing was added" in message
    assert _state(conn) == before
