"""`balsam-mpi task out`: a task's output read back, and nothing planted followed."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result

from balsam_mpi.base.project import Project
from balsam_mpi.cli import cli


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False,
                              prog_name="balsam-mpi")


def ok(*args: str) -> Result:
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture()
def task(pg_project: Project, dbname: str) -> tuple[int, Path]:
    """A task of a command app and its directory as a launcher makes it (the project is
    shared by the tests' databases, so each test has a workflow of its own)."""
    ok("app", "add", "echo", "--command", "echo hi")
    workflow = f"out-{uuid.uuid4().hex[:8]}"
    ok("task", "add", "--app", "echo", "--workflow", workflow, "--name", "t")
    tid = 1
    workdir = pg_project.task_dir(workflow, tid, "t")
    workdir.mkdir(parents=True)
    return tid, workdir


def test_out_err_and_tail(task: tuple[int, Path]) -> None:
    tid, workdir = task
    (workdir / "task.out").write_bytes(b"one\ntwo\nthree \x1b[31mred\xff\n")
    (workdir / "task.err").write_bytes(b"e1\ne2\ne3")  # no newline at the end
    assert ok("task", "out", str(tid)).stdout_bytes == b"one\ntwo\nthree \x1b[31mred\xff\n"
    assert ok("task", "out", str(tid), "--err").stdout_bytes == b"e1\ne2\ne3"
    assert ok("task", "out", str(tid), "--tail", "2").stdout_bytes == b"two\nthree \x1b[31mred\xff\n"
    assert ok("task", "out", str(tid), "--err", "--tail", "1").stdout_bytes == b"e3"
    assert ok("task", "out", str(tid), "--tail", "9").stdout_bytes.startswith(b"one\n")


def test_pre_and_postprocessing_outputs(task: tuple[int, Path]) -> None:
    tid, workdir = task
    (workdir / "task.out").write_text("the task\n")
    (workdir / "preprocess.out").write_text("staged inputs\n")
    (workdir / "postprocess.err").write_text("no result file\n")
    assert ok("task", "out", str(tid)).stdout == "the task\n"
    assert ok("task", "out", str(tid), "--pre").stdout == "staged inputs\n"
    assert ok("task", "out", str(tid), "--post", "--err").stdout == "no result file\n"
    missing = run("task", "out", str(tid), "--post")
    assert missing.exit_code == 1 and "postprocess.out does not exist" in missing.output


def test_every_runs_file_in_the_order_the_runs_made_them(task: tuple[int, Path]) -> None:
    tid, workdir = task
    (workdir / "task.out").write_text("first run\n")
    (workdir / "task.10.out").write_text("third run\n")
    (workdir / "task.2.out").write_text("second run\n")
    (workdir / "task.x.out").write_text("not an output\n")
    out = ok("task", "out", str(tid)).output
    assert out.index("first run") < out.index("second run") < out.index("third run")
    assert "==> data/" in out and "task.10.out <==" in out and "not an output" not in out


def test_no_output_yet_is_one_line(pg_project: Project, dbname: str) -> None:
    ok("app", "add", "echo", "--command", "echo hi")
    ok("task", "add", "--app", "echo", "--workflow", f"new-{uuid.uuid4().hex[:8]}")
    result = run("task", "out", "1")
    assert result.exit_code == 1
    assert "no launcher has made it yet" in result.output and len(result.output.splitlines()) == 1
    assert run("task", "out", "99").exit_code == 1  # no such task
    bad = run("task", "out", "1", "--tail", "-3")
    assert bad.exit_code == 2 and "tail" in bad.output



def test_an_ended_task_without_a_directory_says_it_never_ran(pg_project: Project,
                                                             dbname: str) -> None:
    """A task killed (or failed) before any launcher made its directory was said to be
    waiting for a launcher, which will never come: the line says it ended."""
    ok("app", "add", "echo", "--command", "echo hi")
    ok("task", "add", "--app", "echo", "--workflow", f"gone-{uuid.uuid4().hex[:8]}")
    ok("task", "kill", "1")
    result = run("task", "out", "1")
    assert result.exit_code == 1 and len(result.output.splitlines()) == 1
    assert "no launcher has made it yet" not in result.output
    assert "task 1 ended USER_KILLED without output" in result.output

@pytest.mark.parametrize("plant", ["symlink", "fifo", "hardlink", "dir_symlink"])
def test_nothing_planted_is_followed_or_opened(task: tuple[int, Path], tmp_path: Path,
                                               plant: str) -> None:
    tid, workdir = task
    secret = tmp_path / "secret"
    secret.write_text("the owner's password\n")
    if plant == "symlink":
        (workdir / "task.out").symlink_to(secret)
    elif plant == "fifo":
        os.mkfifo(workdir / "task.out")  # an open for reading would wait for a writer
    elif plant == "hardlink":
        os.link(secret, workdir / "task.out")
    else:
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        (elsewhere / "task.out").symlink_to(secret)
        workdir.rmdir()
        workdir.symlink_to(elsewhere)
    result = run("task", "out", str(tid))
    assert result.exit_code != 0
    assert "password" not in result.output
    assert "refusing data/" in result.output and len(result.output.splitlines()) == 1


def test_a_python_app_without_task_dirs_gives_its_stored_tail(
        pg_project: Project, dbname: str, su: psycopg.Connection[Any]) -> None:
    ok("app", "add", "fn", "--python", "json:dumps", "--no-task-dirs")
    ok("task", "add", "--app", "fn", "--workflow", "py")
    result = run("task", "out", "1")
    assert result.exit_code == 1 and "no output tail was stored" in result.output
    su.execute("UPDATE tasks SET output_tail = 'Traceback: boom' WHERE id = 1")
    result = ok("task", "out", "1")
    assert result.stdout == "Traceback: boom" and "keeps no output files" in result.stderr


def test_follow_prints_what_is_appended_until_the_task_ends(
        pg_project: Project, dbname: str) -> None:
    """The task is not started when following begins: its output is waited for, read as
    it grows, followed from its new end after a cut, and read to its end once it ended."""
    import threading
    import time

    from balsam_mpi import Client
    from balsam_mpi.tasks.follow import follow

    ok("app", "add", "echo", "--command", "echo hi")
    workflow = f"follow-{uuid.uuid4().hex[:8]}"
    ok("task", "add", "--app", "echo", "--workflow", workflow, "--name", "t")
    workdir = pg_project.task_dir(workflow, 1, "t")
    got: list[bytes] = []
    notes: list[str] = []
    with Client() as client:  # BALSAM_DB_NAME names this test's database
        task = client.get(1)
        thread = threading.Thread(target=follow, args=(
            client, task, "out", None, lambda chunks: got.extend(chunks), notes.append),
            kwargs={"poll_s": 0.05}, daemon=True)
        thread.start()

        def printed() -> bytes:
            return b"".join(got)

        def until(cond: Any) -> None:
            deadline = time.monotonic() + 20
            while not cond():
                assert time.monotonic() < deadline and thread.is_alive(), (got, notes)
                time.sleep(0.02)

        until(lambda: notes)  # no directory yet: waiting for it
        assert "waiting for task 1" in notes[0]
        workdir.mkdir(parents=True)
        out = workdir / "task.out"
        out.write_bytes(b"line 1\n")
        until(lambda: printed() == b"line 1\n")
        with out.open("ab") as f:
            f.write(b"line 2\n")
        until(lambda: printed() == b"line 1\nline 2\n")
        out.write_bytes(b"cut\n")  # shorter: the output cap cut it
        until(lambda: len(notes) == 2)
        assert "was cut" in notes[1]
        with out.open("ab") as f:
            f.write(b"after the cut\n")
        until(lambda: printed().endswith(b"after the cut\n"))
        with out.open("ab") as f:
            f.write(b"last words\n")
        client.kill(1)  # it ends: what it wrote up to then is printed, and follow returns
        thread.join(20)
        assert not thread.is_alive()
        assert printed() == b"line 1\nline 2\nafter the cut\nlast words\n"
