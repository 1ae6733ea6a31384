"""Fixtures of the database tier beyond tests/conftest.py's cluster and databases."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from balsam_mpi.base import db
from balsam_mpi.base.project import Project
from balsam_mpi.launcher.store import Store


@pytest.fixture()
def store(pg_project: Project, dbname: str) -> Iterator[Store]:
    """The launcher's store on this test's database (one autocommit connection)."""
    s = Store(db.connect(pg_project, dbname=dbname, autocommit=True), pg_project)
    yield s
    s.close()


@pytest.fixture()
def fakebin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory first on PATH, for fake scheduler commands (tests/db/fakesched.py)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    return bindir
