"""Helpers shared by the launcher benchmarks: a throwaway project, tasks, a launcher run.

Each script is standalone (``python benchmarks/launcher_throughput.py --help``); a project
is made under a fresh 0755 directory in /tmp (the server account must reach it when run
as root) and its server stopped at the end, unless ``--project`` names an existing one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from balsam_mpi import sql
from balsam_mpi.base.project import Project
from balsam_mpi.demo.run import find_mpiexec


@contextmanager
def project(path: str | None) -> Iterator[Project]:
    from balsam_mpi.dbctl import lifecycle

    if path:
        yield Project(path)
        return
    parent = Path(tempfile.mkdtemp(prefix="balsam-bench-", dir="/tmp"))
    os.chmod(parent, 0o755)
    lifecycle.init_project(parent / "project")
    proj = Project(parent / "project")
    try:
        yield proj
    finally:
        lifecycle.stop_server(proj, fast=True)


def connect(proj: Project) -> Any:
    """The superuser (benchmarks reset tables between rounds)."""
    from balsam_mpi.dbctl import lifecycle

    return lifecycle.admin_connect(proj, proj.read_server_info())


def reset(conn: Any) -> None:
    """Forget earlier rounds: tasks, events and batch jobs (benchmark projects only).
    Task ids go on from where they were: a task's directory is named after its id, and
    ids started again would have every round after the first find its tasks' directories
    and output files already made — a start path no real task takes, and on this
    machine's ext4 many times cheaper than making them (docs/launcher.md, *Task
    processes*)."""
    conn.execute("TRUNCATE task_events, task_deps, tasks, batch_jobs CASCADE")


def add_tasks(conn: Any, n: int, command: str, packing: int, workflow: str = "bench") -> None:
    """n READY tasks of an app running ``command`` (benchmarks insert rows directly: the
    client's validation is not what is being measured)."""
    app = "".join(c if c.isalnum() else "_" for c in command).strip("_") or "app"
    conn.execute("INSERT INTO apps (name, command) VALUES (%(a)s, %(c)s) "
                 "ON CONFLICT (name) DO UPDATE SET command = EXCLUDED.command",
                 {"a": app, "c": command})
    conn.execute("INSERT INTO tasks (workflow, name, app_id, state, node_packing_count) "
                 "SELECT %(w)s, 't', (SELECT id FROM apps WHERE name = %(a)s), 'READY', %(p)s "
                 "FROM generate_series(1, %(n)s)",
                 {"w": workflow, "a": app, "p": packing, "n": n})
    conn.execute("VACUUM ANALYZE tasks")


def launch(proj: Project, ranks: int, *args: str, timeout: float = 600) -> float:
    """Run the launcher to the end; returns its wall time (s)."""
    env = dict(os.environ, BALSAM_DB_PATH=str(proj.root))
    for path in proj.log_dir.glob("launcher_*.log"):
        path.unlink()
    env.pop("BALSAM_DB_NAME", None)
    argv = [find_mpiexec(), "-n", str(ranks), sys.executable, "-P", "-m", "balsam_mpi",
            "--idle-timeout", "0", *args]
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, check=True, timeout=timeout)
    return time.perf_counter() - t0


def summary(conn: Any) -> dict[str, float]:
    finished, first, last, busy = conn.execute(sql.query("launcher_run_summary"),
                                               {"job": None}).fetchone()
    return {"finished": float(finished), "span_s": float(last - first),
            "busy_node_s": float(busy)}


def spawn_rate(seconds: float = 3.0) -> float:
    """The bare ceiling: one Python process running /bin/true back to back."""
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        subprocess.Popen(["/bin/true"]).wait()
        n += 1
    return n / (time.perf_counter() - t0)
