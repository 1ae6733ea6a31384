"""Task input checks, argv rendering, file parsing and bulk-add planning (no database)."""

from __future__ import annotations

import io
from typing import Any

import pytest

from balsam_mpi.base.errors import InputError
from balsam_mpi.tasks import files, plan, writer
from balsam_mpi.tasks.argv import render_argv
from balsam_mpi.tasks.validate import (
    TASK_DEFAULTS,
    AppInfo,
    check_app,
    check_changes,
    check_task,
    placeholders,
)

APPS = {"hello": AppInfo(1, "hello", "echo hello {who}", frozenset({"who"}), 2),
        "plain": AppInfo(2, "plain", "true", frozenset())}


def _task(**kw: Any) -> dict[str, Any]:
    return check_task({"app": "hello", "workflow": "w", "params": {"who": "x"}, **kw}, APPS)


def test_defaults_and_app_retry_limit() -> None:
    t = _task()
    assert t == {"workflow": "w", "params": {"who": "x"}, "app_id": 1,
                 "error_retry_limit": 2}  # the app asks for retries; the task may override
    assert _task(error_retry_limit=0)["error_retry_limit"] == 0
    assert TASK_DEFAULTS["num_nodes"] == 1 and TASK_DEFAULTS["timeout_retry_limit"] == 3
    assert TASK_DEFAULTS["lost_retry_limit"] == 3 and TASK_DEFAULTS["fail_with_parents"]
    # a bulk add stages only the columns its tasks give; the rest take the defaults
    tasks = [dict(t), _task(name="b")]
    plan.mark_first_states(tasks, [("READY", 0, None, ""), ("FAILED", 0, 5, "m")])
    columns = writer.stage_columns(tasks)
    assert columns == ["id", "workflow", "name", "app_id", "params", "state",
                       "state_message", "error_retry_limit", "pending_parents", "failed_by"]
    rows = writer.stage_rows(tasks, [5, 6], columns)
    assert rows[0] == (5, "w", "", 1, {"who": "x"}, "READY", "", 2, 0, None)
    assert rows[1] == (6, "w", "b", 1, {"who": "x"}, "FAILED", "m", 2, 0, 5)
    assert set(writer.STAGE_TYPES) == set(TASK_DEFAULTS) | {"id", "app_id", "workflow"}


def test_text_from_flags_and_csv_is_converted_at_the_door() -> None:
    from balsam_mpi.tasks.validate import from_text

    t = _task(num_nodes=from_text("num_nodes", "4"),
              wall_time_min=from_text("wall_time_min", "2.5"),
              fail_with_parents=from_text("fail_with_parents", "false"))
    assert (t["num_nodes"], t["wall_time_min"], t["fail_with_parents"]) == (4, 2.5, False)
    with pytest.raises(InputError, match="num_nodes: must be a whole number"):
        _task(num_nodes="4")  # typed input stays typed


@pytest.mark.parametrize("bad, message", [
    ({"num_nodes": 0}, "num_nodes: must be from 1 to"),
    ({"node_packing_count": 0}, "node_packing_count: must be from 1 to"),
    ({"wall_time_min": -1}, "wall_time_min: must be from 0 to"),
    ({"wall_time_min": "soon"}, "wall_time_min: must be a number"),
    ({"num_nodes": True}, "num_nodes: must be a whole number"),
    ({"num_nodes": 2.5}, "num_nodes: must be a whole number"),
    ({"priority": 2**40}, "priority: must be from -1,000,000 to 1,000,000"),
    ({"params": {"who": "x", "whom": "y"}}, "params: 'whom' is not a placeholder"),
    ({"params": {}}, r"params: app 'hello' needs a value for \{who\}"),
    ({"params": ["x"]}, "params: must be an object"),
    ({"args": "a b"}, "args: must be a list of text"),
    ({"env": {"A": 1}}, "env.A: must be text"),
    ({"env": {"A=B": "1"}}, "env: 'A=B' is not a variable name"),
    ({"app": "nope"}, "app: no app named 'nope'"),
    ({"app": 3}, "app: must be text"),
    ({"workflow": ""}, "workflow: missing"),
    ({"bogus": 1}, "bogus: unknown field"),
    ({"parents": [True]}, r"parents\[0\]: True is not a task id"),
    ({"state": "READY"}, "state: unknown field"),
    ({"input_files": ["../secret/*"]}, r"input_files\[0\]: '../secret/\*' must be a relative"),
])
def test_bad_fields_are_named(bad: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=message):
        _task(**bad)


