"""Nested MPI for real: a task's own ``mpiexec`` started from inside a launcher rank.

Exactly what a worker rank does for a 2-node × 2-rank task: ``mpiexec -n 2 python
worker.py`` stands for the launcher (each rank initialises MPI, as a worker has), and each
rank starts ``launch_prefix(KIND, hosts=[localhost, localhost], ranks_per_node=2)`` plus an
mpi4py hello with :func:`task_mpi_env`, KIND being what the found mpiexec is (the mpich
wheel: hydra; tests/openmpi: Open MPI). Descriptors ≥ 3 are closed in the child, as the
runner's trampoline closes them. Every run has a watchdog that kills the whole process
group; the jobs are small (the machine has 2 cores).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from tests.conftest import FOUND_MPI, mpirun, needs_mpiexec

REPO = Path(__file__).resolve().parents[2]
MPIEXEC = FOUND_MPI.program if FOUND_MPI else "mpiexec"
KIND = FOUND_MPI.kind if FOUND_MPI else "mpich"
WATCHDOG_S = 90

pytestmark = [pytest.mark.timeout(240), needs_mpiexec]
hydra_only = pytest.mark.skipif(KIND != "mpich", reason="records MPICH hydra's behaviour")

HELLO = textwrap.dedent("""\
    import os, socket, sys
    from mpi4py import MPI
    c = MPI.COMM_WORLD
    # One write per rank: hydra forwards output in chunks, so lines are built whole.
    sys.stdout.write(f"HELLO rank={c.Get_rank()} size={c.Get_size()} "
                     f"host={socket.gethostname()} cpus={sorted(os.sched_getaffinity(0))}\\n")
    sys.stdout.flush()
""")

# Through the runner, as a worker starts any task: the exec trampoline (which closes the
# worker's descriptors and sets the parent-death signal), its own session, output files.
RUNNER_WORKER = textwrap.dedent("""\
    import json, os, sys, time
    from mpi4py import MPI
    from balsam_mpi.node import runner
    from balsam_mpi.node.mpilaunch import launch_prefix, task_mpi_env
    from balsam_mpi.protocol import RunOrder
    def _ends(text):  # a failure's first lines name its cause; the last, where it ended
        return text if len(text) <= 4000 else text[:2000] + "\\n[...]\\n" + text[-2000:]
    hello, out_dir, kind, mpiexec = sys.argv[1:5]
    rank = MPI.COMM_WORLD.Get_rank()
    argv = launch_prefix(kind, hosts=["localhost", "localhost"], ranks_per_node=2,
                         program=mpiexec) + [sys.executable, hello]
    cwd = os.path.join(out_dir, f"task{rank}")
    order = RunOrder(rank + 1, 1, tuple(argv), cwd)
    proc = runner.start(order, task_mpi_env(os.environ))
    deadline = time.monotonic() + 60
    while runner.reap(proc) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if proc.rc is None:
        runner.signal_group(proc, 9)
    out = open(os.path.join(cwd, runner.STDOUT_NAME)).read()
    err = open(os.path.join(cwd, runner.STDERR_NAME)).read()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
        json.dump({"rc": proc.rc, "out": out, "err": _ends(err)}, fh)
    MPI.COMM_WORLD.Barrier()
""")

# The stand-in for a worker rank: MPI is initialised first, as in a real launcher rank.
WORKER = textwrap.dedent("""\
    import json, os, subprocess, sys
    from mpi4py import MPI
    from balsam_mpi.node.mpilaunch import launch_prefix, task_mpi_env
    def _ends(text):  # a failure's first lines name its cause; the last, where it ended
        return text if len(text) <= 4000 else text[:2000] + "\\n[...]\\n" + text[-2000:]
    mode, hello, out_dir, kind, mpiexec = sys.argv[1:6]
    rank = MPI.COMM_WORLD.Get_rank()
    env = task_mpi_env(os.environ) if mode.startswith("scrubbed") else dict(os.environ)
    if mode.endswith("fork-nested"):  # MPICH's gforker: what a local launcher uses
        argv = [mpiexec, "-n", "4", sys.executable, hello]
    elif mode.endswith("nested"):
        argv = launch_prefix(kind, hosts=["localhost", "localhost"], ranks_per_node=2,
                             program=mpiexec) + [sys.executable, hello]
    else:  # a single-rank MPI task started without a prefix
        argv = [sys.executable, hello]
    def _once():
        try:
            p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60,
                               close_fds=True)
            return {"rc": p.returncode, "out": p.stdout, "err": _ends(p.stderr)}
        except subprocess.TimeoutExpired:
            return {"rc": None, "out": "", "err": "timed out"}
    result = _once()
    if (kind == "openmpi" and mode == "scrubbed-single" and result["rc"]
            and "Unable to start a daemon on the local node" in result["err"]):
        # Open MPI's singleton could not start its own daemon (orted): seen once in CI,
        # never in 245 tries here. A scrub that broke the singleton fails both times.
        result = {**_once(), "first_try": result["err"]}
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
        json.dump(result, fh)
    MPI.COMM_WORLD.Barrier()
