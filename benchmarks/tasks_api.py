"""Speed of the tasks API and CLI (issues 4 and 17): a standalone script, not a test.

    .venv/bin/python -m benchmarks.tasks_api [--tasks 100000] [--total 1000000]
    .venv/bin/python -m benchmarks.tasks_api --bulk-only [--tasks 100000] [--repeat 3]
    .venv/bin/python -m benchmarks run bulk-add [--quick]

Creates a throwaway project, then measures: adding N tasks through Client.add_tasks
(tasks/s) beside bare binary COPY of the same rows in the same run (the ratio is the
figure; ``bulk_ratio``), a bulk kill and retry of a workflow, and the wall time of
`balsam-mpi ls` and `balsam-mpi task ls --limit 20` (start-up included) once the database
holds --total tasks. Targets: bulk add ≥ 0.6 × bare COPY (issue 17); `ls` over 1M ≤ 1 s;
`task ls --limit 20` ≤ 0.5 s (issue 4).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from balsam_mpi.base.project import Project
from balsam_mpi.sql import parse_queries
from balsam_mpi.tasks import writer
from balsam_mpi.tasks.client import Client

from .harness import cpu_seconds, write_result
from .projects import admin_dsn, bench_project

CLI = str(Path(sys.executable).with_name("balsam-mpi"))
_SQL = Path(__file__).with_suffix(".sql")
_QUERIES = parse_queries(_SQL.read_text(), _SQL.name)


def _tasks(n: int, workflow: str) -> list[dict[str, object]]:
    return [{"app": "hello", "workflow": workflow, "name": f"t{i}", "params": {"who": str(i)},
             "node_packing_count": 16, "wall_time_min": 1} for i in range(n)]


def _cpu_seconds(pid: int) -> float:
    """user + system CPU time of a local process (the server backend), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wall(argv: list[str], env: dict[str, str], repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - t0)
    return best


def bulk_ratio(project: Project, n: int, repeat: int) -> dict[str, Any]:
    """``repeat`` rounds of: N tasks through Client.add_tasks (validation, planning, the
    staged COPY and the checked move, history events) beside a bare binary COPY of the same
    rows, by the superuser, into a table like tasks (columns, defaults, CHECK constraints,
    indexes; no trigger, no row-level security), and into one with no constraint or index.
    Each round's ratio compares the API with the ceiling measured right beside it; the
    server backend's CPU seconds are kept too (on a shared machine the wall time mostly
    measures the neighbours)."""
    from psycopg import sql as pgsql

    rounds: list[dict[str, float]] = []
    with Client(project) as c, psycopg.connect(**admin_dsn(project), autocommit=True) as su:
        if "hello" not in {a["name"] for a in c.apps()}:
            c.add_app("hello", "echo hello {who}")
        su.execute(_QUERIES["tasks_api_bare_table"])
        su.execute(_QUERIES["tasks_api_bare_plain"])
        apps = writer.app_infos(c._conn)
        backend, su_backend = c._conn.info.backend_pid, su.info.backend_pid
        c.add_tasks(_tasks(10, "warm-up"))  # the session's staging table, the plans
        for r in range(repeat):
            batch = _tasks(n, f"bulk{r}")
            # The bare side gets the rows the API would stage, already checked and built.
            checked = [writer.validate.check_task(t, apps) for t in batch]
            columns = writer.stage_columns(checked)
            rows = writer.stage_rows(checked, range(1, n + 1), columns)
            types = [writer.STAGE_TYPES[k] for k in columns]
            sample: dict[str, float] = {}
            for table in ("bulk_bare", "bulk_plain"):
                su.execute(_QUERIES["tasks_api_bare_empty"])
                statement = pgsql.SQL(_QUERIES["tasks_api_bare_copy"]).format(
                    table=pgsql.Identifier(table),
                    columns=pgsql.SQL(", ").join(map(pgsql.Identifier, columns)))
                server0, t0 = cpu_seconds(su_backend), time.perf_counter()
                with su.transaction(), su.cursor() as cur, cur.copy(statement) as copy:
                    copy.set_types(types)
                    for row in rows:
                        copy.write_row(row)
                sample[f"{table}_rows_per_s"] = n / (time.perf_counter() - t0)
                sample[f"{table}_server_us_per_row"] = (
                    (cpu_seconds(su_backend) - server0) / n * 1e6)
            server0, t0 = cpu_seconds(backend), time.perf_counter()
            c.add_tasks(batch)
            sample["api_tasks_per_s"] = n / (time.perf_counter() - t0)
            sample["api_server_us_per_task"] = (cpu_seconds(backend) - server0) / n * 1e6
            sample["ratio"] = sample["api_tasks_per_s"] / sample["bulk_bare_rows_per_s"]
            sample["ratio_to_plain"] = sample["api_tasks_per_s"] / sample["bulk_plain_rows_per_s"]
            rounds.append(sample)
            print(f"bulk add round {r + 1}: API {sample['api_tasks_per_s']:,.0f} tasks/s, "
                  f"bare COPY {sample['bulk_bare_rows_per_s']:,.0f} rows/s (no index: "
                  f"{sample['bulk_plain_rows_per_s']:,.0f}) -> ratio {sample['ratio']:.2f}; "
                  f"server CPU per row: API {sample['api_server_us_per_task']:.1f} µs, "
                  f"bare {sample['bulk_bare_server_us_per_row']:.1f} µs", flush=True)
        su.execute(_QUERIES["tasks_api_bare_drop"])
    median = {k: statistics.median(s[k] for s in rounds) for k in rounds[0]}
    print(f"bulk add, medians of {repeat} rounds: API {median['api_tasks_per_s']:,.0f} "
          f"tasks/s, bare COPY {median['bulk_bare_rows_per_s']:,.0f} rows/s (no index: "
          f"{median['bulk_plain_rows_per_s']:,.0f}); API / bare COPY in the same round: "
          f"{median['ratio']:.2f} (target >= 0.6; no index: {median['ratio_to_plain']:.2f}); "
          f"server CPU per row: API {median['api_server_us_per_task']:.1f} µs, bare "
          f"{median['bulk_bare_server_us_per_row']:.1f} µs")
    return {"median": median, "runs": rounds}


