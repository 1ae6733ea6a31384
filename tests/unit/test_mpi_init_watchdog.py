"""A launcher rank stuck in MPI_Init (inside `from mpi4py import MPI`, in C, so no Python
runs) ends after BALSAM_MPI_INIT_TIMEOUT_S — SIGALRM, its stack on stderr first — instead
of spinning for as long as nobody kills it (seen here: three ranks under MPICH's gforker
stuck in UCX's wire-up, each on sched_yield at half a core, for 17 minutes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

# What launch.main does around the import, with a C-level hang in its place: a blocking
# read of a pipe nobody writes, in C, holding the GIL as MPI_Init would.
HANG = """
import os, sys
from balsam_mpi.launcher import launch
with launch.mpi_init_watchdog():
    r, w = os.pipe()
    os.read(r, 1)
"""


def _run(env: dict[str, str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", HANG], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=timeout)


def test_a_rank_stuck_in_mpi_init_ends_with_its_stack() -> None:
    t0 = time.monotonic()
    done = _run({"BALSAM_MPI_INIT_TIMEOUT_S": "1"})
    assert done.returncode == -signal.SIGALRM
    # faulthandler's C handler printed where the rank was: the line that hung.
    assert "most recent call first" in done.stderr, done.stderr
    assert 'File "<string>", line 6' in done.stderr, done.stderr
    assert time.monotonic() - t0 < 25


@pytest.mark.parametrize("raw", ["x", "-1", "nan", "1e9", "1.5"])
def test_a_bad_timeout_is_one_line_naming_it(raw: str) -> None:
    done = _run({"BALSAM_MPI_INIT_TIMEOUT_S": raw})
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "BALSAM_MPI_INIT_TIMEOUT_S" in lines[0], done.stderr


def test_the_timer_is_off_once_init_returned() -> None:
    code = ("import time\nfrom balsam_mpi.launcher import launch\n"
            "with launch.mpi_init_watchdog():\n    pass\ntime.sleep(2)\nprint('alive')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "BALSAM_MPI_INIT_TIMEOUT_S": "1"}, timeout=30)
    assert done.returncode == 0 and done.stdout.strip() == "alive", done.stderr
