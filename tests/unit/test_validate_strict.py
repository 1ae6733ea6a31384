"""Issue 15 case 12: every bad input is one line naming the field (and the line), never a
traceback — for files, the Python API and the command line's text alike."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from balsam_mpi.base import limits
from balsam_mpi.base.errors import BadProjectPath, InputError, UsageError
from balsam_mpi.tasks import files
from balsam_mpi.tasks.validate import AppInfo, check_app, check_changes, check_task

APPS = {"hello": AppInfo(1, "hello", "echo hello {who}", frozenset({"who"}))}


def _task(**kw: Any) -> dict[str, Any]:
    return check_task({"app": "hello", "workflow": "w", "params": {"who": "x"}, **kw}, APPS)


def _jsonl(data: bytes, name: str = "t.jsonl") -> list[tuple[str, dict[str, Any]]]:
    return list(files.read_tasks(io.BytesIO(data), name))


# -- files --------------------------------------------------------------------------------
def test_invalid_utf8_in_a_file_names_the_line() -> None:
    data = b'{"app": "hello", "workflow": "w"}\n{"app": "hello", "workflow": "\xff"}\n'
    with pytest.raises(InputError, match=r"^t.jsonl line 2: not valid UTF-8 \(byte 0xff"):
        _jsonl(data)


def test_deep_json_in_a_file_is_refused_without_a_traceback() -> None:
    deep = b'{"app": "hello", "workflow": "w", "params": ' + b"[" * 100_000 \
        + b"]" * 100_000 + b"}\n"
    with pytest.raises(InputError, match="^t.jsonl line 1: .*nested deeper than"):
        _jsonl(deep)


def test_a_moderately_deep_document_is_refused_by_the_cap() -> None:
    doc = {"app": "hello", "workflow": "w", "params": {"who": "x"},
           "data": {"deep": json.loads("[" * 100 + "]" * 100)}}
    [(label, raw)] = _jsonl(json.dumps(doc).encode())
    with pytest.raises(InputError, match=f"data: nested deeper than {limits.JSON_MAX_DEPTH}"):
        check_task(raw, APPS)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_json_numbers_are_refused(literal: str) -> None:
    line = f'{{"app": "hello", "workflow": "w", "wall_time_min": {literal}}}\n'.encode()
    with pytest.raises(InputError, match="^t.jsonl line 1: malformed JSON"):
        for _label, raw in _jsonl(line):
            check_task(raw, APPS)


def test_a_huge_integer_literal_is_one_line() -> None:
    line = b'{"app": "hello", "workflow": "w", "priority": ' + b"9" * 5000 + b"}\n"
    with pytest.raises(InputError, match="line 1: "):
        for _label, raw in _jsonl(line):
            check_task(raw, APPS)


def test_a_byte_order_mark_is_allowed_on_the_first_line() -> None:
    data = b'\xef\xbb\xbf{"app": "hello", "workflow": "w"}\n'
    assert _jsonl(data) == [("t.jsonl line 1", {"app": "hello", "workflow": "w"})]


def test_an_over_long_line_is_refused_before_it_is_read_whole() -> None:
    data = b'{"app": "' + b"x" * (files.LINE_MAX_BYTES + 10) + b'"}\n'
    with pytest.raises(InputError, match="t.jsonl line 1: longer than"):
        _jsonl(data)


def test_csv_cells_are_parsed_strictly_by_field_type() -> None:
    text = b"app,workflow,num_nodes,wall_time_min,fail_with_parents,params.who\n" \
           b"hello,w,3,2.5,no,x\n"
    [(_label, raw)] = list(files.read_tasks(io.BytesIO(text), "t.csv"))
    assert raw == {"app": "hello", "workflow": "w", "num_nodes": 3, "wall_time_min": 2.5,
                   "fail_with_parents": False, "params": {"who": "x"}}
    for cell, field in (("three", "num_nodes"), ("1e3", "num_nodes"), ("nan", "wall_time_min"),
                        ("٣", "num_nodes")):
        bad = f"app,workflow,{field}\nhello,w,{cell}\n".encode()
        with pytest.raises(InputError, match=f"^t.csv line 2: {field}: "):
            list(files.read_tasks(io.BytesIO(bad), "t.csv"))


def test_csv_columns_are_named_once() -> None:
    with pytest.raises(InputError, match="t.csv line 1: column 'app' is named twice"):
        list(files.read_tasks(io.BytesIO(b"app,workflow,app\nhello,w,other\n"), "t.csv"))


def test_csv_nul_and_invalid_utf8_name_the_line() -> None:
    with pytest.raises(InputError, match="t.csv line 3: not valid UTF-8"):
        list(files.read_tasks(io.BytesIO(b"app,workflow\nhello,w\nhello,\xfe\n"), "t.csv"))
    with pytest.raises(InputError, match="t.csv line 2: workflow: contains a NUL"):
        list(files.read_tasks(io.BytesIO(b"app,workflow\nhello,a\x00b\n"), "t.csv"))


def test_csv_an_unclosed_quote_is_refused_not_swallowed() -> None:
    # csv's lenient default read the rest of the file into the open cell: three rows
    # came back as one task whose value held the other two lines.
    data = b'app,workflow,params.who\nhello,w,"x\nhello,w,y\nhello,w,z\n'
    with pytest.raises(InputError, match=r"^t.csv line 2: .*quote.* not closed"):
        list(files.read_tasks(io.BytesIO(data), "t.csv"))
    with pytest.raises(InputError, match=r"^t.csv line 3: bad CSV"):
        list(files.read_tasks(io.BytesIO(b'app,workflow\nhello,w\nhello,"w"x\n'), "t.csv"))


def test_csv_lines_ended_by_a_lone_carriage_return_are_named() -> None:
    # csv's own words were "do you need to open the file in universal-newline mode?"
    with pytest.raises(InputError, match=r"^t.csv line 1: .*carriage return \(\\r\).*\\n"):
        list(files.read_tasks(io.BytesIO(b"app,workflow\rhello,w\r"), "t.csv"))


def test_csv_a_field_and_its_entries_are_not_both_columns() -> None:
    # Both filled params: one of them was dropped or merged without a word.
    for header in (b"app,workflow,params.who,params", b"app,workflow,params,params.who"):
        data = header + b'\nhello,w,x,"{""who"": ""y""}"\n'
        with pytest.raises(InputError, match=r"^t.csv line 1: columns .*params.* both"):
            list(files.read_tasks(io.BytesIO(data), "t.csv"))


def test_json_keys_are_given_once() -> None:
    # json.loads keeps the last of two equal keys; the first value was lost silently.
    with pytest.raises(InputError, match=r"^t.jsonl line 2: 'num_nodes' given twice"):
        _jsonl(b'{"app": "hello"}\n{"app": "hello", "num_nodes": 1, "num_nodes": 4}\n')
    with pytest.raises(InputError, match=r"^t.jsonl line 1: 'who' given twice"):
        _jsonl(b'{"app": "hello", "params": {"who": "a", "who": "b"}}\n')
    with pytest.raises(InputError, match=r"^tags: 'k' given twice"):
        files.parse_sets(['tags={"k": "a", "k": "b"}'])
    data = b'app,workflow,params\nhello,w,"{""who"": ""a"", ""who"": ""b""}"\n'
    with pytest.raises(InputError, match=r"^t.csv line 2: params: 'who' given twice"):
        list(files.read_tasks(io.BytesIO(data), "t.csv"))


# -- the Python API's values ----------------------------------------------------------------
@pytest.mark.parametrize("bad, message", [
    ({"num_nodes": 2**31 - 1}, "num_nodes: must be from 1 to 100,000"),
    ({"wall_time_min": 1e308}, "wall_time_min: must be from 0 to 525600"),
    ({"gpus_per_rank": 1000}, "gpus_per_rank: must be from 0 to 64"),
    ({"num_nodes": "3"}, "num_nodes: must be a whole number, got the text '3'"),
    ({"wall_time_min": "3"}, "wall_time_min: must be a number, got the text '3'"),
    ({"num_nodes": 3.0}, "num_nodes: must be a whole number, got the number 3.0"),
    ({"fail_with_parents": "false"}, "fail_with_parents: must be true or false"),
    ({"params": {"who": object()}}, "params.who: a object .* is not a JSON value"),
    ({"params": {"who": float("nan")}}, r"params.who: nan is not a JSON number"),
    ({"tags": {1: "a"}}, "tags: keys must be text, got the integer 1"),
    ({"params": {"who": "a\x00b"}}, "params.who: contains a NUL"),
    ({"workflow": "w\x00"}, "workflow: contains a NUL"),
    ({"name": "n\x00"}, "name: contains a NUL"),
    ({"args": ["ok", "a\x00"]}, r"args\[1\]: contains a NUL"),
    ({"env": {"A": "\x00"}}, "env.A: contains a NUL"),
    ({"tags": {"k\x00": "v"}}, "tags.*: contains a NUL"),
    ({"input_files": ["a\x00*"]}, r"input_files\[0\]: contains a NUL"),
    ({"workflow": "w\udcff"}, "workflow: not valid UTF-8"),
    ({"name": "x" * (limits.NAME_MAX + 1)}, "name: at most 256 characters"),
    ({"params": {"who": "x" * limits.PARAMS_MAX_BYTES}}, "params: at most 262,144 bytes"),
    ({"args": ["a"] * (limits.ARGS_MAX_ITEMS + 1)}, "args: at most 4,096 items"),
    ({"parents": [2**63]}, r"parents\[0\]: .* is not a task id"),
    ({"parents": [0]}, r"parents\[0\]: 0 is not a task id"),
    ({"key": 5}, "key: must be text"),
    # the database's env_names_ok: refused there as "outside the limits", naming no key
    ({"env": {"A B": "1"}}, r"^env: 'A B' is not a variable name"),
    ({"env": {"1A": "1"}}, r"^env: '1A' is not a variable name"),
    ({"env": {"É": "1"}}, r"^env: 'É' is not a variable name"),
])
def test_absurd_and_hostile_values_are_named(bad: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=message):
        _task(**bad)


def test_integers_of_other_libraries_are_whole_numbers() -> None:
    class Index:  # numpy.int64 and friends: __index__, not int
        def __index__(self) -> int:
            return 4

    assert _task(num_nodes=Index())["num_nodes"] == 4


def test_app_fields_are_capped_and_strict() -> None:
    with pytest.raises(InputError, match="command: at most 65,536 characters"):
        check_app("big", "echo " + "a" * 2_000_000, {})
    with pytest.raises(InputError, match="command: .*NUL"):
        check_app("x", "echo \x00", {})
    with pytest.raises(InputError, match="command: .*quotation"):
        check_app("x", "echo 'unclosed", {})
    with pytest.raises(InputError, match="shell: must be true or false"):
        check_app("x", "true", {"shell": "yes"})
    with pytest.raises(InputError, match="description: at most"):
        check_app("x", "true", {"description": "d" * (limits.DESCRIPTION_MAX + 1)})
    with pytest.raises(InputError, match="name: at most 256"):
        check_app("a" * 300, "true", {})


def test_template_format_specs_are_plain() -> None:
    # A nested field is a placeholder no task can fill (params refuses its name), and a
    # width of a billion made the leader build a gigabyte string before refusing the argv.
    with pytest.raises(InputError, match=r"^command: placeholder \{a\}'s format .*nested"):
        check_app("x", "echo {a:{b}}", {})
    with pytest.raises(InputError, match=r"^command: placeholder \{n\}'s format .*999999999"):
        check_app("x", "echo {n:>999999999}", {})
    with pytest.raises(InputError, match=r"^command: placeholder \{n\}'s format"):
        check_app("x", "echo {n:.100000f}", {})
    assert check_app("x", "run {n:04d} {x:>8} {y!r} {z:,.2f}", {})["command"]


def test_modify_is_as_strict_as_add() -> None:
    with pytest.raises(InputError, match="priority: must be a whole number"):
        check_changes({"priority": "5"})
    with pytest.raises(InputError, match="num_nodes: must be from 1"):
        check_changes({"num_nodes": 10**12})
    with pytest.raises(InputError, match="tags.k: contains a NUL"):
        check_changes({"tags": {"k": "\x00"}})


# -- text from the command line -------------------------------------------------------------
def test_set_and_flags_are_parsed_by_field_type() -> None:
    assert files.parse_sets(["priority=5", "name=123", 'tags={"k": "v"}',
                              "wall_time_min=2.5", "fail_with_parents=no"]) == {
        "priority": 5, "name": "123", "tags": {"k": "v"}, "wall_time_min": 2.5,
        "fail_with_parents": False}
    with pytest.raises(InputError, match="priority: must be a whole number"):
        files.parse_sets(["priority=high"])
    with pytest.raises(InputError, match="tags: expected JSON"):
        files.parse_sets(["tags=notjson"])
    with pytest.raises(InputError, match="tags: .*nested deeper"):
        files.parse_sets(["tags=" + "[" * 100_000])
    with pytest.raises(InputError, match="set: 'priority' given twice"):
        files.parse_sets(["priority=1", "priority=2"])
    with pytest.raises(InputError, match="params: 'who' given twice"):
        files.parse_pairs(["who=a", "who=b"], "params")


def test_ids_and_counts_from_text() -> None:
    from balsam_mpi.cli.taskargs import count, task_id

    assert task_id(str(limits.ID_MAX)) == limits.ID_MAX
    with pytest.raises(InputError, match="id: .* is not a task id .*2\\^63-1"):
        task_id("99999999999999999999")
    with pytest.raises(InputError, match="limit: must be from 1"):
        count("-1", "limit")
    with pytest.raises(InputError, match="limit: must be a whole number"):
        count("ten", "limit")


# -- the project ----------------------------------------------------------------------------
def test_a_project_that_is_not_a_path_or_not_a_directory_is_bad_input(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from balsam_mpi.base.project import Project
    from balsam_mpi.tasks.client import Client

    with pytest.raises(BadProjectPath, match="project: expected a directory path, got the "
                                             "integer 12345"):
        Client(12345)  # type: ignore[arg-type]
    with pytest.raises(BadProjectPath, match="project: /etc/passwd is not a directory"):
        Project.from_env("/etc/passwd")
    with pytest.raises(BadProjectPath, match="project: .* does not exist"):
        Project.from_env(tmp_path / "nope")
    with pytest.raises(BadProjectPath, match="project: .*NUL"):
        Project.from_env("/tmp/a\x00b")
    assert BadProjectPath("x").exit_code == 2 and issubclass(BadProjectPath, UsageError)
    assert issubclass(InputError, InputError)


def test_an_empty_project_path_is_not_the_activated_project(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--project "$P"` with P unset, or Client(""), went on with $BALSAM_DB_PATH's
    project: a command meant for one project changed another."""
    from click.testing import CliRunner

    from balsam_mpi.base.project import Project
    from balsam_mpi.cli import cli

    monkeypatch.setenv("BALSAM_DB_PATH", str(tmp_path))  # a directory: it would be used
    with pytest.raises(BadProjectPath, match="^project: the path is empty;"):
        Project.from_env("")
    result = CliRunner().invoke(cli, ["--project", "", "task", "rm", "--workflow", "w",
                                      "--yes"], prog_name="balsam-mpi")
    assert result.exit_code == 2
    assert result.output.startswith("balsam-mpi: error: project: the path is empty;")
    assert len(result.output.splitlines()) == 1
    from balsam_mpi.dbctl.cli import cli as dbctl

    for args in (["--project", "", "status"], ["activate", ""]):
        result = CliRunner().invoke(dbctl, args, prog_name="balsam-dbctl")
        assert result.exit_code == 2, result.output
        assert result.output.startswith("balsam-dbctl: error: project: the path is empty;")