def run(quick: bool, out: Path) -> dict[str, Any]:
    """Scenario `bulk-add` of `python -m benchmarks`: ``bulk_ratio``, 3 rounds."""
    n = 50_000 if quick else 100_000
    with bench_project() as project:
        results = bulk_ratio(project, n, 3)
    path = write_result(out, "bulk-add", {"tasks": n, "rounds": 3}, results)
    m = results["median"]
    return {"API bulk add tasks/s": round(m["api_tasks_per_s"]),
            "bare COPY rows/s": round(m["bulk_bare_rows_per_s"]),
            "API / bare COPY, same round (target >= 0.6)": round(m["ratio"], 2),
            "server CPU µs per row, API / bare": (round(m["api_server_us_per_task"], 1),
                                                  round(m["bulk_bare_server_us_per_row"], 1)),
            "written": str(path)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=100_000)
    ap.add_argument("--total", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3,
                    help="rounds of the bulk add beside bare COPY")
    ap.add_argument("--bulk-only", action="store_true",
                    help="only the bulk add beside bare COPY")
    ap.add_argument("--chain", type=int, default=10_000,
                    help="depth of the chain whose root is killed and retried")
    opts = ap.parse_args()
    with bench_project() as project:
        bulk_ratio(project, opts.tasks, opts.repeat)
        if opts.bulk_only:
            return
        env = {**os.environ, "BALSAM_DB_PATH": str(project.root)}
        with Client(project) as c:
            batch = _tasks(opts.tasks, "bench")
            backend = c._conn.info.backend_pid
            cpu0, server0 = time.process_time(), _cpu_seconds(backend)
            t0 = time.perf_counter()
            ids = c.add_tasks(batch)
            dt = time.perf_counter() - t0
            cpu, server = time.process_time() - cpu0, _cpu_seconds(backend) - server0
            print(f"add_tasks: {len(ids)} tasks in {dt:.2f} s = {len(ids) / dt:,.0f} tasks/s")
            # On a shared machine the wall time mostly measures the neighbours; the CPU
            # seconds each side used do not. Client and server overlap (pipeline), so an
            # idle machine with a core for each runs at about n / max(client, server).
            print(f"  CPU: client {cpu:.2f} s, server backend {server:.2f} s -> about "
                  f"{len(ids) / max(cpu, server, 1e-9):,.0f} tasks/s with a free core each, "
                  f"{len(ids) / (cpu + server):,.0f} tasks/s on one core")
            dag = [{"app": "hello", "workflow": "dag", "params": {"who": "x"},
                    "parents": [ids[i]]} for i in range(0, 20_000)]
            t0 = time.perf_counter()
            c.add_tasks(dag)
            print(f"add_tasks with one parent each: 20000 in {time.perf_counter() - t0:.2f} s")
            server0, t0 = _cpu_seconds(backend), time.perf_counter()
            killed = c.kill(workflow="bench")
            print(f"kill --workflow: {len(killed)} killed (+20000 children failed) in "
                  f"{time.perf_counter() - t0:.2f} s (server CPU "
                  f"{_cpu_seconds(backend) - server0:.2f} s)")
            server0, t0 = _cpu_seconds(backend), time.perf_counter()
            back = c.retry(workflow="bench")
            print(f"retry --workflow: {len(back)} reinstated in {time.perf_counter() - t0:.2f} s"
                  f" (server CPU {_cpu_seconds(backend) - server0:.2f} s)")
            _chain(c, opts.chain)
            done = len(ids) + len(dag) + opts.chain + opts.repeat * opts.tasks + 10
            w = 0
            while done < opts.total:
                n = min(opts.tasks, opts.total - done)
                c.add_tasks(_tasks(n, f"wf{w % 20}"))
                done += n
                w += 1
        print(f"database holds {done:,} tasks")
        _cli_times(env, project, "right after the bulk add")
        # What autovacuum does within a minute of a bulk load (and only the table's owner
        # may do by hand): statistics, and the visibility map for index-only scans.
        with psycopg.connect(**admin_dsn(project), autocommit=True) as admin:
            admin.execute(_QUERIES["tasks_api_vacuum"])
        _cli_times(env, project, "after VACUUM ANALYZE")


