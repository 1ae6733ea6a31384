"""Spare interpreters (``python_spares``): a node forks them in its idle time before its
first Python call (the leader's node at once, before its batch job opens), so the first
wave of calls starts on interpreters that are up instead of waiting for a fork each. A
spare has no kind until its first call, which gives it the call's spawn variables, set
for good before anything of the user's is imported. The benchmark that moved:
docs/python-tasks.md, *Spares*."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from balsam_mpi.base.errors import UsageError
from balsam_mpi.launcher.config import Settings, resolve
from balsam_mpi.launcher.session import make_node
from balsam_mpi.node.node import Node, pypool
from tests.unit.pykit import ENV, REPO, call, ok, run

pytestmark = pytest.mark.timeout(60)


def spared(spares: int) -> Node:
    node = Node(environ=dict(ENV), kill_grace_s=1.0, signal_hold_s=0.2)
    node.python = pypool.PoolConfig(memory_mb=300, spares=spares)
    node.prestart_python()
    return node


@pytest.fixture()
def three() -> Iterator[Node]:
    node = spared(3)
    yield node
    node.close()


def idle_until_spared(node: Node, n: int) -> pypool.PyPool:
    pool = node.pool
    assert pool is not None and pool.zygote.alive()
    deadline = time.monotonic() + 20
    while len(pool.spares) < n:
        assert time.monotonic() < deadline, f"{len(pool.spares)} spares of {n}"
        node.wait(0.01)
    return pool


def test_idle_waits_fork_the_spares_and_the_first_wave_runs_on_them(
        three: Node, tmp_path: Path) -> None:
    pool = idle_until_spared(three, 3)
    pids = {s.pid for s in pool.spares}
    assert pool.started == 3 and len(pids) == 3
    out = run(three, *(call(tmp_path, i, "where") for i in (1, 2, 3)))
    assert {ok(f)["pid"] for f in out.values()} == pids  # no fork for the wave
    assert pool.started == 3 and not pool.spares


def test_no_spare_is_forked_after_the_first_call(three: Node, tmp_path: Path) -> None:
    pool = three.pool
    assert pool is not None
    ok(run(three, call(tmp_path, 1, "noop"))[1])  # before any spare was made
    started = pool.started
    for _ in range(20):
        three.wait(0.005)
    assert pool.started == started and not pool.spare_wanted()


def test_a_spare_takes_the_spawn_variables_of_its_first_call(tmp_path: Path) -> None:
    node = spared(2)
    try:
        pool = idle_until_spared(node, 2)
        out = run(node, call(tmp_path, 1, "where", threads=3),
                  call(tmp_path, 2, "where", threads=5))
        assert (ok(out[1])["omp"], ok(out[2])["omp"]) == ("3", "5")
        assert pool.started == 2  # each kind took a spare
        kinds = {k for k, idle in pool.idle.items() if idle}
        assert len(kinds) == 2 and pypool.SPARE not in kinds
        # Set for good: the next call of the kind "3" gets the same interpreter, with it.
        again = ok(run(node, call(tmp_path, 3, "where", threads=3))[3])
        assert (again["omp"], again["pid"]) == ("3", ok(out[1])["pid"])
    finally:
        node.close()


def test_a_spare_that_died_idle_is_replaced_not_blamed(three: Node, tmp_path: Path) -> None:
    pool = idle_until_spared(three, 3)
    for spare in pool.spares:
        os.kill(spare.pid, signal.SIGKILL)
    for spare in pool.spares:  # dead before the call (not a race with its sending)
        assert select.select([spare.pidfd], [], [], 10)[0]
    out = run(three, call(tmp_path, 1, "where"))
    assert ok(out[1])["pid"] not in {s.pid for s in pool.procs.values()
                                        if s.status is not None}
    assert pool.started == 4 and not pool.spares  # three dead ones retired, one forked


def test_the_leaders_node_forks_its_spares_at_once(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BALSAM_DB_PATH", str(tmp_path))
    node = make_node(Settings(python_spares=2), None, spares_now=True)
    try:
        assert node.pool is not None and len(node.pool.spares) == 2
    finally:
        node.close()
    worker = make_node(Settings(python_spares=2), None)  # a worker's: in its idle time
    try:
        assert worker.pool is not None and not worker.pool.spares
    finally:
        worker.close()


def test_spares_default_to_one_per_core_and_zero_means_none(tmp_path: Path) -> None:
    assert Settings().python_spares == -1
    assert pypool.PoolConfig(spares=-1).spare_count() == (os.cpu_count() or 1)
    node = spared(0)
    try:
        for _ in range(10):
            node.wait(0.005)
        assert node.pool is not None and node.pool.started == 0
    finally:
        node.close()


@pytest.mark.parametrize("raw", ["-2", "4097", "two"])
def test_a_bad_spare_count_names_the_setting(raw: str) -> None:
    with pytest.raises(UsageError, match="python_spares"):
        resolve({}, {"BALSAM_PYTHON_SPARES": raw}, {})


def test_by_default_one_spare_per_core_of_the_jobs_cpuset() -> None:
    """A job given some cores of a shared node (Slurm's cpuset): one spare per core it
    may run on. Before, one per core of the whole node (os.cpu_count)."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: nothing to restrict")
    code = ("import os\n"
            "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
            "from balsam_mpi.node import pypool\n"
            "print(pypool.PoolConfig(spares=-1).spare_count(), os.cpu_count())\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=30)
    assert out.stdout.split() == ["1", str(os.cpu_count())], out
