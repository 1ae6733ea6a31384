"""A watch over a rank from outside it: its node's tasks, cut if the rank freezes.

A rank that stops (SIGSTOP, a process stuck on a hung file system) cannot stop its own
tasks, and they run on while others take them for gone:

* a frozen **leader** renews no lease. Its workers notice and cut their tasks
  (worker.py), but its own node's tasks ran on, and once the lease ran out another
  launcher could requeue and start them again;
* a frozen **worker** sends no REPORT. Its leader declares it dead after
  ``worker_timeout_s`` and writes its running tasks as lost, requeued for any launcher to
  run (this one included), while their processes ran on until the launcher's end.

Either way the same task could run twice at once. So every rank starts this small
process beside it (stdlib only, run as a script with ``-I -S``: nothing of the project
is imported into it). They share one page of memory:

* bytes 0–8: the rank's last proof of life (``CLOCK_MONOTONIC``, which every process of
  the host reads alike): for the leader each heartbeat that renewed its lease, for a
  worker each REPORT it sent;
* bytes 8–16: when the watchdog cut (0: never), for the rank's log when it wakes;
* bytes 16–24: a random mark, also on the watchdog's command line, as is the first
  proof of life (written before the watchdog starts; every later one is later still).
  The page goes by descriptor number; should that number name another file when the
  watchdog starts (closed and reused by another thread of the rank), the watchdog would
  read zeros — a proof of life from the clock's origin — and cut a live rank. A page without the
  mark (read at every check, so a page zeroed later counts too) is not the rank's: the
  watchdog says so and ends, cutting nothing (the rank runs on without one, as when
  none could be started). So is a proof older than the first, read twice. (A proof at
  the clock's origin beside a good mark cut a live rank here once more, and was caught
  twice with the page printed: it had been read half written, ``write_whole``. The two
  cuts seen before the page had its mark looked the same.)

Every ``CHECK_S`` the watchdog reads the proof. Once it is older than ``limit_s`` it
cuts every process under the rank but itself: SIGTERM, then after the grace SIGHUP to
task trampolines (their stand-in for SIGKILL, which kills everything the task left:
node/runner.py) and SIGKILL to anything else (the Python interpreters). For the leader
the limit is a little past half the lease, when a live leader has begun its own cut
(launcher/lease.py), and the limit, the kill grace and one check end before the lease
does (``watch_limit``); for a worker it is half of ``worker_timeout_s``, with a quarter of
it as grace at most (``worker_watch``). A rank that wakes sees the cut, cuts too, and
writes its tasks as cut (requeued, no retry spent): the node holds a death by a signal
for ``signal_hold_s`` before it counts (node/deaths.py), and the rank decides in its
first turn, before that.

The watchdog is given its rank's pid, dies with it (``PR_SET_PDEATHSIG``), ends at once
if that pid is not its parent, and is stopped when the rank's node closes. Processes are
signalled through pidfds, so a pid reused between the walk and the signal is never hit;
where the kernel has none (node/pidfds.py), by pid, each signal after checking that the
process still has the start time it had in the walk (the window left is that check's).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import NamedTuple

CHECK_S = 0.25
_PAGE = struct.Struct("ddQ")  # last proof of life, cut at (monotonic seconds), mark
_SECONDS = struct.Struct("d")
REREAD_S = 0.005  # a proof that would cut is read again this much later
_PR_SET_PDEATHSIG = 1
# What a kernel without pidfd_open, or a seccomp filter, answers (as node/pidfds.py; this
# file runs as a script of its own, importing nothing of the package).
_REFUSED = frozenset({errno.ENOSYS, errno.EPERM, errno.EACCES, errno.EOPNOTSUPP})


def worker_watch(worker_timeout_s: float, kill_grace_s: float) -> tuple[float, float]:
    """(limit, grace) for a worker's watchdog. Its leader declares it dead, and writes
    its running tasks lost for anyone to run again, once no REPORT has come for
    ``worker_timeout_s``; the watchdog of a worker whose last REPORT went out that long
    ago cuts at half of it, with at most a quarter of it as grace, so the tasks are
    dead first."""
    return worker_timeout_s / 2, min(kill_grace_s, worker_timeout_s / 4)


def watch_limit(lease_s: float, kill_grace_s: float) -> float:
    """How old the leader's last heartbeat may be before the watchdog cuts: just past
    the leader's own limit (half the lease) — a live leader cuts first — and early
    enough that the kill grace and one check still end before the lease does
    (config.py keeps the grace under half the lease)."""
    room = lease_s / 2 - kill_grace_s - CHECK_S
    return lease_s / 2 + max(0.0, min(1.0, room / 2))


class Watchdog:
    """The rank's side: start the process, tell it of each proof of life."""

    def __init__(self, *, limit_s: float, grace_s: float, trampoline: str | None) -> None:
        self.fd = os.memfd_create("balsam-watchdog", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, _PAGE.size)
            self.page = mmap.mmap(self.fd, _PAGE.size)
            first = time.monotonic()
            self.beat(first)
            mark = int.from_bytes(os.urandom(8), "little") | 1  # never a zeroed page's
            struct.pack_into("Q", self.page, 16, mark)
            self.told = False  # whether newly_cut() has said so
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", __file__, str(os.getpid()), str(self.fd),
                 repr(limit_s), repr(grace_s),
                 # As /proc/N/exe names it, which the watchdog compares it with.
                 os.path.realpath(trampoline) if trampoline else "", str(mark),
                 repr(first)],
                pass_fds=(self.fd,), stdin=subprocess.DEVNULL, close_fds=True,
                # Nothing of the rank's environment: it is no rank, task or MPI process.
                env={"BALSAM_WATCHDOG_OF": str(os.getpid())})
        except BaseException:
            os.close(self.fd)
            raise

    def beat(self, monotonic: float) -> None:
        """The rank proved itself alive at ``monotonic`` (a heartbeat that renewed the
        lease was sent then, or a REPORT). After the close, nothing: a crashed leader
        collects a heartbeat's answer after its node (and this) closed, on its way to
        closing its batch job."""
        if not self.page.closed:
            write_whole(self.page, 0, monotonic)

    def cut_at(self) -> float:
        """When the watchdog cut this node's tasks (monotonic seconds), 0.0 if never."""
        return 0.0 if self.page.closed else float(_PAGE.unpack_from(self.page)[1])

    def newly_cut(self) -> float | None:
        """How long ago the watchdog cut this node's tasks, the first time it is asked
        after the cut (the rank's first turn after its freeze); None otherwise."""
        at = self.cut_at()
        if self.told or not at:
            return None
        self.told = True
        return time.monotonic() - at

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.page.close()
        os.close(self.fd)

    def __enter__(self) -> Watchdog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_whole(page: mmap.mmap, offset: int, seconds: float) -> None:
    """Eight bytes of the page at once, as the other process reads them. Not
    ``struct.pack_into``: it clears the bytes it packs before it writes them, and a
    reader in another process found a proof of life at 0.0 in between — the clock's
    origin, hours ago — and cut a live rank (a loop that wrote as fast as it could,
    read from another process: 111,803 such reads in 6,151,729).
    A slice is one copy of the packed bytes."""
    page[offset:offset + 8] = _SECONDS.pack(seconds)


