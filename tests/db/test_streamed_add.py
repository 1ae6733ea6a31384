"""`task add --from-file` in bounded memory (tasks/streamed.py): the file is read twice —
checked, then written chunk by chunk — and writes exactly what the list path writes."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

import psycopg
import pytest

from balsam_mpi import Client
from balsam_mpi.tasks import streamed, taskfile, writer

from .test_cli_tasks import _state, ok, run

Row = tuple[Any, ...]


@pytest.fixture()
def hello(dbname: str) -> None:
    ok("app", "add", "hello", "--command", "echo hello {who}")


def _line(i: int, **extra: Any) -> str:
    return json.dumps({"app": "hello", "workflow": "big", "name": f"task-number-{i}",
                       "params": {"who": f"someone-with-a-longer-name-{i}"},
                       "tags": {"batch": "b", "index": str(i)}, "node_packing_count": 16,
                       "wall_time_min": 1.5, **extra}) + "\n"


def _peak_of(args: list[str]) -> int:
    """Bytes Python allocated at most while the command ran (tracemalloc)."""
    tracemalloc.start()
    try:
        ok(*args)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture()
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of at most 500 tasks, so what one chunk holds is small beside the file."""
    monkeypatch.setattr(writer, "FIRST_CHUNK", 100)
    monkeypatch.setattr(writer, "CHUNK", 500)
    monkeypatch.setattr(streamed, "CHUNK", 500, raising=False)


@pytest.mark.parametrize("dag", [False, True])
def test_a_file_is_not_held_whole(hello: None, small_chunks: None, tmp_path: Path,
                                  conn: psycopg.Connection, dag: bool) -> None:
    """20,000 tasks: holding them all took ~1.5 KB a task (30 MB); now the peak is a
    chunk's worth plus a few bytes a task (the plan's arrays and, for a batch with keys,
    its keys)."""
    n = 20_000
    path = tmp_path / "tasks.jsonl"
    with path.open("w") as f:
        for i in range(n):
            # with keys: children first, each naming the key of the next line
            extra = {"key": f"k{i}", "parents": [f"k{i + 1}"]} if dag and i + 1 < n else (
                {"key": f"k{i}"} if dag else {})
            f.write(_line(i, **extra))
    peak = _peak_of(["task", "add", "--from-file", str(path)])
    assert conn.execute("SELECT count(*) FROM tasks").fetchone() == (n,)
    per_task = 300 if dag else 100  # the keys dict of a batch with keys, or line numbers
    assert peak < 3_000_000 + per_task * n, f"peak {peak:,} bytes for {n:,} tasks"


def _rows(conn: psycopg.Connection, workflow: str) -> tuple[list[Row], list[Row], list[Row]]:
    """A workflow's tasks, dependencies and events, ids counted from the batch's first."""
    lo = conn.execute("SELECT min(id) FROM tasks WHERE workflow = %s", (workflow,)).fetchone()
    assert lo is not None and lo[0] is not None
    base = lo[0] - 1

    def rel(v: Any) -> Any:
        return v - base if isinstance(v, int) and v > base else v

    tasks = conn.execute(
        "SELECT id, name, app_id, params, args, tags, num_nodes, node_packing_count, "
        "wall_time_min, env, input_files, priority, state::text, "
        "regexp_replace(state_message, '[0-9]+', '#'), failed_by, pending_parents, "
        "fail_with_parents, error_retry_limit, data, owner FROM tasks WHERE workflow = %s "
        "ORDER BY ctid", (workflow,)).fetchall()
    deps = conn.execute(
        "SELECT d.child_id, d.parent_id FROM task_deps d JOIN tasks t ON t.id = d.child_id "
        "WHERE t.workflow = %s ORDER BY d.child_id, d.parent_id", (workflow,)).fetchall()
    events = conn.execute(
        "SELECT e.task_id, e.from_state::text, e.to_state::text FROM task_events e "
        "JOIN tasks t ON t.id = e.task_id WHERE t.workflow = %s ORDER BY e.id",
        (workflow,)).fetchall()
    ids_at = (0, 14)  # id, failed_by
    return ([tuple(rel(v) if k in ids_at else v for k, v in enumerate(r)) for r in tasks],
            [tuple(map(rel, r)) for r in deps], [(rel(r[0]), *r[1:]) for r in events])


def stored_parents(su: psycopg.Connection) -> tuple[int, int]:
    """Two stored tasks to name as parents: one finished, one failed."""
    with Client() as c:
        stored_ok, stored_failed = c.add_tasks(
            [{"app": "hello", "workflow": "stored", "params": {"who": "a"}}] * 2)
    su.execute("UPDATE tasks SET state = 'RUNNING' WHERE id = ANY(%s)",
               ([stored_ok, stored_failed],))
    su.execute("UPDATE tasks SET state = 'RUN_DONE' WHERE id = %s", (stored_ok,))
    su.execute("UPDATE tasks SET state = 'JOB_FINISHED' WHERE id = %s", (stored_ok,))
    su.execute("UPDATE tasks SET state = 'FAILED' WHERE id = %s", (stored_failed,))
    return stored_ok, stored_failed


