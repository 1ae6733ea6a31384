"""The node's side of the socket to a warm interpreter (``node/pypool.py``): a call goes
out whole, its descriptors (directory, task.out, task.err) riding with its first bytes;
an answer is read as it arrives and taken once its frame is whole (``node/pycall.py``
writes the frames)."""

from __future__ import annotations

import array
import select
import socket
import time
from typing import Any, Protocol

from .pycall import LENGTH, split_frame

SEND_TIMEOUT_S = 5.0  # an interpreter that takes no call for this long is given up
# What one read of an answer asks for: under malloc's mmap threshold (128 KiB), since
# recv allocates the whole size first. A 1 MiB read cost ~8 µs more per call here (an
# mmap and a munmap for a few hundred bytes); a bigger answer takes several reads.
READ_CHUNK = 1 << 16


class Endpoint(Protocol):
    """What reading an answer needs of an interpreter: its socket, its buffer, its EOF."""

    sock: socket.socket
    buf: bytearray
    eof: bool


def send_call(sock: socket.socket, data: bytes, fds: list[int],
              timeout: float = SEND_TIMEOUT_S) -> None:
    """The whole call; the descriptors travel with its first bytes (SCM_RIGHTS)."""
    view = memoryview(data)
    deadline = time.monotonic() + timeout
    first = True
    poller: select.poll | None = None
    while view:
        try:
            if first:
                n = sock.sendmsg([view], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                           array.array("i", fds))])
                first = False
            else:
                n = sock.send(view)
            view = view[n:]
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the interpreter took no call for {timeout:g} s"
                                   ) from None
            if poller is None:
                poller = select.poll()
                poller.register(sock.fileno(), select.POLLOUT)
            poller.poll(left * 1000)


def read_answer(interp: Endpoint) -> tuple[dict[str, Any], bytes] | None:
    """Read what is there; the answer once it is whole (sets ``eof`` on EOF)."""
    buf = interp.buf
    while not interp.eof and not _whole(buf):  # a whole answer: no more to read
        try:
            chunk = interp.sock.recv(READ_CHUNK)
        except BlockingIOError:
            break
        except OSError:
            interp.eof = True
            break
        if not chunk:
            interp.eof = True
            break
        buf += chunk
    if len(buf) < LENGTH.size:
        return None
    (n,) = LENGTH.unpack_from(buf)
    if len(buf) < LENGTH.size + n:
        return None
    body = bytes(buf[LENGTH.size:LENGTH.size + n])
    del buf[:LENGTH.size + n]
    try:
        return split_frame(body)
    except ValueError:
        interp.eof = True  # nonsense on the socket: treat it as dead
        return None


def _whole(buf: bytearray) -> bool:
    """Whether ``buf`` holds a whole frame (an interpreter sends one answer per call, so
    there is nothing behind it to read)."""
    return len(buf) >= LENGTH.size and len(buf) >= LENGTH.size + LENGTH.unpack_from(buf)[0]