def test_placeholders_and_app_checks() -> None:
    assert placeholders("run {a} --x={b:>3} {{literal}}") == {"a", "b"}
    for bad in ("echo {}", "echo {a.b}", "echo {a[0]}", "echo {"):
        with pytest.raises(InputError, match="command"):
            placeholders(bad)
    assert check_app("x", "true", {"shell": True})["shell"] is True
    with pytest.raises(InputError, match="name"):
        check_app("bad name", "true", {})
    with pytest.raises(InputError, match="colour: not an app field"):
        check_app("x", "true", {"colour": "red"})


def test_render_argv_keeps_values_whole_and_never_uses_a_shell() -> None:
    argv = render_argv("python sim.py --in={inp} {n}", {"inp": "a b; rm -rf /", "n": 3},
                       ["--v", "x y"])
    assert argv == ["python", "sim.py", "--in=a b; rm -rf /", "3", "--v", "x y"]
    sh = render_argv("echo {who} | wc -c", {"who": "$(id)"}, ["a b"], shell=True)
    assert sh == ["/bin/sh", "-c", "echo '$(id)' | wc -c 'a b'"]
    assert render_argv("run {n:04d} {x}", {"n": 7, "x": True}) == ["run", "0007", "true"]
    with pytest.raises(InputError, match=r"params: no value for placeholder \{who\}"):
        render_argv("echo {who}", {})


def test_changes_are_checked() -> None:
    assert check_changes({"priority": 5, "tags": {"a": "b"}}) == {"priority": 5,
                                                                   "tags": {"a": "b"}}
    with pytest.raises(InputError, match="state: cannot be modified"):
        check_changes({"state": "READY"})


def test_jsonl_and_csv_readers_name_lines() -> None:
    text = '{"app": "hello"}\n\n# comment\n{"app": \n'
    rows = files.read_tasks(io.StringIO(text), "t.jsonl")
    assert next(rows) == ("t.jsonl line 1", {"app": "hello"})
    with pytest.raises(InputError, match="t.jsonl line 4: malformed JSON"):
        next(rows)
    with pytest.raises(InputError, match="line 1: expected a JSON object"):
        list(files.read_jsonl(["[1]"], "x"))
    csv_text = 'app,workflow,params.who,args,parents,tags\nhello,w,x,"[""-v""]",7,{"a":"b"}\n'
    [(label, task)] = list(files.read_tasks(io.StringIO(csv_text), "t.csv"))
    assert label == "t.csv line 2"
    assert task == {"app": "hello", "workflow": "w", "params": {"who": "x"}, "args": ["-v"],
                    "parents": [7], "tags": {"a": "b"}}
    with pytest.raises(InputError, match="t.csv line 2: 1 cells"):
        list(files.read_csv(io.StringIO("a,b\nx\n"), "t.csv"))
    with pytest.raises(InputError, match="line 2: params: expected JSON"):
        list(files.read_csv(io.StringIO("app,params\nhello,{bad\n"), "t.csv"))
    assert files.parse_pairs(["a=1", "b=x=y"], "tags") == {"a": "1", "b": "x=y"}
    with pytest.raises(InputError, match="params: expected KEY=VALUE"):
        files.parse_pairs(["novalue"], "params")


def test_plan_orders_parents_first_and_refuses_cycles() -> None:
    tasks = [_task(key="c", parents=["b", 99]), _task(key="b", parents=["a"]), _task(key="a")]
    p = plan.plan(tasks)
    assert p.order.index(2) < p.order.index(1) < p.order.index(0)
    assert p.existing == [99] and p.outside[0] == [99]
    ids = [10, 11, 12]
    first = plan.initial_states(tasks, p, ids, {99: "FAILED"})
    assert first[2] == ("READY", 0, None, "")
    assert first[1] == ("AWAITING_PARENTS", 1, None, "")
    assert first[0][0] == "FAILED" and first[0][2] == 99
    assert plan.dep_arrays(p, ids) == ([10, 10, 11], [11, 99, 12])
    # ids are handed out parents first; a batch already in that order keeps its order
    assert plan.ids_in_order(p, 10) == [12, 11, 10]
    ordered = plan.plan([_task(key="a"), _task(key="b", parents=["a"]), _task(),
                         _task(parents=["b", "a"])])
    assert plan.ids_in_order(ordered, 1) == [1, 2, 3, 4]
    with pytest.raises(InputError, match="task #1: parents: the dependencies"):
        plan.plan([_task(key="x", parents=["y"]), _task(key="y", parents=["x"])])
    with pytest.raises(InputError, match="task #2: key: 'x' is also the key of task #1"):
        plan.plan([_task(key="x"), _task(key="x")])
    with pytest.raises(InputError, match="no task of this batch has key 'z'"):
        plan.plan([_task(parents=["z"])])


