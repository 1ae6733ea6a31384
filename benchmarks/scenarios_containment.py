"""Scenario `containment`: what the task trampoline (safe directory walk, subreaper, cgroup,
output cap) costs per spawn, against the runner of a baseline revision, in the same run.

Each measurement is a child Python process that imports one tree's ``balsam_mpi``
(``PYTHONPATH``) and alternates blocks of bare ``Popen(["/bin/true"]).wait()`` with blocks
of ``runner.start`` → pidfd → ``reap`` → ``close`` of ``/bin/true`` tasks, sequentially and
with 8 in flight; it reports both rates, so every figure is a ratio to the bare spawn of
the same process, and the baseline and this tree are measured alternately.

The output cap's cost: one task writing 1 GiB to ``task.out`` with no cap and with a
64 MiB cap (ext4 here: ``FALLOC_FL_COLLAPSE_RANGE``; and on ``/dev/shm``, tmpfs, where
the tail is copied down), wall time per task; and the CPU an idle capped trampoline
spends on its once-a-second checks.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path
from typing import Any

from .harness import write_result

REPO = Path(__file__).resolve().parents[1]
BASELINE = os.environ.get("BALSAM_BENCH_BASELINE", "2c6ed0d")  # main before containment

CHILD = r"""
import json, os, select, subprocess, sys, time
import balsam_mpi
try:  # the package's layout now, and the baseline revision's (flat, TaskSpec)
    from balsam_mpi.node import runner
    from balsam_mpi.protocol import RunOrder
except ImportError:
    from balsam_mpi import runner
    from balsam_mpi.protocol import TaskSpec as RunOrder
root, n, block, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
if hasattr(runner, "configure"):
    runner.configure(cgroups=mode != "no-cgroup")
env = {"PATH": "/usr/bin:/bin"}
counter = [0]

def order():
    counter[0] += 1
    i = counter[0]
    return RunOrder(i, 1, ("/bin/true",), f"{root}/data/wf/{i // 1000}/t_{i}")

def finish(p):
    while runner.reap(p) is None:
        select.select([p.pidfd], [], [], 1.0)
    runner.close(p)

def tasks_seq(k):
    t0 = time.perf_counter()
    for _ in range(k):
        finish(runner.start(order(), env))
    return k / (time.perf_counter() - t0)

def tasks_conc(k, width=8):
    t0 = time.perf_counter()
    running, started = [], 0
    while started < k or running:
        while started < k and len(running) < width:
            running.append(runner.start(order(), env)); started += 1
        select.select([p.pidfd for p in running], [], [], 1.0)
        still = []
        for p in running:
            if runner.reap(p) is None:
                still.append(p)
            else:
                runner.close(p)
        running = still
    return k / (time.perf_counter() - t0)

def bare_seq(k):
    t0 = time.perf_counter()
    for _ in range(k):
        subprocess.Popen(["/bin/true"]).wait()
    return k / (time.perf_counter() - t0)

def bare_conc(k, width=8):
    t0 = time.perf_counter()
    running, started = [], 0
    while started < k or running:
        while started < k and len(running) < width:
            running.append(subprocess.Popen(["/bin/true"])); started += 1
        still = [p for p in running if p.poll() is None]
        if len(still) == len(running):
            time.sleep(0.0002)
        running = still
    return k / (time.perf_counter() - t0)

def cpu(fn, k):  # fn's rate, and the CPU per spawn of this process and its children
    c0 = os.times()
    rate = fn(k)
    c1 = os.times()
    return rate, (c1.user + c1.system + c1.children_user + c1.children_system
                  - c0.user - c0.system - c0.children_user - c0.children_system) / k * 1e6

tasks_seq(20)  # build the trampoline, warm caches
out = {"file": balsam_mpi.__file__}
for key in ("bare_seq", "tasks_seq", "bare_conc", "tasks_conc"):
    out[key], out[key + "_cpu_us"] = [], []
for _ in range(n):
    for key, fn in (("bare_seq", bare_seq), ("tasks_seq", tasks_seq),
                    ("bare_conc", bare_conc), ("tasks_conc", tasks_conc)):
        rate, us = cpu(fn, block)
        out[key].append(rate)
        out[key + "_cpu_us"].append(us)