# -- the watchdog process ------------------------------------------------------------------
def children(pid: int) -> list[int]:
    """The children of every thread of ``pid`` (empty once it is gone)."""
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(c) for c in f.read().split())
    except FileNotFoundError:  # a kernel without CONFIG_PROC_CHILDREN, or pid gone
        return _children_by_scan(pid)
    except OSError:
        pass
    return out


def _children_by_scan(pid: int) -> list[int]:
    """The same from every process's parent (/proc/N/stat), where the kernel keeps no
    list of children."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                # The parent follows the state, after the command's last ')'.
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    return out


def descendants(pid: int, skip: int) -> Iterator[tuple[int, int]]:
    """(pid, depth-first parent) of every process under ``pid``, leaving out ``skip``
    and everything under it."""
    todo = [(c, pid) for c in children(pid)]
    while todo:
        child, parent = todo.pop()
        if child == skip:
            continue
        yield child, parent
        todo.extend((c, child) for c in children(child))


def _exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


class _Target(NamedTuple):
    """A process to stop: its pidfd, or, where the kernel has none (node/pidfds.py), -1
    and its start time, checked before each signal so a pid reused meanwhile is spared."""

    pid: int
    fd: int
    start: str


def _start_time(pid: int) -> tuple[str, str] | None:
    """(start time in clock ticks since boot, state) from /proc/PID/stat; None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (fields[19], fields[0]) if len(fields) > 19 else None


