"""`balsam-mpi demo`: a fresh project, a small mixed workload, one launcher run, a summary.

It is the first command a new user runs, so it must work on a fresh clone, as root or
not: as root the server runs as an unprivileged account, which must be able to traverse
the project's parents, so the default project goes under a fresh 0755 directory in /tmp.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import sql
from ..base import db, safepath
from ..base.errors import UsageError
from ..base.project import Project
from ..batch import localstart

Echo = Callable[[str], None]


@dataclass
class Summary:
    counts: dict[str, dict[str, int]]
    finished: int
    span_s: float
    busy_node_s: float
    nodes: int
    job: tuple[Any, ...] | None

    @property
    def throughput(self) -> float:
        return self.finished / self.span_s if self.span_s > 0 else 0.0

    @property
    def utilization(self) -> float:
        return self.busy_node_s / (self.nodes * self.span_s) if self.span_s > 0 else 0.0


def find_mpiexec() -> str:
    """The mpiexec beside this Python (the venv's MPICH wheel) first, then PATH."""
    return localstart.find_mpiexec()


def make_project(path: str | None, echo: Echo) -> Project:
    from ..dbctl import lifecycle

    if path is None:
        parent = Path(tempfile.mkdtemp(prefix="balsam-demo-", dir="/tmp"))
        os.chmod(parent, 0o755)  # the server account must traverse it when we are root
        root = parent / "project"
    else:
        from ..base.values import path as checked_path

        checked_path("--project", path)  # "" is not "here": Path("") is the current directory
        root = Path(path).absolute()
        if root.exists() and not root.is_dir():
            raise UsageError(f"{root} exists and is not a directory: the demo makes a fresh "
                             "project; give a new path")
        if root.exists() and any(root.iterdir()):
            raise UsageError(f"{root} exists and is not empty: the demo makes a fresh "
                             "project; give a new path")
    echo(f"creating a project in {root} …")
    outcome = lifecycle.init_project(root)
    for line in outcome.notices:
        echo(f"  {line}")
    return Project(root)


def workload(n: int, ranks: int = 4) -> list[dict[str, Any]]:
    """n tasks: a three-task DAG (workflow `pipeline`); with three ranks or more (two
    worker nodes) a 2-node MPI hello (workflow `mpi`); a task that adds two children as
    it runs (workflow `dynamic`); the rest no-ops and short sleeps (workflow `ensemble`),
    packed several to a node."""
    tasks: list[dict[str, Any]] = [
        {"app": "say", "workflow": "pipeline", "name": "prepare", "key": "prepare",
         "params": {"text": "prepare"}},
        {"app": "say", "workflow": "pipeline", "name": "simulate", "key": "simulate",
         "params": {"text": "simulate"}, "parents": ["prepare"]},
        {"app": "say", "workflow": "pipeline", "name": "analyze",
         "params": {"text": "analyze"}, "parents": ["simulate"]},
    ]
    if ranks >= 3 and n >= len(tasks) + 2:
        tasks.append({"app": "hello_mpi", "workflow": "mpi", "name": "hello",
                      "num_nodes": 2, "ranks_per_node": 1, "wall_time_min": 2})
    if n >= len(tasks) + 1:
        tasks.append({"app": "spawner", "workflow": "dynamic", "name": "spawner"})
    rest = max(0, n - len(tasks))
    sleeps = rest // 4
    for i in range(rest - sleeps):
        tasks.append({"app": "noop", "workflow": "ensemble", "name": f"noop{i}",
                      "node_packing_count": 16})
    for i in range(sleeps):
        tasks.append({"app": "nap", "workflow": "ensemble", "name": f"nap{i}",
                      "params": {"seconds": 0.2 + 0.1 * (i % 4)},
                      "node_packing_count": 8, "wall_time_min": 1})
    return tasks


def populate(project: Project, n: int, ranks: int = 4) -> int:
    from ..tasks.client import Client

    here = shlex.quote(sys.executable)  # a command line, split like a shell's
    with Client(project) as client:
        client.add_app("hello_mpi", f"{here} -P -m balsam_mpi.demo.tasks hello",
                       description="an mpi4py hello, one line per rank")
        client.add_app("spawner", f"{here} -P -m balsam_mpi.demo.tasks spawn",
                       description="adds two children while it runs (task_api)")
        client.add_app("noop", "/bin/true", description="does nothing, fast")
        client.add_app("nap", "sleep {seconds}", description="sleeps a little")
        client.add_app("say", "echo {text}", description="writes one line")
        return len(client.add_tasks(workload(n, ranks)))


def run_launcher(project: Project, ranks: int, total: int, echo: Echo,
                 progress: Callable[[str], None]) -> int:
    env = dict(os.environ, BALSAM_DB_PATH=str(project.root))
    env.pop("BALSAM_DB_NAME", None)
    args = ["--idle-timeout", "1"]
    # The start that suits one shared host for this MPI (localstart: no TCP control port
    # with MPICH, oversubscription with Open MPI); it execs the starter in place.
    how = localstart.plan(ranks, args, env)
    echo(f"running {ranks} launcher ranks with {how.how}")
    argv = safepath.module_argv(sys.executable, "balsam_mpi.batch.localstart", "--quiet", "-n",
                                str(ranks), "--", *args)
    start = time.monotonic()
    proc = subprocess.Popen(argv, env=env)
    conn = db.connect(project, autocommit=True)
    try:
        while proc.poll() is None:
            time.sleep(0.5)
            by_state: dict[str, int] = {}
            for _wf, state, count in conn.execute(sql.query("launcher_state_counts")):
                by_state[state] = by_state.get(state, 0) + int(count)
            done = by_state.get("JOB_FINISHED", 0)
            progress(f"  {time.monotonic() - start:5.1f} s  finished {done}/{total}  "
                     f"running {by_state.get('RUNNING', 0)}  "
                     f"failed {by_state.get('FAILED', 0)}")
    finally:
        conn.close()
    progress("")
    return proc.wait()


def summarize(project: Project) -> Summary:
    with db.connect(project, autocommit=True) as conn:
        counts: dict[str, dict[str, int]] = {}
        for wf, state, count in conn.execute(sql.query("launcher_state_counts")):
            counts.setdefault(wf, {})[state] = int(count)
        job = conn.execute(sql.query("launcher_last_job")).fetchone()
        row = conn.execute(sql.query("launcher_run_summary"),
                           {"job": job[0] if job else None}).fetchone()
    assert row is not None
    finished, first, last, busy = row
    span = (last - first) if first is not None and last is not None else 0.0
    return Summary(counts, int(finished or 0), float(span), float(busy or 0.0),
                   int(job[2]) if job else 1, tuple(job) if job else None)


def unfinished(counts: dict[str, dict[str, int]]) -> dict[str, int]:
    """{state: tasks} of every task that did not finish; empty when the demo worked."""
    out: dict[str, int] = {}
    for states in counts.values():
        for state, n in states.items():
            if state != "JOB_FINISHED" and n:
                out[state] = out.get(state, 0) + n
    return out


def report(summary: Summary, echo: Echo) -> None:
    echo("tasks by state:")
    for wf, states in summary.counts.items():
        text = ", ".join(f"{s} {n}" for s, n in sorted(states.items()))
        echo(f"  {wf:<10} {text}")
    echo(f"throughput:  {summary.throughput:,.0f} tasks/s "
         f"({summary.finished} finished in {summary.span_s:.2f} s, first start to last end)")
    echo(f"utilization: {summary.utilization:.1%} of {summary.nodes} node(s) over that span "
         "(no-op tasks are mostly process start-up)")
    if summary.job is not None:
        echo(f"batch job {summary.job[0]}: {summary.job[1]} ({summary.job[3]})")


def next_steps(project: Project, echo: Echo, ranks: int = 4) -> None:
    """Commands to paste: the path quoted for the shell, the ranks the demo ran."""
    import shlex

    p = shlex.quote(str(project.root))
    steps = [
        (f"balsam-dbctl --project {p} start", "start its server again"),
        (f"export BALSAM_DB_PATH={p}", "(or: source balsamactivate PROJECT)"),
        ("balsam-mpi job ls", "the batch job you just ran"),
        ("balsam-mpi task out 1", "what task 1 printed (--err, --tail N, -f)"),
        ("balsam-mpi report utilization", "utilization over time"),
        (f"mpiexec -n {ranks} python -P -m balsam_mpi --workflow ensemble",
         "run the launcher again"),
        (f"balsam-dbctl --project {p} stop", "when you are done"),
    ]
    width = max(len(cmd) for cmd, _ in steps)
    echo("")
    echo(f"The project is in {project.root} (its server is stopped). Try next:")
    for cmd, why in steps:
        echo(f"  {cmd:<{width}}  # {why}")
