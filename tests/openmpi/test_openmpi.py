"""Run by tests/openmpi/run.sh with Debian's Open MPI as the site MPI (mpi4py built against
it, its mpiexec found the way the demo finds it): the demo runs its 2-node MPI task.
Anywhere else these tests skip, saying where they run."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FOUND_MPI

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(FOUND_MPI is None or FOUND_MPI.kind != "openmpi",
                       reason="the Open MPI tier: bash tests/openmpi/run.sh (as root)"),
]


def test_this_tier_really_runs_on_open_mpi() -> None:
    # In a child: MPI initialised in this process would leave Open MPI's singleton
    # variables in its environment for every later test to inherit.
    version = subprocess.run([sys.executable, "-c", "from mpi4py import MPI; "
                              "print(MPI.Get_library_version())"], capture_output=True,
                             text=True, timeout=60, check=True).stdout
    assert "Open MPI" in version
    assert FOUND_MPI is not None and Path(FOUND_MPI.program).resolve().name.startswith(
        ("orterun", "mpiexec.openmpi", "prterun", "mpirun.openmpi")), FOUND_MPI


def test_the_demo_runs_its_mpi_task() -> None:
    done = subprocess.run([str(Path(sys.executable).parent / "balsam-mpi"), "demo",
                           "--tasks", "60"], capture_output=True, text=True, timeout=240,
                          check=False)
    out = done.stdout + done.stderr
    found = re.search(r"The project is in (\S+) ", out)
    try:
        assert done.returncode == 0, out
        assert "running 4 launcher ranks with Open MPI's" in out, out
        states = dict(re.findall(r"^  (\w+)\s+(.*)$", out.split("tasks by state:")[1], re.M))
        assert states.get("mpi") == "JOB_FINISHED 1", out
        assert all("FAILED" not in line for line in states.values()), out
        assert found, out
        project = Path(found.group(1))
        logs = "".join(p.read_text() for p in (project / "log").glob("launcher_*.log"))
        assert "multi-rank tasks start with Open MPI (mpiexec -n N --host h1:P,h2:P)" in logs
        hello = next((project / "data" / "mpi").rglob("task.out")).read_text()
        host = socket.gethostname()
        assert sorted(hello.splitlines()) == [f"rank 0 of 2 on {host}",
                                              f"rank 1 of 2 on {host}"], hello
    finally:
        if found and Path(found.group(1)).parent.name.startswith("balsam-demo-"):
            shutil.rmtree(Path(found.group(1)).parent, ignore_errors=True)