def _target(pid: int) -> _Target | None:
    seen = _start_time(pid)
    if seen is None:
        return None
    try:
        return _Target(pid, os.pidfd_open(pid), seen[0])
    except OSError as exc:
        if exc.errno in _REFUSED:
            return _Target(pid, -1, seen[0])
        return None  # already gone
    except AttributeError:  # a Python without os.pidfd_open
        return _Target(pid, -1, seen[0])


def _send(target: _Target, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if target.fd >= 0:
            signal.pidfd_send_signal(target.fd, sig)
        elif _alive(target):
            os.kill(target.pid, sig)


def _alive(target: _Target) -> bool:
    if target.fd < 0:
        now = _start_time(target.pid)
        return now is not None and now[0] == target.start and now[1] != "Z"
    import select

    poll = select.poll()
    poll.register(target.fd, select.POLLIN)
    return not poll.poll(0)  # a pidfd is readable once its process has ended


def cut(rank: int, grace_s: float, trampoline: str) -> int:
    """Stop everything under ``rank`` but this process; returns how many were
    signalled. A trampoline's task is the trampoline's to stop (it passes SIGTERM on,
    and kills all the task left on SIGHUP), so nothing under a trampoline is signalled
    here."""
    if rank <= 1:  # never the whole machine
        raise ValueError(f"not a rank's pid: {rank}")
    tramps: set[int] = set()
    targets: dict[int, _Target] = {}
    for pid, parent in descendants(rank, skip=os.getpid()):
        if parent != rank and parent not in targets or parent in tramps:
            continue  # under a trampoline (or a process gone meanwhile): not ours
        target = _target(pid)
        if target is None:
            continue
        targets[pid] = target
        if trampoline and _exe(pid) == trampoline:
            tramps.add(pid)
    for target in targets.values():
        _send(target, signal.SIGTERM)
    until = time.monotonic() + grace_s
    while time.monotonic() < until and any(_alive(t) for t in targets.values()):
        time.sleep(0.05)
    for pid, target in targets.items():
        if _alive(target):
            _send(target, signal.SIGHUP if pid in tramps else signal.SIGKILL)
        if target.fd >= 0:
            os.close(target.fd)
    return len(targets)


def _name(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError as exc:
        return exc.strerror or "?"


def _die_with_parent(parent: int) -> None:
    """Die with ``parent``, or now if it has gone already (then this process was
    adopted by another: never mistake that one for the rank)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:
        os._exit(0)


def main(argv: list[str]) -> int:
    rank, fd = int(argv[1]), int(argv[2])
    limit_s, grace_s, trampoline, mark = float(argv[3]), float(argv[4]), argv[5], int(argv[6])
    first = float(argv[7])
    if rank <= 1:
        return 2
    _die_with_parent(rank)
    # The job's signals are the rank's to act on; this process only ends with it.
    for sig in (signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    page = mmap.mmap(fd, _PAGE.size)
    while os.getppid() == rank:
        beat, _cut, seen = _PAGE.unpack_from(page)
        if seen == mark and (beat < first or time.monotonic() - beat >= limit_s):
            # About to act on it: read it again a moment later, past any write that
            # was under way (the rank's of a later proof, or anything half done).
            time.sleep(REREAD_S)
            beat, _cut, seen = _PAGE.unpack_from(page)
        if seen != mark:  # read at every check: a page zeroed later is not the rank's either
            print(f"balsam-mpi watchdog: descriptor {fd} ({_name(fd)}) is not the page of "
                  f"rank pid {rank} (its mark is not there): not watching it",
                  file=sys.stderr, flush=True)
            return 3
        if beat < first:  # every proof the rank writes is later than its first
            print(f"balsam-mpi watchdog: the proof of life of rank pid {rank} "
                  f"({beat:.3f}) is older than its first ({first:.3f}): its page is "
                  "not to be trusted: not watching it", file=sys.stderr, flush=True)
            return 3
        silent = time.monotonic() - beat
        if silent >= limit_s:
            # Said first: the rank may wake, and stop this process, before the grace ends.
            print(f"balsam-mpi watchdog: rank pid {rank} gave no sign of life for "
                  f"{silent:.0f} s: cutting the processes under it", file=sys.stderr,
                  flush=True)
            write_whole(page, 8, time.monotonic())
            cut(rank, grace_s, trampoline)
            return 0
        time.sleep(CHECK_S)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