def _chain(c: Client, depth: int) -> None:
    """Kill and retry the root of a chain ``depth`` deep (issue 15: 29-44 s and 15-17 s
    before propagation was set-based)."""
    if depth < 2:
        return
    chain = [{"app": "hello", "workflow": "chain", "params": {"who": "x"}, "key": "0"}]
    chain += [{"app": "hello", "workflow": "chain", "params": {"who": "x"}, "key": str(i),
               "parents": [str(i - 1)]} for i in range(1, depth)]
    t0 = time.perf_counter()
    ids = c.add_tasks(chain)
    print(f"add_tasks: a chain {depth} deep in {time.perf_counter() - t0:.2f} s")
    backend = c._conn.info.backend_pid
    # The slow case: statistics of the filled tables (autovacuum gets there within a
    # minute of a bulk add; done here at once) and a one-row kill first in the session.
    with psycopg.connect(**admin_dsn(c.project), autocommit=True) as admin:
        admin.execute(_QUERIES["tasks_api_analyze"])
    c.kill(c.add_tasks([{"app": "hello", "workflow": "lone", "params": {"who": "x"}}]))
    server0, t0 = _cpu_seconds(backend), time.perf_counter()
    killed = c.kill(ids[0])
    dt = time.perf_counter() - t0
    failed = c.counts().get("chain", {}).get("FAILED", 0)
    print(f"kill of the chain's root: {len(killed)} killed, {failed} descendants failed, "
          f"in {dt:.2f} s (server CPU {_cpu_seconds(backend) - server0:.2f} s)")
    server0, t0 = _cpu_seconds(backend), time.perf_counter()
    back = c.retry(ids[0])
    print(f"retry of the chain's root: {len(back)} reinstated in "
          f"{time.perf_counter() - t0:.2f} s (server CPU {_cpu_seconds(backend) - server0:.2f} s)")


def _cli_times(env: dict[str, str], project: Project, when: str) -> None:
    print(f"-- {when}")
    # The same work in-process (connection open): what the database itself costs,
    # apart from Python start-up and the machine's other load.
    with Client(project) as c:
        for label, work in (
                ("counts() [ls]", c.counts),
                ("tasks(limit=21) [task ls --limit 20]", lambda: list(c.tasks(limit=21))),
                ("tasks(workflow='wf3', state='READY', limit=21)",
                 lambda: list(c.tasks(workflow="wf3", state="READY", limit=21)))):
            best = float("inf")
            for _ in range(5):
                t0 = time.perf_counter()
                work()
                best = min(best, time.perf_counter() - t0)
            print(f"in-process {label}: {best * 1000:.1f} ms (best of 5)")
    t = _wall([CLI, "--help"], env)
    print(f"balsam-mpi --help (start-up alone): {t:.2f} s wall (best of 3)")
    t = _wall([CLI, "ls"], env)
    print(f"balsam-mpi ls: {t:.2f} s wall (best of 3)")
    t = _wall([CLI, "task", "ls", "--limit", "20"], env)
    print(f"balsam-mpi task ls --limit 20: {t:.2f} s wall (best of 3)")
    t = _wall([CLI, "task", "ls", "--workflow", "wf3", "--state", "READY", "--limit", "20",
               "--json"], env)
    print(f"balsam-mpi task ls --workflow wf3 --state READY --limit 20 --json: {t:.2f} s")


if __name__ == "__main__":
    main()
