"""Every door of `balsam-mpi` and `balsam-dbctl`: a hostile value in any option or argument
is one line naming it, exit status 2, and nothing written (issue 15 case 12).

Hostile text: a NUL (Postgres cannot store it), a byte that was not UTF-8 on the command
line (Python hands it over as a lone surrogate), and 300,000 characters (past every cap of
base/limits.py). Hostile numbers: words, nan/inf, past int64, 1e308, below the range.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result

from balsam_mpi.cli import cli
from balsam_mpi.dbctl.cli import cli as dbctl
from balsam_mpi.demo import run

NUL, UNDECODABLE, HUGE = "a\x00b", "a\udcffb", "x" * 300_000
TEXT = {"nul": NUL, "undecodable": UNDECODABLE, "huge": HUGE}
NUMBER = {"words": "ten", "nan": "nan", "inf": "inf", "past_int64": str(2**63),
          "huge": "1e308", "hex": "0x10", "digits_of_another_script": "٣"}
ID = {**NUMBER, "zero": "0", "negative": "-1", "fraction": "2.5"}


def _invoke(group: Any, args: list[str], prog: str) -> Result:
    # catch_exceptions=False: an exception escaping the command fails the test (a traceback)
    return CliRunner().invoke(group, args, catch_exceptions=False, prog_name=prog,
                              input="y\n")


def _state(conn: psycopg.Connection) -> Any:
    return conn.execute(
        "SELECT (SELECT count(*) FROM tasks), (SELECT count(*) FROM task_deps),"
        " (SELECT count(*) FROM task_events), (SELECT count(*) FROM apps),"
        " (SELECT count(*) FROM batch_jobs), (SELECT coalesce(sum(priority), 0) FROM tasks),"
        " (SELECT coalesce(sum(num_nodes), 0) FROM tasks)").fetchone()


@pytest.fixture()
def seeded(dbname: str, conn: psycopg.Connection) -> psycopg.Connection:
    for args in (["app", "add", "hello", "--command", "echo hello {who}"],
                 ["task", "add", "--app", "hello", "--workflow", "w", "--param", "who=x"],
                 ["task", "add", "--app", "hello", "--workflow", "w", "--param", "who=y"]):
        assert _invoke(cli, args, "balsam-mpi").exit_code == 0
    return conn


def _refused(result: Result, field: str, prog: str, value: str = "") -> None:
    lines = result.output.strip().splitlines()
    if value.startswith("-") and "No such option" in result.output:
        field = value  # `task show -1`: click names the token it could not place
    assert result.exit_code == 2, result.output[:500]
    assert len(lines) == 1, result.output[:500]
    assert lines[0].startswith(f"{prog}") and ": error: " in lines[0], lines[0][:300]
    assert field in lines[0], lines[0][:300]
    assert len(lines[0]) < 1000  # the value is shown cut, not echoed whole


ADD = ["task", "add", "--app", "hello", "--workflow", "w"]
SUBMIT = ["submit", "--scheduler", "pbs", "-n", "2", "-t", "30", "--dry-run"]
ADD_P = [*ADD, "--param", "who=x"]

# (argv with "{}" where the hostile value goes, the values, the name the error must carry)
MPI_DOORS: list[tuple[list[str], dict[str, str], str]] = [
    (["--project", "{}", "ls"], {**TEXT, "file": "/etc/passwd", "missing": "/nonexistent"},
     "project"),
    (["app", "add", "{}", "--command", "true"], TEXT, "name"),
    (["app", "add", "x", "--command", "{}"], {**TEXT, "unclosed": "echo 'a"}, "command"),
    (["app", "add", "x", "--command", "true", "--description", "{}"], TEXT, "description"),
    (["app", "add", "x", "--command", "true", "--preprocess", "{}"], TEXT, "preprocess"),
    (["app", "add", "x", "--command", "true", "--postprocess", "{}"], TEXT, "postprocess"),
    (["app", "add", "x", "--command", "true", "--env-script", "{}"], TEXT, "env_script"),
    (["app", "add", "x", "--command", "true", "--error-retry-limit", "{}"],
     {**NUMBER, "negative": "-1"}, "error_retry_limit"),
    (["app", "show", "{}"], TEXT, "name"),
    (["app", "rm", "{}", "--yes"], TEXT, "name"),
    ([*ADD_P[:-2], "--param", "who={}"], {"nul": NUL, "undecodable": UNDECODABLE,
                                          "huge": HUGE}, "params"),
    ([*ADD[:-2], "--workflow", "{}", "--param", "who=x"], TEXT, "workflow"),
    (["task", "add", "--app", "{}", "--workflow", "w"], TEXT, "app"),
    ([*ADD_P, "--name", "{}"], TEXT, "name"),
    ([*ADD_P, "--arg", "{}"], TEXT, "args"),
    ([*ADD_P, "--tag", "k={}"], TEXT, "tags"),
    ([*ADD_P, "--tag", "{}=v"], TEXT, "tags"),
    ([*ADD_P, "--env", "A={}"], TEXT, "env"),
    ([*ADD_P, "--input-file", "{}"], {**TEXT, "absolute": "/etc/*", "up": "../x"},
     "input_files"),
    ([*ADD_P, "--parent", "{}"], {**ID, **TEXT}, "parents"),
    *[([*ADD_P, f"--{f.replace('_', '-')}", "{}"], {**NUMBER, "negative": "-1"}, f)
      for f in ("num_nodes", "ranks_per_node", "threads_per_rank", "gpus_per_rank",
                "node_packing_count", "wall_time_min", "error_retry_limit",
                "timeout_retry_limit", "lost_retry_limit")],
    ([*ADD_P, "--priority", "{}"], NUMBER, "priority"),
    ([*ADD_P, "--from-file", "{}"], {"nul": NUL, "missing": "/nonexistent/x.jsonl"},
     "from-file"),
    ([*ADD_P, "--format", "{}"], {"other": "yaml"}, "format"),
    (["task", "ls", "--limit", "{}"], {**ID}, "limit"),
    (["task", "ls", "--sort", "{}"], TEXT, "sort"),
    (["task", "ls", "--workflow", "{}"], TEXT, "workflow"),
    (["task", "ls", "--state", "{}"], TEXT, "state"),
    (["task", "ls", "--app", "{}"], TEXT, "app"),
    (["task", "ls", "--name", "{}"], TEXT, "name"),
    (["task", "ls", "--owner", "{}"], TEXT, "owner"),
    (["task", "ls", "--tag", "{}"], {**TEXT, "no_value": "k"}, "tags"),
    (["task", "show", "{}"], {**ID, **TEXT}, "id"),
    (["task", "why", "{}"], {**ID, **TEXT}, "id"),
    (["task", "modify", "{}", "--priority", "1"], {**ID, **TEXT}, "id"),
    (["task", "modify", "1", "--priority", "{}"], NUMBER, "priority"),
    (["task", "modify", "1", "--num-nodes", "{}"], {**NUMBER, "zero": "0"}, "num_nodes"),
    (["task", "modify", "1", "--wall-time-min", "{}"], {**NUMBER, "negative": "-1"},
     "wall_time_min"),
    (["task", "modify", "1", "--set", "{}"], TEXT, "set"),
    (["task", "modify", "1", "--set", "{}"], {"unknown": "colour=red"}, "colour"),
    (["task", "modify", "1", "--set", "{}"], {"state": "state=READY"}, "state"),
    (["task", "modify", "1", "--set", "tags={}"], {**TEXT, "not_json": "red",
                                                   "deep": "[" * 100_000}, "tags"),
    (["task", "modify", "1", "--set", "num_nodes={}"], NUMBER, "num_nodes"),
    (["task", "kill", "{}"], {**ID, **TEXT}, "id"),
    (["task", "kill", "--workflow", "{}"], TEXT, "workflow"),
    (["task", "retry", "{}"], {**ID, **TEXT}, "id"),
    (["task", "retry", "--state", "{}"], TEXT, "state"),
    (["task", "rm", "{}", "--yes"], {**ID, **TEXT}, "id"),
    (["task", "rm", "--name", "{}", "--yes"], TEXT, "name"),
    (["dep", "{}", "2"], {**ID, **TEXT}, "parent"),
    (["dep", "1", "{}"], {**ID, **TEXT}, "child"),
    (["job", "ls", "--state", "{}"], TEXT, "state"),
    (["job", "ls", "--user", "{}"], TEXT, "user"),
    (["job", "ls", "--limit", "{}"], ID, "limit"),
    (["job", "show", "{}"], {**ID, **TEXT}, "batch-job"),
    (["report", "utilization", "--since", "{}"], {**TEXT, "far": "99999999999d"}, "since"),
    (["report", "utilization", "--until", "{}"], {**TEXT, "far": "9" * 400 + "s"}, "until"),
    (["report", "utilization", "--bin", "{}"], {**TEXT, "far": "9" * 400 + "s",
                                                "tiny": "0.0000001s"}, "bin"),
    (["report", "utilization", "--batch-job", "{}"], {**ID, **TEXT}, "batch-job"),
    (["report", "utilization", "--user", "{}"], TEXT, "user"),
    (["report", "utilization", "--workflow", "{}"], TEXT, "workflow"),
    (["report", "utilization", "--owner", "{}"], TEXT, "owner"),
    (["report", "utilization", "--png", "{}"], TEXT, "png"),
    (["report", "failures", "--limit", "{}"], ID, "limit"),
    (SUBMIT[:3] + ["-n", "{}"] + SUBMIT[5:], {**ID, "too_many": "100001"}, "nodes"),
    (SUBMIT[:5] + ["-t", "{}"] + SUBMIT[7:], {**ID, "too_long": "600000"}, "wall-time"),
    ([*SUBMIT, "-q", "{}"], TEXT, "queue"),
    ([*SUBMIT, "-A", "{}"], TEXT, "account"),
    ([*SUBMIT, "--workflow", "{}"], TEXT, "workflow"),
    ([*SUBMIT, "--directive", "{}"], {**TEXT, "two_lines": "a\nb"}, "directive"),
    ([*SUBMIT, "--filesystems", "{}"], TEXT, "filesystems"),
    ([*SUBMIT, "--job-name", "{}"], {**TEXT, "shell": "a;b"}, "job"),
    ([*SUBMIT, "--margin-min", "{}"], {**NUMBER, "negative": "-1"}, "margin-min"),
    (["demo", "--tasks", "{}"], {**NUMBER, "too_few": "2", "too_many": "10000000"}, "tasks"),
    (["demo", "--ranks", "{}"], {**NUMBER, "zero": "0", "too_many": "1000000"}, "ranks"),
]


def _cases(doors: list[tuple[list[str], dict[str, str], str]]) -> list[Any]:
    out = []
    for template, hostile, field in doors:
        for kind, value in hostile.items():
            args = [a.replace("{}", value) if "{}" in a else a for a in template]
            name = " ".join(a if "{}" not in a else f"<{kind}>" for a in template)
            out.append(pytest.param(args, field, value, id=name))
    return out


@pytest.mark.parametrize("args, field, value", _cases(MPI_DOORS))
def test_balsam_mpi_doors(seeded: psycopg.Connection, args: list[str], field: str,
                          value: str, monkeypatch: pytest.MonkeyPatch) -> None:

    def no_demo(*_args: Any) -> None:  # a door test never creates a demo project
        raise AssertionError("the demo would have started")

    monkeypatch.setattr(run, "make_project", no_demo)
    before = _state(seeded)
    _refused(_invoke(cli, args, "balsam-mpi"), field, "balsam-mpi", value)
    assert _state(seeded) == before


DBCTL_DOORS: list[tuple[list[str], dict[str, str], str]] = [
    (["--project", "{}", "status"], {**TEXT, "file": "/etc/passwd"}, "project"),
    (["init", "{}"], TEXT, "path"),
    (["init", "/tmp/muin-never", "--group", "{}"], TEXT, "group"),
    (["init", "/tmp/muin-never", "--port", "{}"], {**ID, "too_big": "70000"}, "port"),
    (["init", "/tmp/muin-never", "--listen", "{}"], {**TEXT, "quote": "a'b"}, "listen"),
    (["init", "/tmp/muin-never", "--server-user", "{}"],
     {**TEXT, "option": "--help", "spaces": "a b"}, "server-user"),
    (["add-user", "{}"], {**TEXT, "option": "-x"}, "user"),
    (["drop-user", "{}"], {**TEXT, "option": "-x"}, "user"),
    (["recover", "--job", "{}"], ID, "job"),
    (["activate", "{}"], {**TEXT, "file": "/etc/passwd"}, "project"),
]


@pytest.mark.parametrize("args, field, value", _cases(DBCTL_DOORS))
def test_balsam_dbctl_doors(seeded: psycopg.Connection, args: list[str], field: str,
                            value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from balsam_mpi.dbctl import accounts

    def no_admin(argv: list[str]) -> None:  # never create accounts from a door test
        raise AssertionError(f"would have run {argv[0]}")

    monkeypatch.setattr(accounts, "_run_admin", no_admin)
    before = _state(seeded)
    _refused(_invoke(dbctl, args, "balsam-dbctl"), field, "balsam-dbctl", value)
    assert _state(seeded) == before


def test_usage_errors_are_one_line_too(seeded: psycopg.Connection) -> None:
    for args, field in ((["task", "ls", "--limit"], "--limit"),
                        (["task", "ls", "--bogus"], "--bogus"),
                        (["task", "nosuch"], "nosuch"),
                        (["--bogus"], "--bogus")):
        _refused(_invoke(cli, args, "balsam-mpi"), field, "balsam-mpi")


def test_files_refuse_hostile_lines_and_write_nothing(seeded: psycopg.Connection,
                                                      tmp_path: Any) -> None:
    before = _state(seeded)
    good = '{"app": "hello", "workflow": "f", "params": {"who": "a"}}\n'
    cases = {
        b"\xff\xfe": "line 2: not valid UTF-8",
        b'{"app": "hello", "workflow": "f", "params": ' + b"[" * 100_000 + b"]" * 100_000
        + b"}": "line 2: nested deeper than",
        b'{"app": "hello", "workflow": "f", "params": {"who": "a\\u0000"}}':
            "line 2: params.who: contains a NUL",
        b'{"app": "hello", "workflow": "f", "params": {"who": "a"}, "num_nodes": "3"}':
            "line 2: num_nodes: must be a whole number, got the text '3'",
        b'{"app": "hello", "workflow": "f", "params": {"who": "a"}, "num_nodes": 2147483647}':
            "line 2: num_nodes: must be from 1 to 100,000",
        b'{"app": "hello", "workflow": "f", "params": {"who": "a"}, "wall_time_min": 1e308}':
            "line 2: wall_time_min: must be from 0 to",
        b'{"app": "hello", "workflow": "f", "params": {"who": "a"}, "parents": [1e30]}':
            "line 2: parents[0]: ",
        b'{"app": "hello", "workflow": "f", "params": {"who": "a"}, '
        b'"parents": [99999999999999999999]}': "line 2: parents[0]: ",
    }
    for line, message in cases.items():
        path = tmp_path / "t.jsonl"
        path.write_bytes(good.encode() + line + b"\n")
        result = _invoke(cli, ["task", "add", "--from-file", str(path)], "balsam-mpi")
        _refused(result, message, "balsam-mpi")
    for stdin in ("\x00\n", '{"app": "hello", "workflow": "\\u0000"}\n'):
        result = CliRunner().invoke(cli, ["task", "add", "--from-file", "-"], input=stdin,
                                    catch_exceptions=False)
        assert result.exit_code == 2 and "stdin line 1: " in result.output
    assert _state(seeded) == before


def test_the_python_api_names_the_field(seeded: psycopg.Connection) -> None:
    from balsam_mpi import Client
    from balsam_mpi.base.errors import InputError

    before = _state(seeded)
    with Client() as c:
        for bad, message in (
                ({"params": {"who": "a\x00"}}, "task #1: params.who: contains a NUL"),
                ({"params": {"who": float("nan")}}, "params.who: nan is not a JSON number"),
                ({"params": {"who": {1, 2}}}, "params.who: a set"),
                ({"num_nodes": "3"}, "num_nodes: must be a whole number"),
                ({"parents": [2**64]}, "parents[0]: "),
        ):
            task = {"app": "hello", "workflow": "w", "params": {"who": "x"}, **bad}
            with pytest.raises(InputError) as err:
                c.add_tasks([task])
            assert message in str(err.value) and "\n" not in str(err.value)
        with pytest.raises(InputError, match="id: .* is not a task id"):
            c.get(2**63)
        with pytest.raises(InputError, match="workflow: contains a NUL"):
            list(c.tasks(workflow="a\x00"))
        with pytest.raises(InputError, match="id: "):
            c.kill([2**70])
        with pytest.raises(InputError, match="add_app|command: at most"):
            c.add_app("big", "echo " + "a" * 2_000_000)
        with pytest.raises(InputError, match="priority: must be a whole number"):
            c.update([1], priority="5")
        with pytest.raises(InputError, match="id: "):
            c.add_dependency(2**64, 1)
        with pytest.raises(InputError, match="limit: must be from 0"):
            list(c.tasks(limit=-1))
    assert _state(seeded) == before
    assert json.loads(_invoke(cli, ["ls", "--json"], "balsam-mpi").output) == {
        "w": {"READY": 2}}