""")

_HELLO_LINE = re.compile(r"HELLO rank=(\d+) size=(\d+) host=(\S+) cpus=(\[[^\]]*\])")


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run with a watchdog that kills the whole process group (mpiexec and its ranks)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=WATCHDOG_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{argv[:4]} still running after {WATCHDOG_S} s:\n{out}\n{err}")
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _hellos(text: str) -> list[tuple[int, int, str, list[int]]]:
    return [(int(r), int(s), h, json.loads(c)) for r, s, h, c in _HELLO_LINE.findall(text)]


def _launcher_run(tmp_path: Path, mode: str, program: str = MPIEXEC
                  ) -> dict[int, dict[str, object]]:
    (tmp_path / "hello.py").write_text(HELLO)
    (tmp_path / "worker.py").write_text(WORKER)
    outer = _run([*mpirun(2), sys.executable, str(tmp_path / "worker.py"), mode,
                  str(tmp_path / "hello.py"), str(tmp_path), KIND, program], tmp_path)
    assert outer.returncode == 0, f"the outer job failed:\n{outer.stdout}\n{outer.stderr}"
    results = {}
    for rank in (0, 1):
        results[rank] = json.loads((tmp_path / f"rank{rank}.json").read_text())
    return results


def test_nested_two_node_two_rank_task_from_each_worker_rank(tmp_path: Path) -> None:
    results = _launcher_run(tmp_path, "scrubbed-nested")
    for rank, res in results.items():
        assert res["rc"] == 0, f"outer rank {rank}: {res}"
        hellos = _hellos(str(res["out"]))
        assert sorted(r for r, *_ in hellos) == [0, 1, 2, 3], f"outer rank {rank}: {res}"
        assert {s for _, s, *_ in hellos} == {4}  # one fresh job of 4, not the launcher's


def test_nested_task_started_through_the_runner(tmp_path: Path) -> None:
    (tmp_path / "hello.py").write_text(HELLO)
    (tmp_path / "worker.py").write_text(RUNNER_WORKER)
    outer = _run([*mpirun(2), sys.executable, str(tmp_path / "worker.py"),
                  str(tmp_path / "hello.py"), str(tmp_path), KIND, MPIEXEC], tmp_path)
    assert outer.returncode == 0, f"the outer job failed:\n{outer.stdout}\n{outer.stderr}"
    for rank in (0, 1):
        res = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert res["rc"] == 0, f"outer rank {rank}: {res}"
        hellos = _hellos(str(res["out"]))
        assert sorted(r for r, *_ in hellos) == [0, 1, 2, 3], f"outer rank {rank}: {res}"
        assert {s for _, s, *_ in hellos} == {4}


@pytest.mark.skipif(FOUND_MPI is None or not FOUND_MPI.fork_program,
                    reason="no MPICH mpiexec.gforker beside the found mpiexec")
def test_nested_task_through_the_fork_starter(tmp_path: Path) -> None:
    """What a worker of a local launcher starts for a task on its own host: gforker."""
    assert FOUND_MPI is not None
    for rank, res in _launcher_run(tmp_path, "scrubbed-fork-nested",
                                   FOUND_MPI.fork_program).items():
        assert res["rc"] == 0, f"outer rank {rank}: {res}"
        hellos = _hellos(str(res["out"]))
        assert sorted(r for r, *_ in hellos) == [0, 1, 2, 3], f"outer rank {rank}: {res}"
        assert {s for _, s, *_ in hellos} == {4}


@hydra_only
def test_single_rank_mpi_task_fails_unscrubbed(tmp_path: Path) -> None:
    """Without scrubbing, an mpi4py task started without mpiexec inherits the launcher
    rank's PMI_FD/PMI_RANK/PMI_SIZE and fails in MPI_Init."""
    for rank, res in _launcher_run(tmp_path, "raw-single").items():
        assert res["rc"] != 0, f"outer rank {rank}: unscrubbed task ran: {res}"
        assert "PMI" in str(res["err"]), res


