"""`balsam-mpi demo` fails (exit 1, one line) when a task of its workload did not finish,
so a check that runs the demo (CI's installed-wheel check) fails with it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from balsam_mpi.base.project import Project
from balsam_mpi.cli.demo import demo
from balsam_mpi.dbctl import lifecycle
from balsam_mpi.demo import run as d


def _run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, rc: int,
         counts: dict[str, dict[str, int]]) -> Any:
    monkeypatch.setattr(d, "make_project", lambda _path, _echo: Project(tmp_path))
    monkeypatch.setattr(d, "populate", lambda _p, n, _r: n)
    monkeypatch.setattr(d, "run_launcher", lambda *_a: rc)
    monkeypatch.setattr(d, "summarize",
                        lambda _p: d.Summary(counts, 5, 1.0, 1.0, 1, None))
    monkeypatch.setattr(lifecycle, "stop_server", lambda *_a, **_k: None)
    return CliRunner().invoke(demo, ["--tasks", "5"])


def test_every_task_finished_is_success(monkeypatch: pytest.MonkeyPatch,
                                        tmp_path: Path) -> None:
    result = _run(monkeypatch, tmp_path, 0, {"ensemble": {"JOB_FINISHED": 5}})
    assert result.exit_code == 0, result.output
    assert "not every task finished" not in result.output


def test_a_failed_task_fails_the_demo(monkeypatch: pytest.MonkeyPatch,
                                      tmp_path: Path) -> None:
    result = _run(monkeypatch, tmp_path, 0, {"ensemble": {"JOB_FINISHED": 3, "FAILED": 1},
                                             "mpi": {"READY": 1}})
    assert result.exit_code == 1, result.output
    assert "not every task finished (FAILED 1, READY 1)" in result.output


def test_a_failed_launcher_fails_the_demo(monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    result = _run(monkeypatch, tmp_path, 3, {"ensemble": {"JOB_FINISHED": 5}})
    assert result.exit_code == 1
    assert "the launcher exited with status 3" in result.output


def test_unfinished_counts_every_state_but_finished() -> None:
    assert d.unfinished({"a": {"JOB_FINISHED": 2, "FAILED": 1}, "b": {"FAILED": 2,
                                                                     "RUNNING": 0}}) \
        == {"FAILED": 3}
    assert d.unfinished({"a": {"JOB_FINISHED": 2}}) == {}


def test_an_empty_or_file_project_path_is_refused_before_anything_is_made(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`--project ""` was the current directory: in an empty one the demo made its project
    there; a file was reported as "exists and is not empty"."""
    from balsam_mpi.base.errors import UsageError

    def no_init(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("init_project was called")

    monkeypatch.setattr(lifecycle, "init_project", no_init)
    monkeypatch.chdir(tmp_path)  # empty: the demo would have used it
    with pytest.raises(UsageError, match="^--project: must not be empty"):
        d.make_project("", print)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="file exists and is not a directory"):
        d.make_project(str(tmp_path / "file"), print)
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_the_next_steps_name_the_ranks_used_and_quote_the_path(tmp_path: Path) -> None:
    """The hints are commands to paste: the launcher line runs as many ranks as the demo
    did, and a project path with a space stays one word."""
    from balsam_mpi.base.project import Project
    from balsam_mpi.demo.run import next_steps

    root = tmp_path / "my project"
    lines: list[str] = []
    next_steps(Project(root), lines.append, ranks=3)
    text = "\n".join(lines)
    assert "mpiexec -n 3 python -P -m balsam_mpi" in text
    assert f"balsam-dbctl --project '{root}' start" in text
    assert f"export BALSAM_DB_PATH='{root}'" in text