def _mixed(workflow: str, stored_ok: int, stored_failed: int) -> list[dict[str, Any]]:
    """Children before parents, stored parents finished and failed, a task that runs
    anyway, parents named twice."""
    return [
        {"name": "after-z", "params": {"who": "w"}, "parents": ["z"]},
        {"name": "c", "params": {"who": "c"}, "parents": ["p", "q", "p"], "key": "c"},
        {"name": "x", "params": {"who": "x"}, "parents": [stored_failed]},
        {"name": "y", "params": {"who": "y"}, "parents": [stored_failed, "c"],
         "fail_with_parents": False},
        {"name": "p", "params": {"who": "p"}, "key": "p", "parents": [stored_ok]},
        {"name": "q", "params": {"who": "q"}, "key": "q", "parents": ["x"]},
        {"name": "x2", "params": {"who": "x2"}, "key": "x", "parents": [stored_failed]},
        {"name": "z", "params": {"who": "z"}, "args": ["--v"], "tags": {"k": "v"},
         "priority": 3, "key": "z"},
    ]


@pytest.mark.parametrize("via_stdin", [False, True])
def test_a_file_writes_what_the_list_path_writes(hello: None, conn: psycopg.Connection,
                                                 su: psycopg.Connection, tmp_path: Path,
                                                 via_stdin: bool) -> None:
    batch = _mixed("w", *stored_parents(su))
    with Client() as c:
        c.add_tasks([{"app": "hello", "workflow": "listed", **t} for t in batch])
    text = "".join(json.dumps(t) + "\n" for t in batch)
    args = ["task", "add", "--app", "hello", "--workflow", "filed", "--from-file"]
    if via_stdin:
        ok(*args, "-", input=text)
    else:
        path = tmp_path / "mixed.jsonl"
        path.write_text(text)
        ok(*args, str(path))
    listed, filed = _rows(conn, "listed"), _rows(conn, "filed")
    assert filed == listed
    assert {r[12] for r in filed[0]} == {"FAILED", "AWAITING_PARENTS", "READY"}
    # without parents, in chunks: same chunks, same rows and events
    plain = [{"name": f"t{i}", "params": {"who": str(i)}} for i in range(2600)]
    with Client() as c:
        c.add_tasks([{"app": "hello", "workflow": "plain-listed", **t} for t in plain])
    path = tmp_path / "plain.jsonl"
    path.write_text("".join(json.dumps(t) + "\n" for t in plain))
    ok("task", "add", "--app", "hello", "--workflow", "plain-filed", "--from-file", str(path))
    assert _rows(conn, "plain-filed") == _rows(conn, "plain-listed")


def test_a_file_changed_between_the_passes_adds_nothing(
        hello: None, conn: psycopg.Connection, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join(_line(i) for i in range(50)))
    before = _state(conn)
    real = taskfile.TaskFile.records
    passes = [0]

    def records(self: taskfile.TaskFile) -> Any:
        passes[0] += 1
        if passes[0] == 2:  # someone rewrites a value in place between the passes
            with path.open("r+b") as f:
                f.seek(path.read_bytes().index(b'"wall_time_min": 1.5'))
                f.write(b'"wall_time_min": 2.5')
        return real(self)

    monkeypatch.setattr(taskfile.TaskFile, "records", records)
    result = run("task", "add", "--from-file", str(path))
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "changed while it was being read; nothing was added" in lines[0]
    assert passes[0] == 2 and _state(conn) == before


@pytest.mark.parametrize("lines, expected", [
    # the file's own errors come first wherever they are, as when it was read whole first
    (['{"workflow": "w", "app": "hello", "params": {"who": "a"}, "num_nodes": 0}',
      "{not json"], "line 2: malformed JSON"),
    # then the first invalid task, before any key of the batch is resolved
    (['{"workflow": "w", "app": "hello", "params": {"who": "a"}, "parents": ["nope"]}',
      '{"workflow": "w", "app": "hello", "params": {"who": "a"}, "num_nodes": 0}'],
     "line 2: num_nodes"),
    (['{"workflow": "w", "app": "hello", "params": {"who": "a"}, "parents": ["later"]}',
      '{"workflow": "w", "app": "hello", "params": {"who": "b"}, "parents": ["me"], '
      '"key": "me"}'], "line 1: parents: no task of this batch has key 'later'"),
    (['{"workflow": "w", "app": "hello", "params": {"who": "a"}, "key": "a"}',
      '{"workflow": "w", "app": "hello", "params": {"who": "b"}, "parents": ["b"], '
      '"key": "b"}', '{"workflow": "w", "app": "hello", "params": {"who": "c"}, "key": "a"}'],
     "line 3: key: 'a' is also the key of"),
    (['{"workflow": "w", "app": "hello", "params": {"who": "b"}, "parents": ["b"], '
      '"key": "b"}'], "line 1: parents: a task cannot be its own parent"),
    (['{"workflow": "w", "app": "hello", "params": {"who": "a"}, "parents": [999999]}'],
     "line 1: parents: no task with id 999999"),
])
def test_a_bad_file_is_one_line_naming_it_and_adds_nothing(
        hello: None, conn: psycopg.Connection, tmp_path: Path, lines: list[str],
        expected: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    before = _state(conn)
    for args in (["--from-file", str(path)], ["--from-file", "-"]):
        result = run("task", "add", *args, input=path.read_text())
        out = result.output.strip().splitlines()
        assert result.exit_code == 2 and len(out) == 1 and expected in out[0], result.output
    assert _state(conn) == before