def test_single_rank_mpi_task_with_the_scrubbed_environment(tmp_path: Path) -> None:
    """Scrubbed, a single-rank mpi4py task is a singleton, whichever MPI ran the launcher."""
    scrubbed = _launcher_run(tmp_path, "scrubbed-single")
    for rank, res in scrubbed.items():
        if "first_try" in res:  # shown in the summary: a retry is never silent
            warnings.warn(f"outer rank {rank}: Open MPI's singleton daemon failed to start "
                          f"once, then the task ran:\n{res['first_try']}", stacklevel=1)
        assert res["rc"] == 0, f"outer rank {rank}: {res}"
        assert [(r, s) for r, s, *_ in _hellos(str(res["out"]))] == [(0, 1)]


@hydra_only
def test_hydra_nested_launch_works_even_unscrubbed(tmp_path: Path) -> None:
    """Recorded behaviour, not a reason to skip scrubbing: hydra sets PMI_* afresh for the
    ranks it starts, so the prefix alone survives the launcher's variables (docs)."""
    for rank, res in _launcher_run(tmp_path, "raw-nested").items():
        assert res["rc"] == 0, f"outer rank {rank}: {res}"
        assert sorted(r for r, *_ in _hellos(str(res["out"]))) == [0, 1, 2, 3]


@pytest.mark.skipif(KIND != "openmpi", reason="records Open MPI's behaviour")
def test_open_mpi_nested_launch_needs_the_scrubbed_environment(tmp_path: Path) -> None:
    """Open MPI 4.1's mpirun started with a rank's variables fails — "mpirun does not
    support recursive calls", or, with a session directory base set, "A call to mkdir was
    unable to create the desired directory" (both measured here) — and runs nothing; the
    scrubbed one runs a fresh job (the tests above)."""
    for rank, res in _launcher_run(tmp_path, "raw-nested").items():
        assert res["rc"] != 0, f"outer rank {rank}: unscrubbed mpirun ran: {res}"
        assert _hellos(str(res["out"])) == [], res


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="binding needs two cores")
def test_binding_reaches_the_ranks(tmp_path: Path) -> None:
    from balsam_mpi.node.mpilaunch import launch_prefix

    (tmp_path / "hello.py").write_text(HELLO)
    allowed = sorted(os.sched_getaffinity(0))
    cpus = {}
    for bind in ("none", "core"):
        argv = launch_prefix(KIND, hosts=["localhost"], ranks_per_node=2, cpu_bind=bind,
                             program=MPIEXEC) + [sys.executable, str(tmp_path / "hello.py")]
        done = _run(argv, tmp_path)
        assert done.returncode == 0, done.stderr
        cpus[bind] = [c for *_, c in sorted(_hellos(done.stdout))]
        assert len(cpus[bind]) == 2
    assert cpus["none"] == [allowed, allowed]
    assert all(len(c) == 1 for c in cpus["core"])  # one core each …
    assert cpus["core"][0] != cpus["core"][1]  # … and not the same one


SLEEPER = textwrap.dedent("""\
    import os, sys, time
    from mpi4py import MPI
    with open(os.path.join(sys.argv[1], f"{os.getpid()}.pid"), "w") as fh:
        fh.write(str(MPI.COMM_WORLD.Get_rank()))
    time.sleep(120)
""")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_signalling_the_prefix_group_ends_every_rank(tmp_path: Path, sig: int) -> None:
    """How a worker stops a multi-rank task: the runner signals the process group of what
    it started (the found mpiexec, in its own session as the runner starts tasks).
    Hydra puts each rank in a group of its own, so this checks the ranks still end."""
    import time

    from balsam_mpi.node.mpilaunch import launch_prefix

    (tmp_path / "sleeper.py").write_text(SLEEPER)
    argv = launch_prefix(KIND, hosts=["localhost", "localhost"], ranks_per_node=2,
                         program=MPIEXEC) + [sys.executable, str(tmp_path / "sleeper.py"),
                                             str(tmp_path)]
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    pids: list[int] = []
    try:
        deadline = time.monotonic() + WATCHDOG_S
        while len(pids) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
            pids = [int(p.stem) for p in tmp_path.glob("*.pid")]
        assert len(pids) == 4, f"only {len(pids)} ranks started"
        os.killpg(proc.pid, sig)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [p for p in pids if _alive(p)] == []
    finally:  # the watchdog: nothing of this test outlives it
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in pids:  # only our own ranks: their command line names tmp_path
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    ours = str(tmp_path).encode() in fh.read()
                if ours:
                    os.kill(pid, signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass
        proc.wait(timeout=30)
