"""What waking another process costs here: a byte-sized message sent back and forth
through a socket pair between two processes, as a node and its warm interpreter exchange
a call and its answer (and a leader and its Postgres backend a statement).

Three placements, each a median of ``rounds`` blocks of ``n`` round trips:

* ``apart``: the two processes free to run on any CPU, the others idle — a CPU that
  idles has halted, and on a virtual machine waking it costs the host;
* ``apart_busy``: the same while every CPU runs a spinning process at the lowest
  priority (a loaded node: the woken process preempts it, no CPU has halted);
* ``together``: both pinned to one CPU (a context switch, no wake-up across CPUs).

It explains the per-call figures of the `python` and `noop` scenarios on this machine;
it is not a ceiling of the launcher's own.

``python -m benchmarks.wakeups`` prints the three.
"""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

_SPIN = "while True: pass"


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        f = fh.read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def _block(n: int, cpu: int | None) -> tuple[float, float]:
    """µs per round trip, and the echoing process's CPU µs per round trip."""
    a, b = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the echo: as an interpreter answering calls
        try:
            a.close()
            if cpu is not None:
                os.sched_setaffinity(0, {cpu})
            while data := b.recv(4096):
                b.sendall(data)
        finally:
            os._exit(0)
    b.close()
    try:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        msg = b"x" * 200
        for _ in range(200):  # both sides running before the clock starts
            a.sendall(msg)
            a.recv(4096)
        c0, t0 = _cpu_s(pid), time.perf_counter()
        for _ in range(n):
            a.sendall(msg)
            a.recv(4096)
        t1, c1 = time.perf_counter(), _cpu_s(pid)
    finally:
        a.close()
        os.waitpid(pid, 0)
        if cpu is not None:
            os.sched_setaffinity(0, range(os.cpu_count() or 1))
    return (t1 - t0) / n * 1e6, (c1 - c0) / n * 1e6


@contextlib.contextmanager
def _spinners() -> Iterator[None]:
    procs = [subprocess.Popen(["nice", "-n", "19", sys.executable, "-c", _SPIN])
             for _ in range(os.cpu_count() or 1)]
    try:
        time.sleep(0.3)
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def wakeup_costs(n: int = 5000, rounds: int = 3) -> dict[str, Any]:
    def med(cpu: int | None) -> dict[str, float]:
        runs = [_block(n, cpu) for _ in range(rounds)]
        return {"round_trip_us": statistics.median(r[0] for r in runs),
                "echo_cpu_us": statistics.median(r[1] for r in runs)}

    out = {"apart": med(None)}
    with _spinners():
        out["apart_busy"] = med(None)
    out["together"] = med(0)
    return {"n": n, "rounds": rounds, **out}


if __name__ == "__main__":
    for k, v in wakeup_costs().items():
        print(k, v)
