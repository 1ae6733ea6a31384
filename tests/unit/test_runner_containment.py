"""Process containment and the output cap (issue 15.9): nothing a task forks outlives the
task or its launcher, whatever it does to escape its process group, and no task's output
grows without bound. The exit status the node reads is still the task's own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from balsam_mpi.node import runner
from balsam_mpi.node.cgroup import TaskCgroups
from balsam_mpi.protocol import RunOrder

pytestmark = pytest.mark.skipif(runner.trampoline.trampoline() is None,
                                reason="containment needs the task trampoline (a C compiler)")


def _cgroups_here() -> bool:
    found = TaskCgroups.detect()
    if found is not None:
        found.close()
    return found is not None


@pytest.fixture(autouse=True, params=["cgroup", "subreaper"])
def containment(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test twice: with a cgroup per task (where this host delegates one) and with
    the trampoline alone (what batch systems that keep cgroups to themselves get)."""
    if request.param == "cgroup" and not _cgroups_here():
        pytest.skip("no delegated cgroup v2 here")
    runner.configure(cgroups=request.param == "cgroup")
    yield str(request.param)
    runner.configure()


def wait(proc: runner.TaskProcess, timeout: float = 15.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rc = runner.reap(proc)
        if rc is not None:
            runner.close(proc)
            return rc
        time.sleep(0.01)
    raise AssertionError("task did not end")


def start(tmp_path: Path, script: str, **kw: object) -> runner.TaskProcess:
    order = RunOrder(7, 1, ("sh", "-c", script), str(tmp_path / "wf" / "0" / "t_7"))
    env = runner.task_environment(runner.base_environment({"PATH": os.environ["PATH"]}),
                                  order, "")
    return runner.start(order, env, **kw)  # type: ignore[arg-type]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _pids(path: Path, count: int, timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            pids = [int(x) for x in path.read_text().split()]
        except FileNotFoundError:
            pids = []
        if len(pids) >= count:
            return pids
        assert time.monotonic() < deadline, f"only {pids} in {path}"
        time.sleep(0.02)


def _gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids if _alive(p)]
        if not left:
            return []
        time.sleep(0.02)
    return [p for p in pids if _alive(p)]


@pytest.fixture()
def strays() -> Iterator[list[int]]:
    """Processes a failing test may leave behind: killed at the end whatever happens."""
    found: list[int] = []
    yield found
    for pid in found:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


# A daemon in the classic way: fork, new session, fork again, parent exits.
DAEMON = ("setsid sh -c 'sleep 60 & echo $! >> daemons.pid' & "
          "sleep 0.3; echo started")


def test_double_forked_daemons_die_with_the_task(tmp_path: Path, strays: list[int]) -> None:
    proc = start(tmp_path, DAEMON)
    assert wait(proc) == 0
    pids = _pids(tmp_path / "wf" / "0" / "t_7" / "daemons.pid", 1)
    strays += pids
    assert _gone(pids) == [], "a daemon the task started outlived it"


WORKER = """
import os, sys, time
sys.path.insert(0, {root!r})
from balsam_mpi.node import runner
from balsam_mpi.protocol import RunOrder
order = RunOrder(1, 1, ("sh", "-c", {script!r}), {cwd!r})
proc = runner.start(order, dict(os.environ), die_with_parent=True)
print(proc.pid, flush=True)
time.sleep(60)
"""

# Twelve grandchildren: six in the task's own group, six in sessions of their own.
FAMILY = ("for i in 1 2 3 4 5 6; do sleep 60 & echo $! >> kids.pid; "
          "setsid sh -c 'sleep 60 & echo $! >> kids.pid; wait' & done; wait")


def test_grandchildren_die_with_a_killed_launcher(tmp_path: Path, strays: list[int]) -> None:
    """Issue 15.9: 12 of 12 grandchildren survived kill -9 of their launcher."""
    root = str(Path(__file__).resolve().parents[2])
    cwd = tmp_path / "wf" / "0" / "t_1"
    worker = subprocess.Popen([sys.executable, "-c", WORKER.format(
        root=root, script=FAMILY, cwd=str(cwd))], stdout=subprocess.PIPE, text=True)
    assert worker.stdout is not None
    int(worker.stdout.readline())
    pids = _pids(cwd / "kids.pid", 12)
    strays += pids
    assert all(_alive(p) for p in pids)
    worker.kill()
    worker.wait()
    assert _gone(pids) == [], "grandchildren outlived their launcher"


