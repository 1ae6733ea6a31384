"""Multi-node MPI tasks and GPUs under the real launcher: `mpiexec -n N python -m
balsam_mpi` against a fresh database copy, with a watchdog on every run."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FOUND_MPI, mpirun, needs_mpiexec
from tests.e2e.test_launcher import finish, no_strays, states

pytestmark = [pytest.mark.timeout(240), needs_mpiexec]

HELLO = textwrap.dedent("""\
    import socket, sys, time
    from mpi4py import MPI
    c = MPI.COMM_WORLD
    time.sleep(2.0)  # long enough for small tasks to run beside it
    sys.stdout.write(f"HELLO rank={c.Get_rank()} size={c.Get_size()} "
                     f"host={socket.gethostname()}\\n")
    sys.stdout.flush()
""")

# Which launcher rank started this task: its parent is the task trampoline, whose parent
# is the rank, whose environment still says which rank it is (hydra and gforker:
# PMI_RANK; Open MPI: OMPI_COMM_WORLD_RANK). Prints the number.
WHERE = ("sh -c 'rank=$(cut -d\" \" -f4 /proc/$PPID/stat); "
         "tr \"\\000\" \"\\n\" < /proc/$rank/environ "
         "| sed -n -E \"s/^(PMI_RANK|OMPI_COMM_WORLD_RANK)=//p\" ; sleep 0.3'")


def launcher(ranks: int, *args: str, env: dict[str, str] | None = None,
             timeout: float = 120) -> subprocess.Popen[str]:
    argv = [*mpirun(ranks), sys.executable, "-P", "-m", "balsam_mpi",
            "--idle-timeout", "0", *args]
    full = dict(os.environ, BALSAM_FLUSH_INTERVAL_S="0.05", BALSAM_HEARTBEAT_S="2",
                **(env or {}))
    proc = subprocess.Popen(argv, env=full, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    proc.timeout = timeout  # type: ignore[attr-defined]
    return proc


def add_app(conn: Any, name: str, command: str, *, pre: str = "", post: str = "",
            on_error: bool = False, on_timeout: bool = False) -> None:
    conn.execute("INSERT INTO apps (name, command, preprocess, postprocess, "
                 "postprocess_on_error, postprocess_on_timeout) VALUES (%s, %s, %s, %s, %s, %s)",
                 (name, command, pre, post, on_error, on_timeout))


def add_tasks(conn: Any, app: str, n: int = 1, *, num_nodes: int = 1, ranks_per_node: int = 1,
              gpus_per_rank: int = 0, packing: int = 1, wall_time_min: float = 0.0,
              error_retries: int = 0, timeout_retries: int = 0) -> list[int]:
    """READY tasks in a workflow named after the test's database: every test's ids start
    at 1 but the project (and its data directory) is shared."""
    rows = conn.execute(
        "INSERT INTO tasks (workflow, name, app_id, state, num_nodes, ranks_per_node, "
        "gpus_per_rank, node_packing_count, wall_time_min, error_retry_limit, "
        "timeout_retry_limit) SELECT current_database(), 't', "
        "(SELECT id FROM apps WHERE name = %s), 'READY', %s, %s, %s, %s, %s, %s, %s "
        "FROM generate_series(1, %s) RETURNING id",
        (app, num_nodes, ranks_per_node, gpus_per_rank, packing, wall_time_min,
         error_retries, timeout_retries, n)).fetchall()
    return [r[0] for r in rows]


def task_dir(pg_project: Any, task_id: int) -> Path:
    dbname = os.environ["BALSAM_DB_NAME"]
    return Path(pg_project.task_dir(dbname, task_id, "t"))


def windows(conn: Any, ids: list[int]) -> dict[int, tuple[float, float]]:
    return {r[0]: (r[1], r[2]) for r in conn.execute(
        "SELECT id, extract(epoch FROM started_at)::float8, extract(epoch FROM ended_at)::float8"
        " FROM tasks WHERE id = ANY (%s)", (ids,))}


def overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


# "detected": the launcher asks the mpiexec what it is (with the mpich wheel: hydra, and
# gforker for tasks on this host alone); "hydra": forced, so hydra's nesting is run too.
CHOICES = ["detected", "hydra"] if FOUND_MPI is not None and FOUND_MPI.kind == "mpich" \
    else ["detected"]


@pytest.mark.parametrize("choice", CHOICES)
def test_two_node_mpi_task_beside_small_tasks(conn: Any, dbname: str, pg_project: Any,
                                              tmp_path: Path, choice: str) -> None:
    hello = tmp_path / "hello.py"
    hello.write_text(HELLO)
    add_app(conn, "hello", f"{sys.executable} {hello}")
    add_app(conn, "where", WHERE)
    big = add_tasks(conn, "hello", num_nodes=2, ranks_per_node=2)
    small = add_tasks(conn, "where", 24)
    finish(launcher(3, env={"BALSAM_MPI_LAUNCHER": "mpich"} if choice == "hydra" else {}))
    assert states(conn) == {"JOB_FINISHED": 25}
    out = (task_dir(pg_project, big[0]) / "task.out").read_text()
    ranks = sorted(int(line.split()[1].split("=")[1]) for line in out.splitlines()
                   if line.startswith("HELLO"))
    assert ranks == [0, 1, 2, 3], out
    assert out.count("size=4") == 4, out
    # While the 2-node task ran, small tasks ran only on the third node (rank 0's).
    win = windows(conn, big + small)
    beside = [t for t in small if overlap(win[t], win[big[0]])]
    where = {t: (task_dir(pg_project, t) / "task.out").read_text().strip() for t in beside}
    assert beside and set(where.values()) == {"0"}, where
    no_strays(dbname)


def test_gpus_are_handed_out_distinct(conn: Any, dbname: str, pg_project: Any) -> None:
    add_app(conn, "gpu", "sh -c 'echo \"$CUDA_VISIBLE_DEVICES $ZE_AFFINITY_MASK\"; "
                         "sleep 0.5'")
    ids = add_tasks(conn, "gpu", 4, gpus_per_rank=1, packing=4)
    finish(launcher(1, "--gpus-per-node", "2", env={"BALSAM_GPU_VENDOR": ""}))
    assert states(conn) == {"JOB_FINISHED": 4}
    seen = {}
    for t in ids:
        cuda, ze = (task_dir(pg_project, t) / "task.out").read_text().split()
        assert cuda == ze and cuda in ("0", "1")  # one device each, every vendor's variable
        seen[t] = cuda
    win = windows(conn, ids)
    for a in ids:
        for b in ids:
            if a < b and overlap(win[a], win[b]):
                assert seen[a] != seen[b]  # never the same device at the same time
    # Two GPUs: at most two 1-GPU tasks at a time on the node (the node's own clock).
    edges = sorted([(w[0], 1) for w in win.values()] + [(w[1], -1) for w in win.values()])
    running = [sum(d for _, d in edges[:i + 1]) for i in range(len(edges))]
    assert max(running) <= 2
    no_strays(dbname)


def test_one_node_multi_rank_task_on_the_leaders_node(conn: Any, dbname: str,
                                                      pg_project: Any, tmp_path: Path) -> None:
    hello = tmp_path / "hello.py"
    hello.write_text(HELLO.replace("time.sleep(2.0)", "pass"))
    add_app(conn, "hello", f"{sys.executable} {hello}")
    [task] = add_tasks(conn, "hello", ranks_per_node=2, packing=4)
    finish(launcher(1))
    assert states(conn) == {"JOB_FINISHED": 1}
    out = (task_dir(pg_project, task) / "task.out").read_text()
    assert sorted(line.split()[1] for line in out.splitlines()) == ["rank=0", "rank=1"], out
    assert out.count("size=2") == 2
    no_strays(dbname)
