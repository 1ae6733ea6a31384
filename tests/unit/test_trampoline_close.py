"""The trampoline closes every descriptor of the worker before it becomes the task (a
task must not hold MPI's sockets or the node's files). It did so with close_range, which
came with Linux 5.9: on the 5.3–5.8 kernels the launcher otherwise runs on, that call
answers ENOSYS and every descriptor the worker had not marked close-on-exec reached the
task. Now the trampoline closes what /proc/self/fd lists instead."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from balsam_mpi.node import trampoline
from tests import nosys
from tests.unit.pykit import REPO

pytestmark = pytest.mark.timeout(60)

# A worker's descriptor without close-on-exec (as MPI libraries leave theirs), at 200;
# the task lists its own descriptors into task.out.
TASK = """
import os, sys, time
from balsam_mpi.node import runner
from balsam_mpi.protocol import RunOrder
os.dup2(os.open("/dev/null", os.O_RDONLY), 200, inheritable=True)
order = RunOrder(1, 1, ("ls", "/proc/self/fd"), sys.argv[1], need=1.0)
proc = runner.start(order, {"PATH": "/usr/bin:/bin"})
while runner.reap(proc) is None:
    time.sleep(0.01)
print(proc.rc, proc.contained)
"""


def task_fds(tmp_path: Path, *refused: str) -> set[int]:
    where = tmp_path / "task"
    out = subprocess.run([sys.executable, "-c", TASK, str(where)], cwd=REPO, text=True,
                         capture_output=True, timeout=30,
                         preexec_fn=lambda: nosys.refuse(*refused) if refused else None)
    assert out.stdout.split() == ["0", "True"], out
    return {int(x) for x in (where / "task.out").read_text().split()}


@pytest.mark.skipif(trampoline.trampoline() is None, reason="no C compiler here")
def test_the_task_gets_only_its_own_descriptors(tmp_path: Path) -> None:
    assert task_fds(tmp_path) == {0, 1, 2, 3}  # 3: the directory ls reads


@pytest.mark.skipif(trampoline.trampoline() is None, reason="no C compiler here")
@pytest.mark.skipif(not nosys.supported(), reason="seccomp numbers for x86-64/aarch64")
def test_without_close_range_the_task_still_gets_only_its_own(tmp_path: Path) -> None:
    assert task_fds(tmp_path, "close_range") == {0, 1, 2, 3}


@pytest.mark.parametrize("step", ["TemporaryDirectory", "replace"])
def test_a_cache_that_cannot_be_written_is_no_trampoline_not_an_error(
        tmp_path: Path, step: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full (or read-only) cache: before, the build raised where it made its scratch
    directory or moved the binary into place — out of the node's start, and out of a
    `submit`, which now builds it too. Now it is no trampoline (the fallback), said in
    the log."""
    import os
    import tempfile

    def full(*_a: object, **_k: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tempfile if step == "TemporaryDirectory" else os, step, full)
    assert trampoline._build(tmp_path / "pdeath-test") is None
