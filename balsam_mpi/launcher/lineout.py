"""Let a rank's last lines out before it aborts the job.

A rank that ends the job with ``MPI_Abort`` writes its reason first (one line on stderr),
flushed into the pipe its process manager reads (Hydra's proxy, Open MPI's daemon, the
forker). The abort reaches that manager through another channel, and a manager that
takes the abort first tears the job down with the line still unread in the pipe: the
user gets the exit status and no word of why (seen once in CI, two ranks under a loaded
Hydra). So before its abort a rank waits, briefly, until nothing it wrote is still
unread: ``FIONREAD`` on a pipe counts the bytes in it from either end, and on a socket
``TIOCOUTQ`` counts those not yet taken by the peer. Anything else (a file, a terminal,
a closed descriptor) has nobody to wait for. Capped: a manager that never reads costs
the cap, never a hang.
"""

from __future__ import annotations

import array
import fcntl
import os
import stat
import termios
import time
from collections.abc import Callable, Sequence

CAP_S = 2.0
NAP_S = 0.01


def let_out(fds: Sequence[int] = (1, 2), *, cap_s: float = CAP_S,
            sleep: Callable[[float], None] = time.sleep,
            clock: Callable[[], float] = time.monotonic) -> bool:
    """Wait until ``fds`` hold nothing unread, at most ``cap_s``; True if they do not."""
    deadline = clock() + cap_s
    for fd in fds:
        while _unread(fd) > 0:
            if clock() >= deadline:
                return False
            sleep(NAP_S)
    return True


def _unread(fd: int) -> int:
    """Bytes written to ``fd`` that its reader has not taken yet (0 if nobody waits)."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return 0
    if stat.S_ISFIFO(mode):
        request = termios.FIONREAD
    elif stat.S_ISSOCK(mode):
        request = termios.TIOCOUTQ
    else:
        return 0
    count = array.array("i", [0])
    try:
        fcntl.ioctl(fd, request, count, True)
    except OSError:
        return 0
    return int(count[0])
