"""The MPI tier runs as `mpiexec -n 3 python -m pytest --with-mpi tests/mpi`: every rank
runs the tests, only rank 0 talks (one "N passed" line); the others stay silent and
report through their exit status (and through rank 0, where tests gather results)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


def _rank() -> int:
    from mpi4py import MPI

    return int(MPI.COMM_WORLD.Get_rank())


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    if _rank() > 0:
        reporter = config.pluginmanager.getplugin("terminalreporter")
        if reporter is not None:
            config.pluginmanager.unregister(reporter)


@pytest.fixture()
def mpi_db(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
           ) -> Iterator[tuple[Any, str, Any]]:
    """(project, dbname, superuser-less connection or None): the database copy is made on
    rank 0 only (the cluster is started there) and its name broadcast to the others."""
    from mpi4py import MPI

    from balsam_mpi.base.project import Project

    comm = MPI.COMM_WORLD
    conn = None
    if comm.Get_rank() == 0:
        project = request.getfixturevalue("pg_project")
        name = request.getfixturevalue("dbname")
        conn = request.getfixturevalue("conn")
        shared = (str(project.root), name)
    else:
        shared = None
    root, name = comm.bcast(shared, root=0)
    monkeypatch.setenv("BALSAM_DB_PATH", root)
    monkeypatch.setenv("BALSAM_DB_NAME", name)
    yield Project(root), name, conn