print(json.dumps(out))
"""


def _baseline_tree(rev: str, into: Path) -> Path:
    """The package of ``rev`` (git archive), for PYTHONPATH."""
    raw = subprocess.run(["git", "-C", str(REPO), "archive", rev, "balsam_mpi"], check=True,
                         capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(raw)) as tar:
        tar.extractall(into, filter="data")
    return into


def _measure(tree: Path, mode: str, blocks: int, block: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bcont-", dir="/tmp"))
    (work / "data").mkdir()
    try:
        env = dict(os.environ, PYTHONPATH=str(tree))
        # cwd: not the repository, whose balsam_mpi would come first on sys.path.
        done = subprocess.run([sys.executable, "-c", CHILD, str(work), str(blocks), str(block),
                               mode], env=env, capture_output=True, text=True, timeout=1800,
                              check=False, cwd=work)
        if done.returncode != 0:
            raise RuntimeError(f"measuring {tree} failed:\n{done.stderr}")
        res: dict[str, Any] = json.loads(done.stdout)
        if not res["file"].startswith(str(tree)):
            raise RuntimeError(f"measured {res['file']}, not the tree {tree}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratio_seq = [t / b for t, b in zip(res["tasks_seq"], res["bare_seq"], strict=True)]
    ratio_conc = [t / b for t, b in zip(res["tasks_conc"], res["bare_conc"], strict=True)]
    res["ratio_seq"], res["ratio_conc"] = ratio_seq, ratio_conc
    return res


def _cap_cost(quick: bool) -> dict[str, Any]:
    """Seconds for one task writing 1 GiB (256 MiB quick), no cap vs a 64 MiB cap."""
    from balsam_mpi.node import runner
    from balsam_mpi.protocol import RunOrder

    size_mib = 256 if quick else 1024
    out: dict[str, Any] = {"size_mib": size_mib}
    env = {"PATH": "/usr/bin:/bin"}
    for fs, base in (("ext4 (/tmp)", "/tmp"), ("tmpfs (/dev/shm)", "/dev/shm")):
        for cap in (0.0, 64.0):
            times = []
            for i in range(3):
                work = Path(tempfile.mkdtemp(prefix="bcap-", dir=base))
                (work / "data").mkdir()
                try:
                    runner.configure(output_cap_mb=cap)
                    order = RunOrder(i + 1, 1, ("head", "-c", str(size_mib << 20), "/dev/zero"),
                                    f"{work}/data/wf/0/t_{i}")
                    t0 = time.perf_counter()
                    proc = runner.start(order, env)
                    while runner.reap(proc) is None:
                        time.sleep(0.002)
                    times.append(time.perf_counter() - t0)
                    runner.close(proc)
                    kept = os.path.getsize(f"{work}/data/wf/0/t_{i}/task.out")
                finally:
                    shutil.rmtree(work, ignore_errors=True)
            out[f"{fs}, cap {cap:g} MiB"] = {"seconds": statistics.median(times),
                                              "runs": times, "kept_bytes": kept}
    runner.configure()
    # An idle capped task: the trampoline's CPU for its checks over 10 s.
    work = Path(tempfile.mkdtemp(prefix="bcap-", dir="/tmp"))
    (work / "data").mkdir()
    try:
        proc = runner.start(RunOrder(99, 1, ("sleep", "10"), f"{work}/data/wf/0/t_99"), env)
        time.sleep(9.5)
        with open(f"/proc/{proc.pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])
        out["idle trampoline cpu over 9.5 s"] = ticks / os.sysconf("SC_CLK_TCK")
        while runner.reap(proc) is None:
            time.sleep(0.05)
        runner.close(proc)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def run(quick: bool, out: Path) -> dict[str, Any]:
    blocks, block = (3, 200) if quick else (5, 400)
    rounds = 2 if quick else 3
    with tempfile.TemporaryDirectory(prefix="bbase-") as tmp:
        base_tree = _baseline_tree(BASELINE, Path(tmp))
        series: dict[str, list[dict[str, Any]]] = {"baseline": [], "this": [],
                                                   "this, no cgroup": []}
        for _ in range(rounds):  # alternate, so drift in the machine's speed hits all
            series["baseline"].append(_measure(base_tree, "default", blocks, block))
            series["this"].append(_measure(REPO, "default", blocks, block))
            series["this, no cgroup"].append(_measure(REPO, "no-cgroup", blocks, block))
    summary: dict[str, Any] = {}
    results: dict[str, Any] = {"spawn": {}}
    for name, runs in series.items():
        seq = statistics.median(r for run in runs for r in run["ratio_seq"])
        conc = statistics.median(r for run in runs for r in run["ratio_conc"])
        bare = statistics.median(b for run in runs for b in run["bare_seq"])
        tasks = statistics.median(t for run in runs for t in run["tasks_seq"])
        cpu_task = statistics.median(c for run in runs for c in run["tasks_seq_cpu_us"])
        cpu_bare = statistics.median(c for run in runs for c in run["bare_seq_cpu_us"])
        results["spawn"][name] = {"ratio_seq": seq, "ratio_conc": conc, "bare_seq": bare,
                                  "tasks_seq": tasks, "cpu_task_us": cpu_task,
                                  "cpu_bare_us": cpu_bare, "runs": runs}
        summary[f"{name}: tasks/bare spawn"] = (
            f"sequential {seq:.2f} ({tasks:.0f}/s vs {bare:.0f}/s), 8 in flight {conc:.2f}; "
            f"CPU per task {cpu_task:.0f} µs (bare spawn {cpu_bare:.0f} µs)")
    base = results["spawn"]["baseline"]
    for name in ("this", "this, no cgroup"):
        mine = results["spawn"][name]
        summary[f"{name} / baseline"] = (
            f"sequential {mine['ratio_seq'] / base['ratio_seq']:.2f}, 8 in flight "
            f"{mine['ratio_conc'] / base['ratio_conc']:.2f}, CPU per task "
            f"{mine['cpu_task_us'] / base['cpu_task_us']:.2f}")
    results["output_cap"] = _cap_cost(quick)
    for key, value in results["output_cap"].items():
        if isinstance(value, dict):
            summary[f"1 task writing {results['output_cap']['size_mib']} MiB, {key}"] = (
                f"{value['seconds']:.2f} s, kept {value['kept_bytes'] >> 20} MiB")
    summary["idle capped trampoline, CPU in 9.5 s"] = (
        f"{results['output_cap']['idle trampoline cpu over 9.5 s']:.3f} s")
    path = write_result(out, "containment", {"baseline": BASELINE, "blocks": blocks,
                                             "block": block, "rounds": rounds}, results)
    summary["written"] = str(path)
    return summary
