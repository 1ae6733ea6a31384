"""The server CPU of one launcher's claim + report per task, robust to other load.

``python -m benchmarks.dbcpu [--documents]``: in a throwaway project, ``reps`` flushes of
the launcher's own calls as ``dbparts.py`` makes them (a claim of k rows, then one report
of each task's start and plain success), timed by the CPU (user + system) of the store's
server backend from ``/proc/<pid>/stat``, which other work on the host inflates far less
than wall time. ``--documents`` gives every task a 3-key params, a 2-variable env and 2
tags (the benchmarks' tasks otherwise have empty documents). Prints one JSON line of
medians, µs per task. The server must run on this host (it does: a project's own).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from balsam_mpi.launcher.store import Store
from balsam_mpi.launcher.storeport import ClaimFilter
from balsam_mpi.protocol import EndKind, Finished, Started

from . import launcher_common as lc
from .projects import bench_project

DOCUMENTS = ("""UPDATE tasks SET params = '{"n": 12, "input": "data/run_0042.h5", """
             """"opts": {"mode": "fast", "tol": 1e-6}}', """
             """env = '{"OMP_NUM_THREADS": "4", "RUN_MODE": "prod"}', """
             """tags = '{"experiment": "xpcs", "site": "theta"}'""")


def _cpu_s(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(documents: bool, k: int = 4096, reps: int = 6) -> dict[str, float]:
    claim_us: list[float] = []
    report_us: list[float] = []
    with bench_project() as proj, lc.connect(proj) as conn:
        lc.reset(conn)
        lc.add_tasks(conn, k * reps, "/bin/true", 64)
        if documents:
            conn.execute(DOCUMENTS)
            conn.execute("VACUUM ANALYZE tasks")
        with Store.connect(proj) as store:
            row = store.conn.execute("SELECT pg_backend_pid()").fetchone()
            assert row is not None
            pid = int(row[0])
            lease = store.open_job(job_id=None, scheduler="local", scheduler_job_id=None,
                                   host="dbcpu", nodes=1, ranks=1, filters=ClaimFilter(),
                                   wall_time_min=None, lease_sec=600)
            for _ in range(reps):
                c0 = _cpu_s(pid)
                rows = store.claim(lease, limit=k, capacity=float(k), max_need=1.0,
                                   filters=ClaimFilter())
                c1 = _cpu_s(pid)
                now = time.time()
                started = [Started(r.id, lease.epoch, now) for r in rows]
                ended = [Finished(r.id, lease.epoch, int(EndKind.DONE), 0, now, now + 1e-3)
                         for r in rows]
                c2 = _cpu_s(pid)
                store.report(lease, started, ended)
                c3 = _cpu_s(pid)
                if len(rows) != k:
                    raise RuntimeError(f"claimed {len(rows)} of {k} rows")
                claim_us.append((c1 - c0) / k * 1e6)
                report_us.append((c3 - c2) / k * 1e6)
            store.close_job(lease, "FINISHED", "dbcpu")
    return {"claim_us": statistics.median(claim_us),
            "report_us": statistics.median(report_us),
            "total_us": statistics.median(a + b for a, b in zip(claim_us, report_us,
                                                                strict=True))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", action="store_true",
                        help="tasks with a small params, env and tags")
    args = parser.parse_args()
    print(json.dumps({"documents": args.documents, **measure(args.documents)}))


if __name__ == "__main__":
    main()
