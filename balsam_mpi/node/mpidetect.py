"""Which MPI is behind an ``mpiexec``: asked once per program, from its ``--version``.

Every MPI ships a program called ``mpiexec`` and each one speaks its own dialect (MPICH's
hydra takes ``--ppn``; Open MPI refuses it). The name tells nothing, so the program is
asked: ``mpiexec --version`` is cheap, needs no running job, and each implementation
prints its own banner. The answer is cached per (path, inode, size, mtime), so a worker
asks once however many tasks it starts, and a module swap that replaces the program is
noticed.

Banners (what each printed here, or what its documentation shows):

=============  ===========================================================================
MPICH hydra    ``HYDRA build details:`` then ``Version: 5.0.2`` (the mpich wheel; Debian's
               MPICH 4.0.2 prints the same block). MVAPICH's hydra prints it too.
Intel MPI      ``Intel(R) MPI Library for Linux* OS, Version 2021.x …`` (its hydra fork).
Open MPI       ``mpiexec (OpenRTE) 4.1.4`` / ``mpirun (Open MPI) 4.1.4`` and a line naming
               open-mpi.org (Debian's 4.1.4, here); Open MPI 5's ``prterun (PRRTE) 3.x``.
Slurm          ``slurm 22.05.8`` (``srun --version``).
HPE Cray PALS  no banner seen here: recognised by the word PALS or a ``/pals/`` path.
=============  ===========================================================================
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

# The MPI kinds detection can name; "unknown" when the banner matches none of them.
DETECTED = ("mpich", "intel", "openmpi", "srun", "pals", "unknown")
VERSION_TIMEOUT_S = 20.0  # a site's wrapper may load modules first; a hang must not block


@dataclass(frozen=True)
class MpiInfo:
    """What ``program --version`` said: the kind and the banner line that decided it."""

    kind: str
    banner: str  # the first informative line, for the log ("" when nothing was printed)
    program: str

    def describe(self) -> str:
        seen = f": {self.banner!r}" if self.banner else ""
        return f"{self.program} --version{seen}"


_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    # Order matters: Intel's and MVAPICH's hydra are forks of MPICH's and may print
    # hydra's words as well, so the vendor names are looked for first.
    ("intel", re.compile(r"Intel\(R\) MPI|Intel MPI", re.I)),
    ("openmpi", re.compile(r"Open MPI|OpenRTE|open-mpi\.org|\bPRRTE\b", re.I)),
    ("mpich", re.compile(r"HYDRA build details|\bMPICH\b|MVAPICH", re.I)),
    ("pals", re.compile(r"\bPALS\b|/pals/", re.I)),
    ("srun", re.compile(r"^\s*slurm\s+\d", re.I | re.M)),
)


def classify(text: str, program: str = "") -> MpiInfo:
    """The MPI kind named by a ``--version`` banner (pure; the unit tests feed banners)."""
    banner = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    for kind, pattern in _RULES:
        if pattern.search(text):
            line = next((ln.strip() for ln in text.splitlines() if pattern.search(ln)),
                        banner)
            version = re.search(r"^\s*Version:\s*(\S+)", text, re.M)
            if kind == "mpich" and version and "Version" not in line:
                line = f"{line} Version {version.group(1)}"  # hydra: on its own line
            return MpiInfo(kind, line[:120], program)
    if re.search(r"/pals/", os.path.realpath(program) if program else ""):
        return MpiInfo("pals", banner[:120], program)
    return MpiInfo("unknown", banner[:120], program)


Runner = Callable[[list[str], Mapping[str, str]], str]


def _run_version(argv: list[str], env: Mapping[str, str]) -> str:
    try:
        proc = subprocess.run(argv, env=dict(env), capture_output=True, text=True,
                              errors="replace", timeout=VERSION_TIMEOUT_S,
                              stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("could not ask %s for its version: %s", argv[0], exc)
        return ""
    return proc.stdout + "\n" + proc.stderr


_cache: dict[tuple[str, int, int, int, int], MpiInfo] = {}


def probe(program: str, environ: Mapping[str, str] = os.environ, *,
          run: Runner = _run_version) -> MpiInfo:
    """What MPI ``program`` belongs to (cached while the file is unchanged).

    Runs ``program --version`` with the environment minus any MPI job's identity (a
    launcher rank's PMI/PMIx variables mean nothing to it), stdin closed, a timeout.
    """
    from .mpienv import task_mpi_env

    try:
        st = os.stat(program)
        key: tuple[str, int, int, int, int] | None = (
            os.path.realpath(program), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    except OSError:
        key = None
    if key is not None and key in _cache:
        return _cache[key]
    info = classify(run([program, "--version"], task_mpi_env(environ)), program)
    if key is not None:
        _cache[key] = info
    return info


def fork_starter(program: str, exists: Callable[[str], bool] = os.path.exists) -> str | None:
    """MPICH's fork-only process manager beside a hydra ``mpiexec``, if it was built.

    ``mpiexec.gforker`` starts every rank on this host with ``fork`` and talks PMI over
    socketpairs: no TCP port at all (docs/security.md, "MPI on shared hosts"). The mpich
    wheel ships it; distributions that build hydra alone do not.
    """
    candidate = os.path.join(os.path.dirname(program), "mpiexec.gforker")
    return candidate if exists(candidate) else None
