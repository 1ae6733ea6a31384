"""Run by tests/openmpi/run.sh with Debian's Open MPI as the site MPI (mpi4py built against
it, its mpiexec found the way the demo finds it), before the e2e tests it runs there (the
demo's among them): this tier really is on Open MPI. Anywhere else it skips, saying where
it runs."""

from __future__ import annotations

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
    # In a child: initialised here, MPI (a singleton) would fork Open MPI's orted beside
    # this test process for the rest of the session.
    version = subprocess.run([sys.executable, "-c", "from mpi4py import MPI; "
                              "print(MPI.Get_library_version())"], capture_output=True,
                             text=True, timeout=60, check=True).stdout
    assert "Open MPI" in version
    assert FOUND_MPI is not None and Path(FOUND_MPI.program).resolve().name.startswith(
        ("orterun", "mpiexec.openmpi", "prterun", "mpirun.openmpi")), FOUND_MPI
