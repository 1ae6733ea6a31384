"""tasks/outputs.py: the names of a task's output files and where its last lines begin."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from balsam_mpi.tasks import outputs
from balsam_mpi.tasks.outputs import names, tail_start


def test_names_in_the_order_runs_made_them() -> None:
    entries = ["task.2.out", "task.err", "task.out", "task.10.out", "task.1.err",
               "task.0.out", "task.x.out", "task.out.bak", "mytask.out", "task.1234567.out"]
    assert names(entries, "out") == ["task.out", "task.2.out", "task.10.out"]
    assert names(entries, "err") == ["task.err", "task.1.err"]


@pytest.mark.parametrize(("data", "lines", "expected"), [
    (b"a\nb\nc\n", 1, b"c\n"),
    (b"a\nb\nc\n", 2, b"b\nc\n"),
    (b"a\nb\nc", 1, b"c"),
    (b"a\nb\nc", 3, b"a\nb\nc"),
    (b"a\nb\nc", 10, b"a\nb\nc"),
    (b"\n\n", 1, b"\n"),
    (b"", 3, b""),
    (b"abc\n", 0, b""),
])
def test_tail_start(tmp_path: Path, data: bytes, lines: int, expected: bytes) -> None:
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert data[tail_start(fd, len(data), lines):] == expected
    finally:
        os.close(fd)


def test_tail_start_across_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outputs, "TAIL_BLOCK", 7)
    data = b"".join(f"line {i}\n".encode() for i in range(100))
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert data[tail_start(fd, len(data), 3):] == b"line 97\nline 98\nline 99\n"
        monkeypatch.setattr(outputs, "TAIL_MAX", 20)  # no newline found within the cap
        assert len(data) - tail_start(fd, len(data), 50) < 30
    finally:
        os.close(fd)
