"""System calls made to answer ENOSYS, as a kernel that predates them does (or EPERM, as
a container's seccomp profile that does not know them may): ``refuse("pidfd_open")`` in a
``preexec_fn`` gives the process and everything it starts that kernel's answer. For the
tests of what the launcher does on older systems; a seccomp filter, so it needs no
privilege (``PR_SET_NO_NEW_PRIVS`` first) and cannot be lifted by the process."""

from __future__ import annotations

import ctypes
import errno
import platform

# The same on x86-64 and aarch64 (calls since Linux 5.1 share their numbers).
NUMBERS = {"pidfd_open": 434, "close_range": 436}
MACHINES = ("x86_64", "aarch64")

PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
BPF_LD_W_ABS = 0x20  # load a word of struct seccomp_data: offset 0 is the call's number
BPF_JEQ_K = 0x15
BPF_RET_K = 0x06


class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                ("k", ctypes.c_uint32)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


def supported() -> bool:
    return platform.machine() in MACHINES


def refuse(*names: str, code: int = errno.ENOSYS) -> None:
    """From now on, in this process and its children, each named call fails with
    ``code``: ENOSYS as an older kernel answers, EPERM as some container profiles do."""
    numbers = [NUMBERS[n] for n in names]
    prog = [SockFilter(BPF_LD_W_ABS, 0, 0, 0)]
    # Each match jumps over the checks left and the ALLOW, to the ERRNO return.
    prog += [SockFilter(BPF_JEQ_K, len(numbers) - i, 0, nr) for i, nr in enumerate(numbers)]
    prog += [SockFilter(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
             SockFilter(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | code)]
    program = (SockFilter * len(prog))(*prog)
    fprog = SockFprog(len(prog), program)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or libc.prctl(
            PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "cannot install the seccomp filter")
