"""The machine's own ceilings: how fast can it spawn a process, and claim rows?

Every other figure is reported as a ratio to these, measured in the same run, because
this machine is shared and its absolute speed drifts from hour to hour.
"""

from __future__ import annotations

import subprocess
import threading
import time
from typing import Any

TRUE = "/bin/true"


def spawn_sequential(n: int) -> float:
    """Processes per second, one at a time (start, wait, next)."""
    t0 = time.perf_counter()
    for _ in range(n):
        subprocess.Popen([TRUE]).wait()
    return n / (time.perf_counter() - t0)


def spawn_concurrent(n: int, in_flight: int = 8) -> float:
    """Processes per second with up to ``in_flight`` running at once (how a node packs)."""
    t0 = time.perf_counter()
    running: list[subprocess.Popen[bytes]] = []
    started = 0
    while started < n or running:
        while started < n and len(running) < in_flight:
            running.append(subprocess.Popen([TRUE]))
            started += 1
        still = []
        for proc in running:
            if proc.poll() is None:
                still.append(proc)
        if len(still) == len(running):
            time.sleep(0.0002)
        running = still
    return n / (time.perf_counter() - t0)


def claim_rate(dsn: dict[str, Any], batch: int, claimers: int, total: int) -> dict[str, float]:
    """Rows/s claimed by ``claimers`` connections with bare SKIP LOCKED batches, and a
    duplicate check (every row claimed exactly once)."""
    import psycopg

    from .projects import bench_query

    with psycopg.connect(**dsn, autocommit=True) as conn:
        conn.execute(bench_query("ceiling_reset"))
        conn.execute(bench_query("ceiling_fill"), {"n": total})
    claimed: list[list[int]] = [[] for _ in range(claimers)]

    def worker(slot: int) -> None:
        with psycopg.connect(**dsn, autocommit=True) as conn:
            while True:
                rows = conn.execute(bench_query("ceiling_claim"), {"k": batch, "who": slot}
                                    ).fetchall()
                if not rows:
                    return
                claimed[slot].extend(r[0] for r in rows)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(claimers)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    ids = [i for chunk in claimed for i in chunk]
    return {"rows_per_s": len(ids) / elapsed, "claimed": float(len(ids)),
            "duplicates": float(len(ids) - len(set(ids)))}


_SPAWNER = """
import subprocess, sys, time
end = time.perf_counter() + float(sys.argv[1])
n = 0
while time.perf_counter() < end:
    subprocess.Popen(["/bin/true"]).wait()
    n += 1
print(n)
"""


def spawn_parallel(procs: int, seconds: float = 2.0) -> float:
    """Processes per second from ``procs`` Python processes spawning side by side (what
    ``procs`` launcher ranks could do with nothing else to do): each counts its spawns
    over the same ``seconds``; the sum over ``seconds`` is the rate."""
    import sys

    children = [subprocess.Popen([sys.executable, "-c", _SPAWNER, str(seconds)],
                                 stdout=subprocess.PIPE, text=True) for _ in range(procs)]
    total = sum(int(c.communicate()[0].strip() or 0) for c in children)
    return total / seconds
