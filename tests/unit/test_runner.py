"""One task process: argv (no shell), environment, directory, output files, tail, process
group, and death with its worker."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from balsam_mpi.node import runner
from balsam_mpi.protocol import RunOrder


def wait(proc: runner.TaskProcess, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rc = runner.reap(proc)
        if rc is not None:
            runner.close(proc)
            return rc
        time.sleep(0.01)
    raise AssertionError("task did not end")


@pytest.fixture(params=[True, False], ids=["die-with-parent", "plain"])
def die(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def start(tmp_path: Path, argv: tuple[str, ...], die: bool = True, **kw: object
          ) -> runner.TaskProcess:
    order = RunOrder(42, 1, argv, str(tmp_path / "wf" / "0" / "t_42"), **kw)  # type: ignore[arg-type]
    base = runner.base_environment({"PATH": os.environ["PATH"], "PMI_RANK": "3",
                                    "HYDRA_X": "1", "KEEP": "me"})
    env = runner.task_environment(base, order, "/proj")
    return runner.start(order, env, die_with_parent=die)


def test_argv_env_and_output_files(tmp_path: Path, die: bool) -> None:
    proc = start(tmp_path, ("sh", "-c", 'echo "$1 $BALSAM_TASK_ID $BALSAM_DB_PATH '
                            '$OMP_NUM_THREADS ${PMI_RANK:-none} $KEEP $MINE"; echo err >&2',
                            "sh", "a b;c"), die, env=(("MINE", "x"),), threads=4)
    assert wait(proc) == 0
    cwd = Path(proc.order.cwd)
    assert (cwd / runner.STDOUT_NAME).read_text() == "a b;c 42 /proj 4 none me x\n"
    assert (cwd / runner.STDERR_NAME).read_text() == "err\n"
    mode = stat.S_IMODE(cwd.stat().st_mode)
    assert mode & 0o2070 == 0o2070  # group rwx and setgid, whatever the umask
    assert stat.S_IMODE(cwd.parent.stat().st_mode) & 0o070 == 0o070


def test_exit_code_and_tail(tmp_path: Path, die: bool) -> None:
    proc = start(tmp_path, ("sh", "-c", "echo out; echo bad thing >&2; exit 3"), die)
    assert wait(proc) == 3
    assert runner.output_tail(proc) == "bad thing\n"


def test_a_missing_program_is_a_start_error(tmp_path: Path) -> None:
    with pytest.raises(runner.StartError, match="no-such-program"):
        start(tmp_path, ("no-such-program-xyz",), False)
    proc = start(tmp_path, ("no-such-program-xyz",), True) if runner.trampoline.trampoline() \
        is None else None
    if proc is not None:  # the preexec fallback raises like Popen; nothing more to check
        wait(proc)


def test_the_whole_process_group_is_signalled(tmp_path: Path, die: bool) -> None:
    proc = start(tmp_path, ("sh", "-c", "sleep 60 & echo $! > child.pid; wait"), die)
    pidfile = Path(proc.order.cwd) / "child.pid"
    deadline = time.monotonic() + 5
    while not pidfile.exists() or not pidfile.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    child = int(pidfile.read_text())
    runner.signal_group(proc, signal.SIGKILL)
    assert wait(proc) == -signal.SIGKILL
    deadline = time.monotonic() + 5
    while _alive(child):
        assert time.monotonic() < deadline, "the task's own child survived"
        time.sleep(0.01)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


WORKER = """
import os, sys, time
sys.path.insert(0, {root!r})
from balsam_mpi.node import runner
from balsam_mpi.protocol import RunOrder
order = RunOrder(1, 1, ("sleep", "60"), {cwd!r})
proc = runner.start(order, dict(os.environ), die_with_parent=True)
print(proc.pid, flush=True)
time.sleep(60)
"""


def test_tasks_die_with_their_worker(tmp_path: Path) -> None:
    """kill -9 of the worker must not leave the task running (a requeue would run it
    a second time)."""
    root = str(Path(__file__).resolve().parents[2])
    worker = subprocess.Popen([sys.executable, "-c", WORKER.format(root=root,
                                                                   cwd=str(tmp_path / "t"))],
                              stdout=subprocess.PIPE, text=True)
    assert worker.stdout is not None
    task_pid = int(worker.stdout.readline())
    assert _alive(task_pid)
    worker.kill()
    worker.wait()
    deadline = time.monotonic() + 5
    while _alive(task_pid):
        assert time.monotonic() < deadline, "the task outlived its worker"
        time.sleep(0.02)


def test_env_script_is_sourced_before_the_task(tmp_path: Path) -> None:
    script = tmp_path / "env.sh"
    script.write_text("export FROM_SCRIPT=yes\n")
    proc = start(tmp_path, ("sh", "-c", "echo $FROM_SCRIPT"), True, env_script=str(script))
    assert wait(proc) == 0
    assert (Path(proc.order.cwd) / runner.STDOUT_NAME).read_text() == "yes\n"
