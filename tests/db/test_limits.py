"""The database enforces balsam_mpi/base/limits.py itself (migrations/0007), whoever writes.

Every cap is read from base/limits.py here, never restated: a value at the cap is stored, one
past it is refused by a CHECK constraint that names the field. If base/limits.py and the
migration drift apart, these tests fail. The rows go in by raw INSERT as the owner's
everyday role (what anyone could type into psql), and one case through Client.
"""

from __future__ import annotations

import json
import math
from typing import Any

import psycopg
import pytest
from psycopg import sql as pgsql

from balsam_mpi import Client
from balsam_mpi.base import limits
from balsam_mpi.base.errors import UsageError


@pytest.fixture()
def app_id(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("INSERT INTO apps (name, command) VALUES ('a', 'true') RETURNING id"
                       ).fetchone()
    assert row is not None
    return int(row[0])


def _insert(conn: psycopg.Connection[Any], app_id: int, **fields: Any) -> None:
    """One READY task with ``fields`` (JSON values as jsonb), by raw INSERT."""
    row = {"workflow": "w", "app_id": app_id, "state": "READY", **fields}
    values = [json.dumps(v) if isinstance(v, dict) else v for v in row.values()]
    casts = [pgsql.SQL("%s::jsonb" if isinstance(v, dict) else "%s") for v in row.values()]
    conn.execute(pgsql.SQL("INSERT INTO tasks ({}) VALUES ({})").format(
        pgsql.SQL(", ").join(map(pgsql.Identifier, row)), pgsql.SQL(", ").join(casts)),
        values)


def _refused(conn: psycopg.Connection[Any], app_id: int, field: str, **fields: Any) -> None:
    with pytest.raises(psycopg.errors.CheckViolation) as info:
        _insert(conn, app_id, **fields)
    assert info.value.diag.constraint_name == f"tasks_{field}_limit", str(info.value)


def _text_bytes(conn: psycopg.Connection[Any], doc: dict[str, Any]) -> int:
    row = conn.execute("SELECT octet_length(%s::jsonb::text)", (json.dumps(doc),)).fetchone()
    assert row is not None
    return int(row[0])


def _doc_of_size(conn: psycopg.Connection[Any], size: int, value_max: int | None = None
                 ) -> dict[str, Any]:
    """A JSON object whose text form (as Postgres prints it) is exactly ``size`` bytes,
    each value at most ``value_max`` characters."""
    chunk = value_max or size
    doc: dict[str, Any] = {}
    i = 0
    while _text_bytes(conn, doc) < size:
        key = f"K{i}"
        doc[key] = ""
        room = size - _text_bytes(conn, doc)
        doc[key] = "x" * max(0, min(chunk, room))
        i += 1
    assert _text_bytes(conn, doc) == size
    return doc


@pytest.mark.parametrize("field, cap", [
    ("workflow", limits.NAME_MAX), ("name", limits.NAME_MAX)])
def test_text_fields(conn: psycopg.Connection[Any], app_id: int, field: str,
                     cap: int) -> None:
    _insert(conn, app_id, **{field: "é" * cap})  # characters, not bytes
    _refused(conn, app_id, field, **{field: "x" * (cap + 1)})


@pytest.mark.parametrize("field, cap, value_max", [
    ("params", limits.PARAMS_MAX_BYTES, None), ("tags", limits.TAGS_MAX_BYTES, None),
    ("data", limits.DATA_MAX_BYTES, None),
    ("env", limits.ENV_MAX_BYTES, limits.ENV_VALUE_MAX)])
def test_json_documents_by_the_bytes_of_their_text(conn: psycopg.Connection[Any],
                                                   app_id: int, field: str, cap: int,
                                                   value_max: int | None) -> None:
    _insert(conn, app_id, **{field: _doc_of_size(conn, cap, value_max)})
    _refused(conn, app_id, field, **{field: _doc_of_size(conn, cap + 1, value_max)})


@pytest.mark.parametrize("field", ["params", "tags", "data"])
def test_json_depth(conn: psycopg.Connection[Any], app_id: int, field: str) -> None:
    def nested(depth: int) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        for _ in range(depth - 1):
            doc = {"a": doc}
        return doc

    _insert(conn, app_id, **{field: nested(limits.JSON_MAX_DEPTH)})
    _refused(conn, app_id, field, **{field: nested(limits.JSON_MAX_DEPTH + 1)})


def test_tag_keys_and_env_values(conn: psycopg.Connection[Any], app_id: int) -> None:
    _insert(conn, app_id, tags={"k" * limits.NAME_MAX: "v"})
    _refused(conn, app_id, "tags", tags={"k" * (limits.NAME_MAX + 1): "v"})
    _insert(conn, app_id, env={"V": "x" * limits.ENV_VALUE_MAX})
    _refused(conn, app_id, "env", env={"V": "x" * (limits.ENV_VALUE_MAX + 1)})


@pytest.mark.parametrize("name", ["A=B", "1A", "", "A-B", "A B", "Ä"])
def test_env_names_a_launcher_could_not_set_are_refused(conn: psycopg.Connection[Any],
                                                        app_id: int, name: str) -> None:
    """A raw INSERT with env {"A=B": "x"} crashed every launcher that claimed the task."""
    _refused(conn, app_id, "env", env={name: "x"})


@pytest.mark.parametrize("value", [1, None, ["x"], {"x": "y"}, True])
def test_env_values_are_text(conn: psycopg.Connection[Any], app_id: int, value: Any) -> None:
    _refused(conn, app_id, "env", env={"NAME": value})


def test_env_names_a_shell_takes_are_stored(conn: psycopg.Connection[Any],
                                            app_id: int) -> None:
    _insert(conn, app_id, env={"_A1": "x", "PATH": "/bin", "a_b": ""})


def test_arrays(conn: psycopg.Connection[Any], app_id: int) -> None:
    _insert(conn, app_id, args=["a"] * limits.ARGS_MAX_ITEMS)
    _refused(conn, app_id, "args", args=["a"] * (limits.ARGS_MAX_ITEMS + 1))
    _insert(conn, app_id, args=["x" * limits.ARG_MAX, "y"])
    _refused(conn, app_id, "args", args=["x" * (limits.ARG_MAX + 1)])
    _refused(conn, app_id, "args", args=["x", None])
    _insert(conn, app_id, input_files=["*.txt"] * limits.INPUT_FILES_MAX_ITEMS)
    _refused(conn, app_id, "input_files",
             input_files=["*.txt"] * (limits.INPUT_FILES_MAX_ITEMS + 1))
    _insert(conn, app_id, input_files=["x" * limits.PATTERN_MAX])
    _refused(conn, app_id, "input_files", input_files=["x" * (limits.PATTERN_MAX + 1)])


@pytest.mark.parametrize("pattern", ["/etc/passwd", "../x", "a/../../b", "", "..",
                                     "a\\..\\b"])
def test_input_files_stay_in_the_parents_directory(conn: psycopg.Connection[Any],
                                                   app_id: int, pattern: str) -> None:
    _refused(conn, app_id, "input_files", input_files=[pattern])


@pytest.mark.parametrize("field", sorted(limits.INT_RANGES))
def test_integer_ranges(conn: psycopg.Connection[Any], app_id: int, field: str) -> None:
    low, high = limits.INT_RANGES[field]
    _insert(conn, app_id, **{field: low})
    _insert(conn, app_id, **{field: high})
    _refused(conn, app_id, field, **{field: low - 1})
    _refused(conn, app_id, field, **{field: high + 1})


@pytest.mark.parametrize("bad", [limits.WALL_TIME_MIN_MAX + 1e-6, math.inf, -math.inf,
                                 math.nan, -1e-9])
def test_wall_time_is_finite_and_capped(conn: psycopg.Connection[Any], app_id: int,
                                        bad: float) -> None:
    _insert(conn, app_id, wall_time_min=limits.WALL_TIME_MIN_MAX)
    _insert(conn, app_id, wall_time_min=0.0)
    _refused(conn, app_id, "wall_time_min", wall_time_min=bad)


@pytest.mark.parametrize("column, cap", [
    ("name", limits.NAME_MAX), ("command", limits.COMMAND_MAX),
    ("preprocess", limits.COMMAND_MAX), ("postprocess", limits.COMMAND_MAX),
    ("env_script", limits.COMMAND_MAX), ("description", limits.DESCRIPTION_MAX)])
def test_apps(conn: psycopg.Connection[Any], column: str, cap: int) -> None:
    def row(n: int, tag: str) -> dict[str, str]:
        values = {"name": f"app_{tag}", "command": "true", column: "x" * n}
        if column == "name":
            values["name"] = tag[0] * n
        return values

    for n, tag, ok in ((cap, "a", True), (cap + 1, "b", False)):
        values = row(n, tag)
        statement = pgsql.SQL("INSERT INTO apps ({}) VALUES ({})").format(
            pgsql.SQL(", ").join(map(pgsql.Identifier, values)),
            pgsql.SQL(", ").join([pgsql.Placeholder()] * len(values)))
        if ok:
            conn.execute(statement, list(values.values()))
        else:
            with pytest.raises(psycopg.errors.CheckViolation) as info:
                conn.execute(statement, list(values.values()))
            assert info.value.diag.constraint_name == f"apps_{column}_limit"
    low, high = limits.INT_RANGES["error_retry_limit"]
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("INSERT INTO apps (name, command, error_retry_limit) VALUES "
                     "('z', 'true', %s)", (high + 1,))


def test_the_client_reports_a_refused_value_as_one_line_naming_the_field(dbname: str) -> None:
    with Client() as c:
        c.add_app("plain", "true")
        high = limits.INT_RANGES["num_nodes"][1]
        with pytest.raises(UsageError, match=r"(^|: )num_nodes: ") as info:
            c.add_tasks([{"app": "plain", "workflow": "w", "num_nodes": high + 1}])
        assert "\n" not in str(info.value)
        assert list(c.tasks(workflow="w")) == []
        [task] = c.add_tasks([{"app": "plain", "workflow": "w"}])
        with pytest.raises(UsageError, match=r"(^|: )num_nodes: "):
            c.update(task, num_nodes=high + 1)
