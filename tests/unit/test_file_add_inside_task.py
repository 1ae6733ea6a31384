"""`task add --from-file` inside a launcher's task: checked here, line by line, before
anything is sent; never held whole past what one request may carry; a file too large for
one request refused in one line (exit 2) with nothing sent."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from balsam_mpi import task_api
from balsam_mpi.cli import cli
from balsam_mpi.node.channel import TaskChannel


def _run(chan: TaskChannel, args: list[str], answer: tuple[int, ...] | None = None
         ) -> tuple[Any, list[Any]]:
    """Invoke the CLI as a task of the node owning ``chan``; the node answers each request
    with ``answer`` (when given). Returns the result and the requests that arrived."""
    env = {**chan.env(), "BALSAM_TASK_ID": "9"}
    got: list[Any] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            for req in chan.poll():
                got.append(req)
                chan.reply(req.id, answer or tuple(range(100, 100 + len(req.tasks))))
            stop.wait(0.005)

    server = threading.Thread(target=serve)
    server.start()
    try:
        result = CliRunner().invoke(cli, args, env=env, prog_name="balsam-mpi")
    finally:
        stop.set()
        server.join(10)
    return result, got


def _jsonl(path: Path, tasks: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(t) + "\n" for t in tasks))
    return str(path)


def test_a_good_file_goes_through_the_launcher_in_one_request(tmp_path: Path) -> None:
    chan = TaskChannel(3)
    try:
        f = _jsonl(tmp_path / "t.jsonl", [{"app": "a", "workflow": "w", "name": f"n{i}"}
                                          for i in range(5)])
        result, got = _run(chan, ["task", "add", "--from-file", f, "--json"])
    finally:
        chan.close()
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == [100, 101, 102, 103, 104]
    assert [len(r.tasks) for r in got] == [5] and got[0].tasks[4]["name"] == "n4"


def test_a_bad_line_is_refused_by_its_number_before_anything_is_sent(tmp_path: Path
                                                                     ) -> None:
    chan = TaskChannel(3)
    try:
        f = _jsonl(tmp_path / "t.jsonl", [{"app": "a", "workflow": "w"},
                                          {"app": "a", "workflow": "w"},
                                          {"app": "a", "workflow": "w", "num_nodes": -3}])
        result, got = _run(chan, ["task", "add", "--from-file", f])
    finally:
        chan.close()
    assert result.exit_code == 2, result.output
    [line] = result.output.splitlines()
    assert "line 3" in line and "num_nodes" in line
    assert got == []


def test_a_file_past_one_request_is_refused_in_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(task_api, "MAX_REQUEST", 2000)
    chan = TaskChannel(3)
    try:
        f = _jsonl(tmp_path / "t.jsonl", [{"app": "a", "workflow": "w", "name": f"n{i}"}
                                          for i in range(200)])
        result, got = _run(chan, ["task", "add", "--from-file", f])
    finally:
        chan.close()
    assert result.exit_code == 2, result.output
    [line] = result.output.splitlines()
    assert "--from-file" in line and "2000 bytes" in line
    assert got == []
