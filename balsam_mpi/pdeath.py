"""A tiny exec trampoline that gives a task a parent-death signal for almost nothing.

A task must die with its worker (a launcher killed with ``kill -9`` must leave nothing
running that a requeue would start again): ``prctl(PR_SET_PDEATHSIG)`` in the child does
it. Python can only run that through ``preexec_fn``, which forces a full ``fork()`` and
Python's after-fork machinery in the child: measured here, spawning ``/bin/true`` became
5× slower. This trampoline is the child's first program instead: it sets the signal,
checks the worker did not die meanwhile, closes inherited descriptors, changes to the
task's directory and ``execve``s the task — a 9 KB static binary without libc, about
+10% CPU per spawn, started with ``posix_spawn`` (vfork) from the worker.

It is compiled once per user and machine type into ``~/.cache/balsam_mpi`` (or
``$BALSAM_CACHE_DIR``) with the system C compiler; x86-64 is tested here, aarch64 is
written but untested. Without a compiler (or elsewhere) the runner falls back to
``preexec_fn`` (correct, slower) and says so once in the log.

Usage: ``pdeath PARENT_PID CWD PROGRAM [ARGS…]``; exit 137 if the parent is already gone,
126 if CWD is unusable, 127 if PROGRAM cannot be executed (a message goes to stderr).
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import stat
import subprocess
import tempfile
from functools import cache
from pathlib import Path

log = logging.getLogger(__name__)

SOURCE = r"""
#if defined(__x86_64__)
#define NR_chdir 80
#define NR_execve 59
#define NR_exit 60
#define NR_prctl 157
#define NR_getppid 110
#define NR_write 1
static long sc(long n, long a, long b, long c) {
    long r;
    __asm__ volatile ("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c)
                      : "rcx", "r11", "memory");
    return r;
}
__asm__(".globl _start\n_start:\n mov %rsp, %rdi\n and $-16, %rsp\n call cmain\n hlt\n");
#elif defined(__aarch64__)
#define NR_chdir 49
#define NR_execve 221
#define NR_exit 93
#define NR_prctl 167
#define NR_getppid 173
#define NR_write 64
static long sc(long n, long a, long b, long c) {
    register long x8 __asm__("x8") = n;
    register long x0 __asm__("x0") = a;
    register long x1 __asm__("x1") = b;
    register long x2 __asm__("x2") = c;
    __asm__ volatile ("svc #0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2) : "memory");
    return x0;
}
__asm__(".globl _start\n_start:\n mov x0, sp\n bl cmain\n brk #0\n");
#else
#error "no trampoline for this machine"
#endif
#define NR_close_range 436

static long num(const char *s) {
    long v = 0;
    while (*s >= '0' && *s <= '9') v = v * 10 + (*s++ - '0');
    return v;
}
static long len(const char *s) { long n = 0; while (s[n]) n++; return n; }
static void die(const char *what, const char *arg, long code) {
    sc(NR_write, 2, (long)"balsam pdeath: ", 15);
    sc(NR_write, 2, (long)what, len(what));
    sc(NR_write, 2, (long)arg, len(arg));
    sc(NR_write, 2, (long)"\n", 1);
    sc(NR_exit, code, 0, 0);
}
__attribute__((used)) void cmain(long *sp) {
    long argc = sp[0];
    char **argv = (char **)(sp + 1);
    char **envp = argv + argc + 1;
    if (argc < 4) die("usage: pdeath PARENT_PID CWD PROGRAM [ARGS...]", "", 127);
    sc(NR_prctl, 1 /* PR_SET_PDEATHSIG */, 9 /* SIGKILL */, 0);
    if (sc(NR_getppid, 0, 0, 0) != num(argv[1])) sc(NR_exit, 137, 0, 0);
    sc(NR_close_range, 3, ~0UL, 0);  /* nothing of the worker's leaks into the task */
    if (sc(NR_chdir, (long)argv[2], 0, 0) != 0) die("cannot enter ", argv[2], 126);
    sc(NR_execve, (long)argv[3], (long)(argv + 3), (long)envp);
    die("cannot execute ", argv[3], 127);
}
"""

_FLAGS = ["-O2", "-static", "-nostdlib", "-fno-stack-protector", "-fno-builtin", "-fno-pie",
          "-no-pie", "-w"]


def cache_dir() -> Path:
    base = os.environ.get("BALSAM_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "balsam_mpi")
    return Path(base)


def _safe_dir(path: Path) -> bool:
    """Ours and writable by nobody else: a binary others could replace is never run."""
    try:
        st = path.stat()
    except OSError:
        return False
    return st.st_uid == os.getuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


@cache
def trampoline() -> str | None:
    """The trampoline's path, compiling it on first use; None when it cannot be had."""
    digest = hashlib.sha256((SOURCE + " ".join(_FLAGS)).encode()).hexdigest()[:12]
    folder = cache_dir()
    target = folder / f"pdeath-{platform.machine()}-{digest}"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        return None
    if not _safe_dir(folder):
        log.warning("not using %s for the task trampoline: not owned by you, or writable "
                    "by others", folder)
        return None
    if target.exists():
        return str(target) if _safe_dir(target) else None
    return _build(target)


def _build(target: Path) -> str | None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler or platform.machine() not in ("x86_64", "aarch64"):
        return None
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src = Path(tmp) / "pdeath.c"
        out = Path(tmp) / "pdeath"
        src.write_text(SOURCE)
        try:
            subprocess.run([compiler, *_FLAGS, "-o", str(out), str(src)], check=True,
                           capture_output=True, timeout=60)
            ok = subprocess.run([str(out), str(os.getpid()), "/", "/bin/true"],
                                timeout=10).returncode == 0
        except (OSError, subprocess.SubprocessError) as exc:
            log.info("could not build the task trampoline (%s)", exc)
            return None
        if not ok:
            log.info("the task trampoline failed its self-test; not using it")
            return None
        os.chmod(out, 0o755)
        os.replace(out, target)
    return str(target)
