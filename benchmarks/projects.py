"""Throwaway projects for benchmark runs (root-safe: a 0755 parent under /tmp)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

from balsam_mpi.base.project import Project
from balsam_mpi.sql import parse_queries

SQL_FILE = Path(__file__).resolve().parent / "bench.sql"


@cache
def _queries() -> dict[str, str]:
    return parse_queries(SQL_FILE.read_text(), SQL_FILE.name)


def bench_query(name: str) -> Any:
    return _queries()[name]


@contextlib.contextmanager
def bench_project(group: str | None = None) -> Iterator[Project]:
    """A fresh running project (of ``group``, if given, so its members can be
    authorized); stopped and removed afterwards."""
    from balsam_mpi.dbctl import lifecycle

    base = Path(tempfile.mkdtemp(prefix="bb-", dir="/tmp"))
    os.chmod(base, 0o755)
    try:
        lifecycle.init_project(base / "p", group=group)
        project = Project(base / "p")
        try:
            yield project
        finally:
            with contextlib.suppress(Exception):
                lifecycle.stop_server(project, fast=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def admin_dsn(project: Project, dbname: str = "balsam") -> dict[str, Any]:
    info = project.read_server_info()
    return {"host": str(project.run_dir), "port": info.port, "user": info.superuser,
            "dbname": dbname}
