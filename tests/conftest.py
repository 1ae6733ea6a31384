"""Shared fixtures: one real Postgres cluster per test session, started by dbctl's own
code, and a fresh database per test copied from the project's ``balsam`` database.

As root the server runs as the unprivileged ``balsam`` account, which must be able to
traverse the project's parents: pytest's tmp_path is 0700 under root, so the session
directory is made under /tmp with mode 0755.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from balsam_mpi.base.project import Project

_counter = itertools.count()

# A launcher rank stuck in MPI_Init ends after this (launcher/launch.py): two minutes, not
# the default ten, so a rank a test leaves stuck there stops burning a core early. On this
# machine MPI_Init of 16 ranks takes about a second.
os.environ.setdefault("BALSAM_MPI_INIT_TIMEOUT_S", "120")


# -- the MPI the set-up found ---------------------------------------------------------------
@dataclass(frozen=True)
class FoundMpi:
    """The ``mpiexec`` found the way the demo finds it — beside this Python (the mpich
    wheel's), else on PATH (a site MPI) — and what it is (``mpidetect``)."""

    program: str
    kind: str  # a launch_prefix kind: mpich, openmpi, intel, …
    fork_program: str  # MPICH's mpiexec.gforker beside it, or ""

    def run(self, ranks: int) -> list[str]:
        """``mpiexec [options] -n RANKS``: ranks on this host, with the options this MPI
        needs there (Open MPI: oversubscribed, unbound)."""
        from balsam_mpi.batch.localstart import mpiexec_options

        return [self.program, *mpiexec_options(self.kind), "-n", str(ranks)]


def _found_mpi() -> FoundMpi | None:
    from balsam_mpi.base.errors import BalsamError
    from balsam_mpi.base.platform import SchedulerEnv
    from balsam_mpi.node.mpilaunch import choose_launcher

    try:
        chosen = choose_launcher({k: v for k, v in os.environ.items()
                                  if k != "BALSAM_MPI_LAUNCHER"}, sched=SchedulerEnv("local"))
    except BalsamError:
        return None
    return FoundMpi(chosen.program, chosen.kind, chosen.fork_program)


FOUND_MPI = _found_mpi()
needs_mpiexec = pytest.mark.skipif(
    FOUND_MPI is None, reason="no mpiexec beside this Python or on PATH (bash setup_env.sh "
                              "installs the mpich wheel, or load the site's MPI)")


def mpirun(ranks: int) -> list[str]:
    """The found MPI's start of ``ranks`` ranks on this host (skips without one)."""
    if FOUND_MPI is None:
        pytest.skip("no mpiexec found")
    return FOUND_MPI.run(ranks)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """pytest-mpi skips every test whose keywords hold "mpi" unless --with-mpi, and a
    node's keywords hold its own name: the session's and the top directory's are the
    checkout directory's. In a checkout named ``mpi`` every test of every tier was
    skipped; that name is not a marker, so it is taken out before pytest-mpi looks."""
    for item in items:
        for node in item.listchain():
            if node.name == "mpi" and getattr(node, "path", None) == config.rootpath:
                markers = getattr(node.keywords, "_markers", None)
                if isinstance(markers, dict):
                    markers.pop("mpi", None)



def _session_root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="bt-", dir="/tmp"))
    os.chmod(root, 0o755)
    return root


@pytest.fixture(scope="session")
def session_root() -> Iterator[Path]:
    root = _session_root()
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_project(session_root: Path) -> Iterator[Project]:
    """A running project (owner: the test runner). Tests use copies of its database."""
    from balsam_mpi.dbctl import lifecycle

    try:
        lifecycle.find_pg_bin_or_skip()
    except RuntimeError as exc:  # pragma: no cover - machines without Postgres
        pytest.skip(str(exc))
    lifecycle.init_project(session_root / "proj")
    project = Project(session_root / "proj")
    without_fsync(project)
    yield project
    lifecycle.stop_server(project, fast=True)


def without_fsync(project: Project) -> None:
    """A test cluster's server stops asking the disk to flush (``fsync = off``): every test
    copies a database and drops it, each a checkpoint, and every commit flushes the WAL;
    those flushes were about two thirds of a copy's cost. They guard only against the
    machine itself crashing, which no test does: a server killed with -9 or stopped
    still leaves everything it wrote in the kernel's cache. Written with ALTER SYSTEM
    (postgresql.auto.conf), so a restart by ``balsam-dbctl start`` keeps it."""
    from balsam_mpi.dbctl import lifecycle

    with lifecycle.admin_connect(project, project.read_server_info(), "postgres") as admin:
        admin.execute("ALTER SYSTEM SET fsync = off")
        admin.execute("SELECT pg_reload_conf()")


@pytest.fixture()
def dbname(pg_project: Project, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh database for one test, a copy of the project's; BALSAM_DB_NAME points at it."""
    from balsam_mpi.dbctl import testing

    name = f"t{os.getpid()}_{next(_counter)}"
    testing.create_copy(pg_project, name)
    monkeypatch.setenv("BALSAM_DB_PATH", str(pg_project.root))
    monkeypatch.setenv("BALSAM_DB_NAME", name)
    yield name
    testing.drop_copy(pg_project, name)


@pytest.fixture()
def conn(pg_project: Project, dbname: str):  # type: ignore[no-untyped-def]
    """The owner's everyday role on this test's database (autocommit): owner rights over
    tasks and apps, but not the database superuser (use ``lifecycle.admin_connect`` for that)."""
    from balsam_mpi.base import db

    with db.connect(pg_project, dbname=dbname, autocommit=True) as connection:
        yield connection


@pytest.fixture()
def su(pg_project: Project, dbname: str):  # type: ignore[no-untyped-def]
    """The database superuser on this test's database (autocommit): for setting up rows
    in states that members may only reach through the checked functions."""
    from balsam_mpi.dbctl import lifecycle

    with lifecycle.admin_connect(pg_project, pg_project.read_server_info(), dbname
                                 ) as connection:
        yield connection