def test_a_kill_reaches_processes_outside_the_task_group(tmp_path: Path,
                                                         strays: list[int]) -> None:
    proc = start(tmp_path, "setsid sh -c 'sleep 60 & echo $! >> daemons.pid; wait' & "
                           "sleep 60")
    pids = _pids(tmp_path / "wf" / "0" / "t_7" / "daemons.pid", 1)
    strays += pids
    runner.signal_group(proc, signal.SIGKILL)
    assert wait(proc) == -signal.SIGKILL
    assert _gone(pids) == []


def test_the_task_is_in_its_own_cgroup(tmp_path: Path, containment: str) -> None:
    proc = start(tmp_path, "cat /proc/self/cgroup")
    assert wait(proc) == 0
    line = next(ln for ln in (tmp_path / "wf" / "0" / "t_7" / "task.out").read_text()
                .splitlines() if ln.startswith("0::"))
    assert ("/balsam-" in line) == (containment == "cgroup"), line


def test_sigterm_reaches_the_task_and_its_status_is_kept(tmp_path: Path) -> None:
    proc = start(tmp_path, "trap 'exit 42' TERM; echo ready; while :; do sleep 0.05; done")
    out = tmp_path / "wf" / "0" / "t_7" / "task.out"
    deadline = time.monotonic() + 10
    while "ready" not in (out.read_text() if out.exists() else ""):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    runner.signal_group(proc, signal.SIGTERM)
    assert wait(proc) == 42


@pytest.mark.parametrize(("script", "rc"), [
    ("exit 0", 0), ("exit 3", 3), ("exit 255", 255), ("kill -SEGV $$", -signal.SIGSEGV),
    ("kill -TERM $$", -signal.SIGTERM), ("kill -KILL $$", -signal.SIGKILL)])
def test_exit_status_is_the_tasks_own(tmp_path: Path, script: str, rc: int) -> None:
    assert wait(start(tmp_path, script)) == rc
    assert not (tmp_path / "wf" / "0" / "t_7" / "core").exists()


MIB = 1 << 20


@pytest.fixture()
def capped() -> Iterator[int]:
    cap = 2 * MIB
    runner.configure(output_cap_mb=2, cgroups=runner._config.cgroups)
    yield cap
    runner.configure(cgroups=runner._config.cgroups)


def test_output_over_the_cap_keeps_head_and_tail(tmp_path: Path, capped: int) -> None:
    """Issue 15.9: a 2 GB task.out had no cap. 16 MiB written, at most the cap kept: the
    beginning, a line saying where the middle was cut, and the end."""
    script = ("echo FIRST-LINE; i=0; while [ $i -lt 16 ]; do "
              "head -c 1048576 /dev/zero | tr '\\0' x; i=$((i+1)); done; "
              "echo; echo LAST-LINE; echo ERR-LAST >&2; exit 5")
    proc = start(tmp_path, script)
    assert wait(proc, 60) == 5
    out = tmp_path / "wf" / "0" / "t_7" / "task.out"
    text = out.read_bytes()
    assert len(text) <= capped, len(text)
    assert text.startswith(b"FIRST-LINE\n")
    assert text.endswith(b"LAST-LINE\n")
    assert b"the middle was cut" in text
    assert runner.output_tail(proc) == "ERR-LAST\n"


def test_output_is_capped_while_the_task_runs(tmp_path: Path, capped: int) -> None:
    proc = start(tmp_path, "i=0; while [ $i -lt 40 ]; do head -c 524288 /dev/zero | "
                           "tr '\\0' y; sleep 0.1; i=$((i+1)); done; echo END")
    out = tmp_path / "wf" / "0" / "t_7" / "task.out"
    biggest = 0
    while runner.reap(proc) is None:
        if out.exists():
            biggest = max(biggest, out.stat().st_size)
        time.sleep(0.05)
    runner.close(proc)
    assert proc.rc == 0
    # Checked once a second: at most a second's output beyond the cap at any time.
    assert biggest <= capped + 8 * MIB, biggest
    assert out.stat().st_size <= capped
    assert out.read_bytes().endswith(b"END\n")


def test_no_cap_when_disabled(tmp_path: Path) -> None:
    runner.configure(output_cap_mb=0, cgroups=runner._config.cgroups)
    try:
        proc = start(tmp_path, "head -c 3145728 /dev/zero")
        assert wait(proc) == 0
    finally:
        runner.configure(cgroups=runner._config.cgroups)
    assert (tmp_path / "wf" / "0" / "t_7" / "task.out").stat().st_size == 3 * MIB
