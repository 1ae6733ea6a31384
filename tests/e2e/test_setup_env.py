"""setup_env.sh on a venv whose MPI library went away: it notices (``import mpi4py`` alone
still succeeds), says why, and reinstalls until ``from mpi4py import MPI`` works.

A real venv is built (with the mpich wheel, as CI's set-up does), then the wheel's MPI
library is deleted — what a removed module or package does to a site build."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(600)


def _setup(venv: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, BALSAM_VENV=str(venv), BALSAM_USE_MPICH_WHEEL="1",
               PYTHON=sys.executable)
    return subprocess.run(["bash", str(REPO / "setup_env.sh")], env=env, capture_output=True,
                          text=True, timeout=540, check=False)


def _loads(venv: Path, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True,
                          text=True, check=False)


def test_setup_reinstalls_mpi4py_whose_library_is_gone(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    first = _setup(venv)
    assert first.returncode == 0, first.stdout + first.stderr
    assert _loads(venv, "from mpi4py import MPI").returncode == 0
    libs = list((venv / "lib").glob("libmpi.so*"))
    assert libs, sorted(p.name for p in (venv / "lib").iterdir())
    for lib in libs:
        lib.unlink()
    assert _loads(venv, "import mpi4py").returncode == 0  # what the old check looked at
    broken = _loads(venv, "from mpi4py import MPI")
    assert broken.returncode != 0

    second = _setup(venv)
    out = second.stdout + second.stderr
    assert second.returncode == 0, out
    assert "'from mpi4py import MPI' fails" in out and "reinstalling" in out, out
    assert _loads(venv, "from mpi4py import MPI").returncode == 0, out
