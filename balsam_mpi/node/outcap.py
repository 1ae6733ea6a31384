"""The output cap for writers the trampoline does not watch: Python calls.

A process task's trampoline keeps its task.out and task.err under ``output_cap_mb``
(``node/trampoline.py``). A Python call writes to the same files from a warm interpreter,
which has no trampoline around it, so the node applies the same rule itself, through the
descriptors it opened for the call: once a second while the call runs and once at its
end. Past the cap a file keeps its first half, ending with a line saying the middle was
cut, and its last quarter — the same cut as the trampoline's, so a task's output reads
alike whichever way it ran.

The cut goes through a second, read-write open of the same file (``/proc/self/fd/N``: the
inode the node already holds, no path in the project directory is resolved again),
because the writer's descriptor appends. Where the file system can drop a range in
place (``FALLOC_FL_COLLAPSE_RANGE``: ext4, XFS) that is atomic against the writer's
appends; elsewhere the tail is copied down and the file truncated, and a few bytes the
call writes during the copy may be lost with the middle.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
from dataclasses import dataclass
from functools import cache
from typing import Any

log = logging.getLogger(__name__)

MARK = b"\n[balsam_mpi: this output passed its cap; the middle was cut here]\n"
FALLOC_FL_COLLAPSE_RANGE = 8
ALIGN = ~0xFFFF  # collapsed ranges start and end on file-system blocks: 64 KiB covers all
COPY_CHUNK = 1 << 20
CHECK_EVERY_S = 1.0


@cache
def _fallocate() -> Any:
    libc = ctypes.CDLL(None, use_errno=True)
    fn = libc.fallocate
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int
    return fn


def _collapse(fd: int, offset: int, length: int) -> bool:
    return bool(_fallocate()(fd, FALLOC_FL_COLLAPSE_RANGE, offset, length) == 0)


def _copy_down(fd: int, src: int, dst: int, end: int) -> None:
    while src < end:
        data = os.pread(fd, min(COPY_CHUNK, end - src), src)
        if not data or os.pwrite(fd, data, dst) != len(data):
            break
        src += len(data)
        dst += len(data)
    os.ftruncate(fd, dst)


@dataclass
class CappedFile:
    """One output file of a running call, by the node's own descriptor."""

    fd: int
    rw: int = -1
    marked: bool = False

    def check(self, cap: int) -> None:
        """Cut the file to its head and tail if it has passed ``cap`` bytes."""
        try:
            self._check(cap)
        except OSError as exc:  # a full or failing disk: the cap is best effort, as in C
            log.debug("the output cap could not be applied: %s", exc)

    def _check(self, cap: int) -> None:
        size = os.fstat(self.fd).st_size
        if not cap or size <= cap:
            return
        if self.rw < 0:
            self.rw = os.open(f"/proc/self/fd/{self.fd}", os.O_RDWR | os.O_CLOEXEC)
        head, keep = (cap // 2) & ALIGN, cap // 4
        if not self.marked:
            os.pwrite(self.rw, MARK, head - len(MARK))
            self.marked = True
        span = (size - keep - head) & ALIGN
        if span <= 0:
            return
        if not _collapse(self.rw, head, span):
            _copy_down(self.rw, size - keep, head, size)

    def close(self) -> None:
        if self.rw >= 0:
            with contextlib.suppress(OSError):
                os.close(self.rw)
            self.rw = -1


class CallOutputs:
    """The outputs of a node's running calls, checked at most once a second."""

    def __init__(self) -> None:
        self.files: dict[int, tuple[int, CappedFile, CappedFile]] = {}  # id -> cap, out, err
        self.next_check = 0.0

    def watch(self, task_id: int, out_fd: int, err_fd: int, cap: int) -> None:
        """Keep this call's outputs under ``cap`` bytes each (0: no cap) while it runs."""
        if cap:
            self.files[task_id] = (cap, CappedFile(out_fd), CappedFile(err_fd))

    def tick(self, now: float) -> None:
        """Check every running call's outputs, if a second has passed since the last."""
        if not self.files or now < self.next_check:
            return
        self.next_check = now + CHECK_EVERY_S
        for cap, out, err in self.files.values():
            out.check(cap)
            err.check(cap)

    def done(self, task_id: int) -> None:
        """The call ended: a last check (its final output is in), then forget it."""
        entry = self.files.pop(task_id, None)
        if entry is None:
            return
        cap, out, err = entry
        for f in (out, err):
            f.check(cap)
            f.close()

    def close(self) -> None:
        for _cap, out, err in self.files.values():
            out.close()
            err.close()
        self.files.clear()
