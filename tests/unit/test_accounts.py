"""Permission arithmetic for the server account (pure parts of dbctl.accounts)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from balsam_mpi.dbctl.accounts import Account, can_access, first_unreachable


class _St:
    def __init__(self, mode: int, uid: int, gid: int) -> None:
        self.st_mode, self.st_uid, self.st_gid = mode, uid, gid


ACCT = Account("svc", 500, 500, frozenset({500, 600}), "/nonexistent")


@pytest.mark.parametrize(
    ("mode", "uid", "gid", "bit", "expected"),
    [
        (0o700, 500, 1, 1, True),   # owner x
        (0o700, 1, 1, 1, False),    # stranger, others have nothing
        (0o750, 1, 600, 1, True),   # via a supplementary group
        (0o705, 1, 1, 1, True),     # others x
        (0o770, 500, 1, 2, True),
        (0o550, 1, 600, 2, False),
    ],
)
def test_can_access(mode: int, uid: int, gid: int, bit: int, expected: bool) -> None:
    assert can_access(_St(mode, uid, gid), ACCT, bit) is expected  # type: ignore[arg-type]


def test_first_unreachable_names_the_blocking_directory(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        stranger = Account("x", 54321, 54321, frozenset({54321}), "/")
        blocked = tmp_path / "a"
        (blocked / "b").mkdir(parents=True)
        os.chmod(blocked, 0o700)
        os.chmod(tmp_path, 0o755)
        parents_ok = first_unreachable(tmp_path, stranger) is None
        result = first_unreachable(blocked / "b" / "proj", stranger)
        assert result == (blocked if parents_ok else first_unreachable(tmp_path, stranger))
    else:
        me = Account.current()
        assert first_unreachable(tmp_path / "x", me) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs another uid's view: run as root")
def test_the_directory_named_itself_must_be_traversable() -> None:
    """`init` checks the project's parent: a parent of mode 0700 was passed over (only the
    directories above it were looked at) and initdb failed with its own message instead."""
    stranger = Account("x", 54321, 54321, frozenset({54321}), "/")
    base = Path(tempfile.mkdtemp(prefix="breach-", dir="/tmp"))  # pytest's own dir is 0700
    try:
        os.chmod(base, 0o755)
        assert first_unreachable(base, stranger) is None
        parent = base / "private"
        parent.mkdir(mode=0o700)
        assert first_unreachable(parent, stranger) == parent
        assert first_unreachable(parent / "proj", stranger) == parent
    finally:
        shutil.rmtree(base)
