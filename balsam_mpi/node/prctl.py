"""Linux's prctl for the parent-death signal, one lookup per process: a task process
(``runner``'s fallback start), a warm interpreter (``pycall``) and a call's put-back
(``pyputback``) all ask for SIGKILL when the process that started them dies."""

from __future__ import annotations

import ctypes
import functools
from typing import Any

PR_SET_PDEATHSIG, PR_GET_PDEATHSIG = 1, 2


@functools.cache
def libc_prctl() -> Any:
    """libc's prctl, looked up once and before any fork: a child forked after it uses
    the parent's (a lookup in each forked interpreter cost ~0.25 ms of a fork's ~2.5 ms)."""
    return ctypes.CDLL(None, use_errno=True).prctl
