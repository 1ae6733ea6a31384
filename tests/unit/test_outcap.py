"""The node's own output cap (node/outcap.py) for writers without a trampoline: the same
cut as the trampoline's, in place where the file system collapses ranges (ext4 here) and
by copying the tail down where it does not (tmpfs)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from balsam_mpi.node import outcap

MIB = 1 << 20
SHM = Path("/dev/shm")


@pytest.fixture(params=["in-place", "copy"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    if request.param == "in-place":
        yield tmp_path
        return
    if not SHM.is_dir():
        pytest.skip("no /dev/shm")
    d = SHM / f"outcap-{os.getpid()}"
    d.mkdir()
    try:
        yield d
    finally:
        for p in d.iterdir():
            p.unlink()
        d.rmdir()


def write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def test_a_file_over_the_cap_keeps_its_head_a_mark_and_its_tail(where: Path) -> None:
    path = where / "task.out"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
    try:
        f = outcap.CappedFile(fd)
        write(fd, b"FIRST\n" + b"a" * (3 * MIB))
        f.check(2 * MIB)
        write(fd, b"b" * (3 * MIB) + b"\nLAST\n")  # the writer appends after the cut
        f.check(2 * MIB)
        f.close()
    finally:
        os.close(fd)
    text = path.read_bytes()
    assert len(text) <= 2 * MIB, len(text)
    assert text.startswith(b"FIRST\naaa")
    assert text.endswith(b"b\nLAST\n")
    assert text.count(outcap.MARK) == 1
    head = text[:text.index(outcap.MARK) + len(outcap.MARK)]
    assert len(head) == MIB  # the first half, the mark at its end
    assert len(text) - len(head) >= 2 * MIB // 4  # at least the last quarter


def test_a_file_under_the_cap_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "task.out"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
    try:
        write(fd, b"x" * MIB)
        outcap.CappedFile(fd).check(2 * MIB)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"x" * MIB


def test_calls_are_checked_once_a_second_and_at_their_end(tmp_path: Path) -> None:
    fds = [os.open(tmp_path / n, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
           for n in ("out", "err")]
    try:
        outs = outcap.CallOutputs()
        outs.watch(7, fds[0], fds[1], 2 * MIB)
        outs.watch(8, fds[0], fds[1], 0)  # no cap: not watched
        assert list(outs.files) == [7]
        outs.tick(100.0)
        write(fds[0], b"y" * (3 * MIB))
        outs.tick(100.5)  # within the second: not checked
        assert (tmp_path / "out").stat().st_size == 3 * MIB
        outs.tick(101.0)
        assert (tmp_path / "out").stat().st_size <= 2 * MIB
        write(fds[1], b"z" * (3 * MIB))
        outs.done(7)
        assert (tmp_path / "err").stat().st_size <= 2 * MIB
        assert outs.files == {}
    finally:
        for fd in fds:
            os.close(fd)
