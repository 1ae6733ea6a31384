"""`balsam-mpi app|task|dep|ls` through click's CliRunner, and once as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result

from balsam_mpi.cli import cli


def run(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False,
                              prog_name="balsam-mpi")


def ok(*args: str, input: str | None = None) -> Result:
    result = run(*args, input=input)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture()
def hello(dbname: str) -> None:
    ok("app", "add", "hello", "--command", "echo hello {who}")


def _state(conn: psycopg.Connection) -> Any:
    return conn.execute("SELECT (SELECT count(*) FROM tasks), (SELECT count(*) FROM task_deps),"
                        " (SELECT count(*) FROM task_events), (SELECT count(*) FROM apps)"
                        ).fetchone()


def test_acceptance_flow(hello: None, conn: psycopg.Connection) -> None:
    assert ok("task", "add", "--app", "hello", "--workflow", "demo", "--name", "t1",
              "--param", "who=world").output.strip() == "added task 1"
    ok("task", "add", "--app", "hello", "--workflow", "demo10", "--param", "who=x")
    rows = json.loads(ok("task", "ls", "--workflow", "demo", "--state", "READY",
                         "--json").stdout)
    assert [r["name"] for r in rows] == ["t1"]  # exact: demo10 is not demo
    assert "demo10" in ok("ls").output
    assert json.loads(ok("ls", "--json").stdout) == {"demo": {"READY": 1},
                                                     "demo10": {"READY": 1}}
    assert "now depends" in ok("dep", "1", "2").output
    why = ok("task", "why", "2").output
    assert "waiting for 1 of its 1 parents" in why and "parent 1 demo/t1 is READY" in why
    assert "no batch job is running" in ok("task", "why", "1").output
    assert ok("task", "kill", "1").output.strip() == "killed 1 tasks"
    assert "FAILED" in ok("task", "show", "2").output
    assert "retried 2 tasks" in ok("task", "retry", "1").output
    show = json.loads(ok("task", "show", "2", "--json").stdout)
    assert show["state"] == "AWAITING_PARENTS" and show["parents"] == [1]
    assert [h["to_state"] for h in show["history"]][-2:] == ["FAILED", "AWAITING_PARENTS"]


@pytest.mark.parametrize("args, field", [
    (["task", "add", "--app", "nope", "--workflow", "w"], "app"),
    (["task", "add", "--app", "hello", "--workflow", "w", "--param", "who=x", "--num-nodes",
      "0"], "num_nodes"),
    (["task", "add", "--app", "hello", "--workflow", "w", "--param", "who=x",
      "--node-packing-count", "0"], "node_packing_count"),
    (["task", "add", "--app", "hello", "--workflow", "w", "--param", "who=x",
      "--wall-time-min", "-1"], "wall_time_min"),
    (["task", "add", "--app", "hello", "--workflow", "w", "--param", "whom=x"], "params"),
    (["task", "add", "--app", "hello", "--workflow", "w", "--param", "who=x", "--num-nodes",
      "two"], "num_nodes"),
    (["task", "add", "--app", "hello", "--workflow", "w", "--param", "who=x", "--parent",
      "99"], "parents"),
    (["task", "ls", "--state", "DONE"], "state"),
    (["task", "ls", "--sort", "colour"], "sort"),
    (["app", "add", "bad", "--command", "echo {a.b}"], "command"),
    (["dep", "1", "1"], "itself"),
    (["task", "add", "--app", "hello", "--workflow", "w", "--param", "who=x", "--env",
      "MY VAR=1"], "env: 'MY VAR' is not a variable name"),
])
def test_bad_input_is_one_line_and_changes_nothing(hello: None, conn: psycopg.Connection,
                                                   args: list[str], field: str) -> None:
    ok("task", "add", "--app", "hello", "--workflow", "w", "--param", "who=x")
    before = _state(conn)
    result = run(*args)
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("balsam-mpi: error: ") and field in lines[0]
    assert _state(conn) == before


def test_files_all_or_nothing_with_line_numbers(hello: None, conn: psycopg.Connection,
                                                tmp_path: Path) -> None:
    good = tmp_path / "tasks.jsonl"
    good.write_text('{"params": {"who": "a"}, "key": "a"}\n'
                    '{"params": {"who": "b"}, "parents": ["a"], "name": "b"}\n')
    out = ok("task", "add", "--from-file", str(good), "--app", "hello", "--workflow", "f")
    assert out.output.strip() == "added 2 tasks (1…2)"
    before = _state(conn)
    bad = tmp_path / "bad.csv"
    bad.write_text("app,workflow,params.who,num_nodes\nhello,c,x,2\nhello,c,y,0\n")
    result = run("task", "add", "--from-file", str(bad))
    assert result.exit_code == 2 and f"{bad} line 3: num_nodes" in result.output
    cyc = tmp_path / "cycle.jsonl"
    cyc.write_text('{"key": "a", "parents": ["b"]}\n{"key": "b", "parents": ["a"]}\n')
    result = run("task", "add", "--from-file", str(cyc), "--app", "hello", "--workflow", "f",
                 "--param", "who=x")
    assert result.exit_code == 2 and "cycle" in result.output
    assert _state(conn) == before
    stdin = '{"app": "hello", "workflow": "s", "params": {"who": "z"}}\n'
    [new] = json.loads(ok("task", "add", "--from-file", "-", "--json", input=stdin).stdout)
    assert conn.execute("SELECT workflow FROM tasks WHERE id = %s", (new,)).fetchone() == ("s",)


def test_file_listing_children_first_reports_its_id_range(hello: None, tmp_path: Path) -> None:
    """Parents get the smaller ids, so a child-first file must not print '(2…1)'."""
    rev = tmp_path / "children_first.jsonl"
    rev.write_text('{"params": {"who": "c"}, "parents": ["p"], "name": "c"}\n'
                   '{"params": {"who": "p"}, "key": "p", "name": "p"}\n')
    out = ok("task", "add", "--from-file", str(rev), "--app", "hello", "--workflow", "r")
    assert out.output.strip() == "added 2 tasks (1…2)"



def test_rm_of_ids_that_do_not_exist_says_so(hello: None, conn: psycopg.Connection) -> None:
    """`task rm 99 --yes` printed "no tasks match" and exited 0, where kill, retry and
    modify name each missing id and fail when nothing changed."""
    ok("task", "add", "--app", "hello", "--workflow", "w", "--param", "who=x")
    before = _state(conn)
    result = run("task", "rm", "99", "--yes")
    assert result.exit_code == 1 and "no such task" in result.output and "99" in result.output
    assert _state(conn) == before
    some = ok("task", "rm", "1", "99", "--yes").output
    assert "deleted 1 tasks" in some and "no such task): 99" in some
    assert run("task", "rm", "--workflow", "none", "--yes").exit_code == 0  # a filter

def test_ambiguous_input_is_refused_and_changes_nothing(hello: None, conn: psycopg.Connection,
                                                        tmp_path: Path) -> None:
    """Input that said two things was taken with one of them dropped, exit 0: a CSV quote
    left open swallowed the rows after it, a JSON key given twice or a field given as a
    column and as its entries kept one value, a nested format spec made an app no task
    can run."""
    ok("task", "add", "--app", "hello", "--workflow", "w", "--param", "who=x")
    before = _state(conn)
    files = {
        "open.csv": 'app,workflow,params.who\nhello,w,"x\nhello,w,y\nhello,w,z\n',
        "twice.jsonl": '{"app": "hello", "workflow": "w", "params": {"who": "a"}, '
                       '"priority": 1, "priority": 2}\n',
        "both.csv": 'app,workflow,params.who,params\nhello,w,a,"{""who"": ""b""}"\n',
    }
    expected = {"open.csv": "line 2: a quote", "twice.jsonl": "line 1: 'priority' given twice",
                "both.csv": "line 1: columns 'params' and 'params.who'"}
    for name, text in files.items():
        path = tmp_path / name
        path.write_text(text)
        result = run("task", "add", "--from-file", str(path))
        assert result.exit_code == 2, result.output
        assert result.output.splitlines() == [result.output.strip()]
        assert f"{path} {expected[name]}" in result.output
    for args, message in (
            (["task", "modify", "1", "--set", 'tags={"k": "a", "k": "b"}'],
             "tags: 'k' given twice"),
            (["app", "add", "nested", "--command", "echo {a:{b}}"], "nested placeholder")):
        result = run(*args)
        assert result.exit_code == 2 and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1
    assert _state(conn) == before
    assert conn.execute("SELECT priority, tags FROM tasks").fetchall() == [(0, {})]


def test_modify_refuses_a_field_given_by_its_flag_and_by_set(hello: None,
                                                             conn: psycopg.Connection) -> None:
    # --priority 3 --set priority=4 set 3 and said "modified 1 tasks"; --set given twice
    # for one field was already refused
    ok("task", "add", "--app", "hello", "--workflow", "w", "--param", "who=x")
    result = run("task", "modify", "1", "--priority", "3", "--set", "priority=4")
    assert result.exit_code == 2
    assert result.output.startswith("balsam-mpi: error: priority: given twice (--priority "
                                    "and --set priority=…)")
    assert len(result.output.strip().splitlines()) == 1
    assert conn.execute("SELECT priority FROM tasks").fetchall() == [(0,)]


def test_ls_takes_the_largest_limit_it_documents(hello: None) -> None:
    # 2^63-2 passed the flag's check, then its one-row look-ahead (2^63-1) was refused by
    # the client with "must be from 0 to …, got 9223372036854775807", a number not given.
    ok("task", "add", "--app", "hello", "--workflow", "w", "--param", "who=x")
    rows = json.loads(ok("task", "ls", "--limit", str(2**63 - 2), "--json").stdout)
    assert [r["id"] for r in rows] == [1]
    result = run("task", "ls", "--limit", str(2**63 - 1))
    assert result.exit_code == 2 and f"got {2**63 - 1}" in result.output


def _paged(monkeypatch: pytest.MonkeyPatch, page: int) -> list[int]:
    """Pages of `page` rows; the list fills with each page's row count as it is read."""
    from balsam_mpi.tasks import client, read

    monkeypatch.setattr(read, "PAGE", page)
    monkeypatch.setattr(client, "PAGE", page)
    pages: list[int] = []
    select = read.TaskReader.select

    def counted(self: Any, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        rows = select(self, *args, **kwargs)
        pages.append(len(rows))
        return rows

    monkeypatch.setattr(read.TaskReader, "select", counted)
    return pages


def _add(n: int) -> None:
    lines = "".join(json.dumps({"app": "hello", "workflow": "w", "name": f"t{i}",
                                "params": {"who": "x\tz" if i == 3 else str(i)}}) + "\n"
                    for i in range(n))
    ok("task", "add", "--from-file", "-", input=lines)


def test_ls_json_prints_each_page_as_it_comes(hello: None,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # `task ls --limit 1000000 --json` over 1M tasks held every row, then the whole JSON
    # text, at once: 8.9 GB of memory. Each page is now printed before the next is read.
    _add(30)
    pages = _paged(monkeypatch, 4)
    pages_at_first_write: list[int] = []
    import click

    echo = click.echo

    def first_write(*args: Any, **kwargs: Any) -> None:
        if not pages_at_first_write:
            pages_at_first_write.append(len(pages))
        echo(*args, **kwargs)

    monkeypatch.setattr(click, "echo", first_write)
    result = ok("task", "ls", "--limit", "25", "--json")
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == [f"t{i}" for i in range(25)]
    assert rows[3]["params"] == {"who": "x\tz"}
    assert pages_at_first_write == [1] and len(pages) == 7  # 26 rows: 25 and one more
    assert "first 25 shown" in result.stderr
    # the same text as one json.dumps of the list
    assert result.stdout == json.dumps(rows, indent=2, sort_keys=True) + "\n"
    assert ok("task", "ls", "--workflow", "none", "--json").stdout == "[]\n"


def test_ls_table_of_many_pages_is_aligned(hello: None, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    # The table's widths are known only after its last row: the rows wait in a spool
    # (here one that goes to a file after 64 bytes), not as a list of every task.
    from balsam_mpi.cli import table

    _add(30)
    monkeypatch.setattr(table, "SPOOL_BYTES", 64)
    _paged(monkeypatch, 4)
    ok("task", "modify", "30", "--set", "name=a-much-longer-name")
    lines = ok("task", "ls", "--limit", "30").stdout.splitlines()
    assert len(lines) == 31 and lines[0].startswith("ID  WORKFLOW  NAME")
    at = lines[0].index("APP")
    assert all(line[at:].startswith("hello") for line in lines[1:])
    assert lines[-1].split()[:3] == ["30", "w", "a-much-longer-name"]


def test_rm_asks_first(hello: None, conn: psycopg.Connection) -> None:
    ok("task", "add", "--app", "hello", "--workflow", "w", "--param", "who=x")
    result = run("task", "rm", "--workflow", "w", input="n\n")
    assert result.exit_code == 1 and _state(conn)[0] == 1
    assert "deleted 1 tasks" in ok("task", "rm", "--workflow", "w", "--yes").output
    assert _state(conn)[0] == 0
    assert run("task", "kill").exit_code == 2  # no ids, no filter: refused


def test_modify_and_listing_options(hello: None) -> None:
    for i in range(3):
        ok("task", "add", "--app", "hello", "--workflow", "w", "--param", f"who={i}",
           "--name", f"n{i}", "--tag", f"k={i % 2}")
    assert "modified 2 tasks" in ok("task", "modify", "1", "3", "--priority", "9",
                                    "--set", "wall_time_min=2").output
    top = json.loads(ok("task", "ls", "--sort", "-priority", "--limit", "1", "--json").stdout)
    assert top[0]["priority"] == 9 and top[0]["wall_time_min"] == 2
    assert [r["id"] for r in json.loads(ok("task", "ls", "--tag", "k=1", "--json").stdout)] == [2]
    assert [r["id"] for r in json.loads(ok("task", "ls", "--name", "n[12]", "--json").stdout)] == []
    assert len(json.loads(ok("task", "ls", "--name", "n?", "--json").stdout)) == 3
    assert "hello" in ok("app", "ls").output
    assert json.loads(ok("app", "show", "hello", "--json").stdout)["command"] == \
        "echo hello {who}"
    result = run("app", "rm", "hello", "--yes")
    assert result.exit_code == 1 and "still has 3 tasks" in result.output


def _open_job(conn: psycopg.Connection, nodes: int, filters: str = "{}") -> int:
    """A live batch job of the owner's, as its launcher opens it."""
    row = conn.execute("SELECT job_id FROM launcher_open_job(NULL, 'local', NULL, 'nid01', "
                       "%s, %s, %s::jsonb, 60, 60)", (nodes, nodes, filters)).fetchone()
    assert row is not None
    return int(row[0])


def test_why_reads_batch_jobs(hello: None, conn: psycopg.Connection) -> None:
    ok("task", "add", "--app", "hello", "--workflow", "w", "--param", "who=x",
       "--num-nodes", "4", "--tag", "k=v")
    small = _open_job(conn, 2)
    out = ok("task", "why", "1").output
    assert f"batch job {small} on nid01: the task asks for 4 nodes, the job has 2" in out
    # A launcher's tag and owner filters count too (`why` ignored them).
    tagged = _open_job(conn, 8, '{"workflows": [], "tags": {"k": "other"}, "owners": []}')
    theirs = _open_job(conn, 8, '{"workflows": [], "tags": {}, "owners": ["someone"]}')
    out = ok("task", "why", "1").output
    assert f"batch job {tagged} on nid01: it runs only tasks tagged k=other" in out
    assert f"batch job {theirs} on nid01: it runs only tasks of someone" in out
    assert "no running batch job can take it" in out
    fits = _open_job(conn, 8, '{"workflows": ["w"], "tags": {"k": "v"}, "owners": []}')
    assert f"batch jobs that can take it: {fits}" in ok("task", "why", "1").output
    conn.execute("SELECT * FROM launcher_claim(%s, 1, 10, 100, 1, NULL, NULL, NULL, NULL, 8)",
                 (fits,))
    out = ok("task", "why", "1").output
    assert f"claimed by batch job {fits} " in out and "has not started yet" in out


def test_changes_print_what_the_database_did(hello: None, conn: psycopg.Connection) -> None:
    for who in ("a", "b"):
        ok("task", "add", "--app", "hello", "--workflow", "w", "--param", f"who={who}")
    missing = run("task", "kill", "999")
    assert missing.exit_code == 1
    assert missing.output.strip() == "balsam-mpi: error: left alone (no such task): 999"
    job = _open_job(conn, 1)
    conn.execute("SELECT * FROM launcher_claim(%s, 1, 1, 100, 1, NULL, NULL, NULL, NULL, 1)",
                 (job,))
    refused = run("task", "modify", "1", "--set", "params={\"who\": \"c\"}")
    assert refused.exit_code == 1 and "claimed by batch job" in refused.output
    assert "modified 2 tasks" in ok("task", "modify", "1", "2", "--priority", "3").output
    mixed = ok("task", "modify", "1", "2", "--wall-time-min", "5")
    assert mixed.stdout.strip() == "modified 1 tasks"
    assert f"left alone (claimed by batch job {job}" in mixed.stderr
    gone = ok("task", "rm", "1", "2", "--yes")
    assert gone.stdout.strip() == ("deleted 2 tasks (1 were claimed or running: their "
                                   "launchers stop them)")


def test_real_subprocess(dbname: str) -> None:
    exe = [str(Path(sys.executable).with_name("balsam-mpi"))]
    env = dict(os.environ)

    def sh(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*exe, *args], env=env, capture_output=True, text=True,
                              timeout=60)

    assert sh("app", "add", "hello", "--command", "echo {who}").returncode == 0
    assert sh("task", "add", "--app", "hello", "--workflow", "demo", "--param",
              "who=w").stdout.strip() == "added task 1"
    bad = sh("task", "add", "--app", "hello", "--workflow", "demo", "--num-nodes", "0",
             "--param", "who=w")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "num_nodes" in bad.stderr
    listing = sh("task", "ls", "--workflow", "demo", "--state", "READY", "--json")
    assert [t["id"] for t in json.loads(listing.stdout)] == [1]


def test_an_empty_name_filter_means_unnamed_tasks_not_every_task(
        hello: None, conn: psycopg.Connection) -> None:
    """A task's name may be empty (the default), and `--name ''` selects those: dropped as
    no filter, `task rm --workflow w --name "$N" --yes` with N unset deleted the whole
    workflow."""
    ok("task", "add", "--app", "hello", "--workflow", "w", "--name", "keep", "--param",
       "who=a")
    ok("task", "add", "--app", "hello", "--workflow", "w", "--param", "who=b")
    rows = json.loads(ok("task", "ls", "--name", "", "--json").stdout)
    assert [r["name"] for r in rows] == [""]
    assert "deleted 1 tasks" in ok("task", "rm", "--workflow", "w", "--name", "",
                                   "--yes").output
    assert conn.execute("SELECT name FROM tasks").fetchall() == [("keep",)]


def test_a_dependency_cycle_is_bad_input(hello: None, conn: psycopg.Connection) -> None:
    """A cycle (or a task made its own parent) is a mistake in what was typed: one line
    naming the tasks, exit 2, nothing written (it was exit 1, a conflict)."""
    for _ in range(3):
        ok("task", "add", "--app", "hello", "--workflow", "w", "--param", "who=x")
    ok("dep", "1", "2")
    ok("dep", "2", "3")
    before = _state(conn)
    for args, said in ((["dep", "3", "1"], "task 3 already depends on task 1"),
                       (["dep", "2", "2"], "task 2 cannot depend on itself")):
        result = run(*args)
        lines = result.output.strip().splitlines()
        assert (result.exit_code, len(lines)) == (2, 1), result.output
        assert lines[0].startswith("balsam-mpi: error: ") and said in lines[0]
    assert _state(conn) == before