class _CountedId(int):
    """A parent id that counts its comparisons (list membership tests by ==)."""

    compared = 0

    def __eq__(self, other: object) -> bool:
        _CountedId.compared += 1
        return int.__eq__(self, other)

    __hash__ = int.__hash__


def test_plan_of_many_parents_is_linear() -> None:
    """One task with 100,000 stored parents took 41 s to add: each parent id was looked
    up in a list of those already taken (n²/2 comparisons). A set does it in one look-up
    each, and the parents keep their order, duplicates dropped."""
    n = 3000
    parents: list[int] = [_CountedId(i) for i in range(1, n + 1)]
    tasks = [{"key": "a"}, {"key": "b"}, {"parents": [*parents, 1, "a", "b", "a"]}]
    _CountedId.compared = 0
    p = plan.plan(tasks)
    assert p.outside[2] == list(range(1, n + 1)) and p.in_batch[2] == [0, 1]
    assert p.existing == list(range(1, n + 1))
    assert _CountedId.compared < 10 * n  # was n * (n - 1): 9 million


def test_pg_free_import() -> None:
    import subprocess
    import sys

    code = ("import balsam_mpi, balsam_mpi.tasks.validate, balsam_mpi.tasks.files, balsam_mpi.tasks.writer, "
            "balsam_mpi.tasks.plan, balsam_mpi.cli, sys; "
            "print(any(m.startswith(('psycopg', 'mpi4py')) for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"


def test_query_files_use_only_named_placeholders() -> None:
    # psycopg reads every '%' of a statement, comments included: a stray one breaks it.
    import re
    from pathlib import Path

    import balsam_mpi

    text = (Path(balsam_mpi.__file__).parent / "sql" / "tasks.sql").read_text()
    stray = re.findall(r"%(?!\(\w+\)s|%)", text.replace("%%", ""))
    assert stray == []


def test_order_by_names_equal_columns_for_the_index() -> None:
    from psycopg import sql as pgsql

    from balsam_mpi.tasks.filters import filter_params, order_by

    def text(spec: str, **filters: Any) -> str:
        return order_by(spec, filter_params(filters)).as_string(None)

    assert text("id") == '"t"."id"'
    assert text("-id", workflow="w", state="READY") == \
        '"t"."workflow" DESC, "t"."state" DESC, "t"."id" DESC'
    assert text("id", state=["READY"]) == '"t"."state", "t"."id"'
    assert text("id", state="READY", workflow=["a", "b"]) == '"t"."id"'
    assert text("-priority", state="READY") == '"t"."priority" DESC, t.id'
    assert isinstance(order_by("id"), pgsql.Composable)


@pytest.mark.parametrize("command", ["echo {n:>999999999}", "echo {n:.900000f}",
                                     "echo {n:{w}}"])
def test_render_argv_refuses_a_stored_template_that_would_fill_memory(command: str) -> None:
    """`app add` refuses these (check_format_specs), but an app stored before that check,
    or written past the client, reaches the leader: it must refuse the task in one line
    before formatting a gigabyte, not after (its argv cap is measured on the result)."""
    with pytest.raises(InputError, match=r"^command: placeholder \{n\}'s format"):
        render_argv(command, {"n": 7, "w": 3})
    with pytest.raises(InputError, match=r"^command: placeholder \{n\}'s format"):
        render_argv(command, {"n": 7, "w": 3}, shell=True)


def test_numeric_formats_take_numbers_given_as_text() -> None:
    """`task add --param n=5` and CSV cells give text: the documented `{n:04d}` must still
    fill, and a value that is no number is refused in one line naming the placeholder."""
    assert render_argv("run {n:04d} {x:.2f} {n}", {"n": "7", "x": "3.14159"}) == \
        ["run", "0007", "3.14", "7"]
    assert render_argv("run {n:x}", {"n": "255"}, shell=True) == ["/bin/sh", "-c", "run ff"]
    with pytest.raises(InputError, match=r"^params: \{n\} is formatted as a number \(04d\), "
                                         r"got 'seven'"):
        render_argv("run {n:04d}", {"n": "seven"})
