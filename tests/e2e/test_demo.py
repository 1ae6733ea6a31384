"""`balsam-mpi demo`, the first command a new user runs, with the MPI the set-up found (the
mpich wheel here; Debian's Open MPI in tests/openmpi): every task finishes, its 2-node MPI
task included, and it says how it started the launcher."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FOUND_MPI, needs_mpiexec

pytestmark = [pytest.mark.timeout(300), needs_mpiexec]


def _expected_start() -> str:
    """How the demo says it started the ranks, for the found MPI (docs/mpi-tasks.md)."""
    assert FOUND_MPI is not None
    if FOUND_MPI.kind == "openmpi":
        return "with Open MPI's"
    if FOUND_MPI.fork_program:
        return "with MPICH's fork starter"
    return "no mpiexec.gforker beside it, so hydra's control port listens"


def test_the_demo_runs_its_mpi_task() -> None:
    done = subprocess.run([str(Path(sys.executable).parent / "balsam-mpi"), "demo",
                           "--tasks", "60"], capture_output=True, text=True, timeout=240,
                          check=False)
    out = done.stdout + done.stderr
    found = re.search(r"The project is in (\S+) ", out)
    try:
        assert done.returncode == 0, out
        assert "running 4 launcher ranks with " in out and _expected_start() in out, out
        states = dict(re.findall(r"^  (\w+)\s+(.*)$", out.split("tasks by state:")[1], re.M))
        assert states.get("mpi") == "JOB_FINISHED 1", out
        assert all("FAILED" not in line for line in states.values()), out
        assert found, out
        project = Path(found.group(1))
        logs = "".join(p.read_text() for p in (project / "log").glob("launcher_*.log"))
        assert "multi-rank tasks start with " in logs, logs
        hello = next((project / "data" / "mpi").rglob("task.out")).read_text()
        host = socket.gethostname()
        assert sorted(hello.splitlines()) == [f"rank 0 of 2 on {host}",
                                              f"rank 1 of 2 on {host}"], hello
    finally:
        if found and Path(found.group(1)).parent.name.startswith("balsam-demo-"):
            shutil.rmtree(Path(found.group(1)).parent, ignore_errors=True)
