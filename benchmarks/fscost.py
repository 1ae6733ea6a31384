"""What a task's directory and two output files cost the file system here, in CPU time.

``task_dir_cost(where)`` makes ``n`` directories in a fresh shard directory under
``where`` and two ``O_EXCL`` files in each, as a node makes a task's, and returns the CPU
µs per task of each step: on this machine's ext4 the same calls took 35 µs in one place
and 2 ms in another in the same minute, and 40 µs in the second place later
(benchmarks/README.md, *Task directories*), so a run's node-side figures are read
beside this one, measured in the same run.

``python -m benchmarks.fscost DIR...`` prints it for each directory.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from typing import Any

_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def task_dir_cost(where: str, n: int = 300) -> dict[str, Any]:
    """CPU µs per task: ``mkdir``, the two creates, and both (medians are the caller's)."""
    base = tempfile.mkdtemp(prefix="fscost-", dir=where)
    try:
        shard = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
        try:
            t0 = time.process_time()
            for i in range(n):
                os.mkdir(f"t_{i}", 0o2770, dir_fd=shard)
            t1 = time.process_time()
            for i in range(n):
                d = os.open(f"t_{i}", os.O_RDONLY | os.O_DIRECTORY, dir_fd=shard)
                for name in ("task.out", "task.err"):
                    os.close(os.open(name, _FLAGS, 0o660, dir_fd=d))
                os.close(d)
            t2 = time.process_time()
        finally:
            os.close(shard)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    mkdir_us, files_us = (t1 - t0) / n * 1e6, (t2 - t1) / n * 1e6
    return {"mkdir_us": mkdir_us, "two_files_us": files_us, "per_task_us": mkdir_us + files_us}


if __name__ == "__main__":
    for d in sys.argv[1:] or ["/tmp"]:
        c = task_dir_cost(d)
        print(f"{d}: mkdir {c['mkdir_us']:.0f} µs, two files {c['two_files_us']:.0f} µs, "
              f"a task {c['per_task_us']:.0f} µs of CPU")
