"""Replaying journals (``launcher/journal.py``) of batch jobs that ended without writing everything.

Who replays: every leader, right before it looks for expired leases (when it starts and
every ``expire_check_s``), and `balsam-dbctl recover`. The order matters: the journal of
a job whose lease ran out is applied *before* the job is marked LOST, so a task whose
success is in it is finished, not requeued as lost. (Should a line arrive after all, the
database still applies a success to a task that job's end requeued, as long as nobody
has claimed it since.)

What is trusted: nothing read here. The database checks each line's MAC under the job's
key, its job and epoch, and that lines come in order without gaps (migration 0008). This
side only avoids useless work: it reads only regular files owned by the job's user, not
bigger than :data:`MAX_BYTES`, skips lines the database already applied, and remembers
files it has fully replayed (same size and mtime: nothing new).
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import stat
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from ..base.errors import BalsamError
from .journal import parse_name
from .storeport import StorePort

log = logging.getLogger(__name__)

MAX_BYTES = 1 << 30  # a journal larger than this is not read (a week of a big campaign)
CHUNK_LINES = 256  # lines per database call
CHUNK_BYTES = 8 << 20  # ... or this much text
_SEQ = re.compile(rb'^[0-9a-f]{64} \{"job":(\d+),"epoch":(\d+),"seq":(\d+),')


class Replayed(NamedTuple):
    job_id: int
    epoch: int
    lines: int  # journal lines applied now
    finished: int  # tasks that became JOB_FINISHED from them


@dataclass
class ReplayCache:
    """Files already replayed to their end, by (device, inode) -> (size, mtime)."""

    seen: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)


def _uid(user: str) -> int | None:
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


def _journals(directory: Path) -> dict[tuple[int, int], list[str]]:
    found: dict[tuple[int, int], list[str]] = {}
    try:
        names = os.listdir(directory)
    except OSError as exc:
        log.warning("cannot list %s for journals: %s", directory, exc)
        return found
    for name in names:
        key = parse_name(name)
        if key is not None:
            found.setdefault(key, []).append(name)
    return found


def _open(path: Path, uid: int) -> tuple[int, os.stat_result] | None:
    """A descriptor of ``path`` if it is a regular file of ``uid`` (never follows a link,
    never blocks on a FIFO), with its stat."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != uid or st.st_size > MAX_BYTES:
        os.close(fd)
        if stat.S_ISREG(st.st_mode) and st.st_uid == uid:
            log.warning("journal %s is larger than %s bytes: not replayed", path, MAX_BYTES)
        return None
    return fd, st


def _chunks(fd: int, after: int) -> Generator[tuple[list[str], list[str]], None, None]:
    """(lines, macs) of the lines numbered above ``after``, a chunk at a time."""
    lines: list[str] = []
    macs: list[str] = []
    size = 0
    with os.fdopen(fd, "rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                break  # the last line was being written when its leader stopped
            head = _SEQ.match(raw)
            if head is None:
                break  # not a journal line: nothing after it can be applied in order
            if int(head.group(3)) <= after:
                continue
            try:
                text = raw[65:-1].decode("ascii")
            except UnicodeDecodeError:
                break
            lines.append(text)
            macs.append(raw[:64].decode("ascii"))
            size += len(raw)
            if len(lines) >= CHUNK_LINES or size >= CHUNK_BYTES:
                yield lines, macs
                lines, macs, size = [], [], 0
    if lines:
        yield lines, macs


def replay_file(store: StorePort, path: Path, job_id: int, epoch: int, uid: int,
                after: int, cache: ReplayCache) -> tuple[int, int]:
    """Apply one journal file from line ``after`` + 1; returns (lines, tasks finished)."""
    opened = _open(path, uid)
    if opened is None:
        return 0, 0
    fd, st = opened
    key = (st.st_dev, st.st_ino)
    if cache.seen.get(key) == (st.st_size, st.st_mtime_ns):
        os.close(fd)
        return 0, 0
    lines_done = finished = 0
    complete = True
    chunks = _chunks(fd, after)
    try:
        for lines, macs in chunks:
            counts = store.replay(job_id, epoch, lines, macs)
            lines_done += counts.get("lines", 0)
            finished += sum(counts.get(k, 0) for k in (
                "finished", "postprocessed", "finished_after_requeue"))
            if counts.get("lines", 0) < len(lines):
                # The database stopped at a line it could not verify or place: a forged
                # or damaged line, or another replayer ahead of this one.
                complete = False
                break
    finally:
        chunks.close()  # closes the file
    if complete:
        cache.seen[key] = (st.st_size, st.st_mtime_ns)
    return lines_done, finished


def replay_due(store: StorePort, directory: Path, cache: ReplayCache | None = None,
               job_id: int | None = None) -> list[Replayed]:
    """Replay the journals the database says may hold unwritten reports (of one batch
    job only, given ``job_id``)."""
    cache = cache if cache is not None else ReplayCache()
    due = [d for d in store.journals_due() if job_id is None or d[0] == job_id]
    if not due:
        return []
    files = _journals(directory)
    out: list[Replayed] = []
    for job_id, epoch, user, after in due:
        names = files.get((job_id, epoch), [])
        uid = _uid(user)
        if not names or uid is None:
            continue
        lines = finished = 0
        for name in sorted(names):
            try:
                got = replay_file(store, directory / name, job_id, epoch, uid,
                                  after + lines, cache)
            except BalsamError as exc:
                log.warning("could not replay the journal %s: %s", name, exc)
                continue
            lines += got[0]
            finished += got[1]
        if lines:
            out.append(Replayed(job_id, epoch, lines, finished))
    return out


def log_replayed(found: list[Replayed]) -> None:
    for r in found:
        log.warning("batch job %s (epoch %s): %s journal line(s) written; %s task(s) "
                    "finished from them", r.job_id, r.epoch, r.lines, r.finished)
