"""Starting the launcher on this machine: ``balsam-mpi demo`` and ``submit --scheduler local``.

    python -m balsam_mpi.batch.localstart [--mpiexec PATH] -n 3 [--dry-run] -- [launcher options]

The ranks are virtual nodes of one host, often a login node or a laptop shared with
other users, so the start is chosen for that, per MPI (asked with ``mpidetect``):

- **MPICH** (the mpich wheel, a site MPICH): ``mpiexec.gforker -n N`` when it is there.
  Hydra's ``mpiexec`` listens on a TCP control port on every address and takes any
  connection as one of its proxies; one connection from any local user ended the whole
  launcher here (docs/security.md, "MPI on shared hosts"). gforker forks the ranks itself
  and talks PMI over socketpairs: no port. It does not kill its ranks when it is killed
  with SIGKILL, so each rank runs through :func:`rank_main`, which asks the kernel for a
  SIGTERM (the launcher's drain) when gforker dies. Without gforker: hydra, with a
  warning.
- **Open MPI**: ``mpiexec --oversubscribe --bind-to none -n N``. mpirun refuses more ranks
  than cores without ``--oversubscribe``, and by default binds each rank to one core —
  which every task the rank starts would inherit. mpirun answers TERM and INT by killing
  its ranks a second or two later, before a launcher has drained (measured: Open MPI
  4.1.4), and passes USR1 on; so this process stays, as mpirun's parent, and turns the
  TERM, INT or USR1 it gets into one USR1 for mpirun (and mpirun's own parent-death
  signal is USR1). Its TCP listeners stay open to local users (docs/security.md).
- Anything else: ``mpiexec -n N``.

The choice is printed on stderr (the local job's log, the demo's terminal). Except for
Open MPI the process becomes the starter (``exec``), so the pid the caller holds receives
the signals, which hydra and gforker pass on to the ranks.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..base import safepath
from ..base.errors import BalsamError, UsageError
from ..node import mpidetect, shmleft
from ..node.mpienv import START_VARS, task_mpi_env

STARTER_PID_ENV = "BALSAM_STARTER_PID"  # set for the ranks: whose death stops them
PR_SET_PDEATHSIG = 1
# What Open MPI 4.1's mpirun sets in every rank for the options below (measured: a rank's
# environment after `mpirun --oversubscribe --bind-to none`); tasks must not inherit them.
_OPENMPI_OPTIONS = ["--oversubscribe", "--bind-to", "none"]
_OPENMPI_SET = ("OMPI_MCA_rmaps_base_oversubscribe", "OMPI_MCA_hwloc_base_binding_policy")


@dataclass(frozen=True)
class LocalStart:
    argv: list[str]
    env: dict[str, str]
    how: str  # one line: which MPI, which starter, and why
    forks: bool = False  # gforker: the ranks run through rank_main
    drain_signal: int = 0  # non-zero: stay as the starter's parent and send it this one
    sweeps: bool = False  # MPICH: remove killed jobs' start-up segments first (shmleft)


def find_mpiexec(python: str = sys.executable,
                 which: Callable[[str], str | None] = shutil.which) -> str:
    """The mpiexec beside this Python (the venv's MPICH wheel) first, then PATH."""
    here = Path(python).parent / "mpiexec"
    if here.exists():
        return str(here)
    found = which("mpiexec")
    if not found:
        raise BalsamError("no mpiexec found beside this Python or on PATH: run "
                          "`bash setup_env.sh` (it installs the mpich wheel) or load your "
                          "site's MPI module")
    return found


def mpiexec_options(kind: str) -> list[str]:
    """Options every start of ranks on this one host needs with this MPI (tests use it)."""
    return list(_OPENMPI_OPTIONS) if kind == "openmpi" else []


def plan(ranks: int, launcher_args: Sequence[str], environ: Mapping[str, str] = os.environ,
         *, python: str = sys.executable, mpiexec: str | None = None,
         probe: Callable[[str, Mapping[str, str]], mpidetect.MpiInfo] = mpidetect.probe,
         exists: Callable[[str], bool] = os.path.exists) -> LocalStart:
    """The argv and environment that start ``ranks`` launcher ranks on this host."""
    if ranks < 1:
        raise UsageError(f"-n must be at least 1, not {ranks}")
    program = mpiexec or find_mpiexec(python)
    info = probe(program, environ)
    # A fresh MPI job: nothing of an MPI job this process may be part of (a task that
    # submits, or a process that initialised MPI as a singleton — Open MPI then sets
    # PMIX_*/OMPI_* in its own environment, and an mpirun started with them fails).
    env = task_mpi_env(environ)
    launcher = safepath.module_argv(python, "balsam_mpi", *launcher_args)
    if info.kind in ("mpich", "unknown"):
        fork = mpidetect.fork_starter(program, exists)
        if fork:
            env.pop("MPIEXEC_USE_PORT", None)  # would make gforker open a TCP port after all
            argv = [fork, "-n", str(ranks),
                    *safepath.module_argv(python, "balsam_mpi.batch.localstart", "--rank",
                                          "--", *launcher_args)]
            return LocalStart(argv, env, f"MPICH's fork starter {fork} ({info.describe()}): "
                                         "ranks forked here, PMI over socketpairs, no TCP port",
                              forks=True, sweeps=True)
        return LocalStart([program, "-n", str(ranks), *launcher], env,
                          f"{program} ({info.describe()}); no mpiexec.gforker beside it, so "
                          "hydra's control port listens on every address while it runs "
                          "(docs/security.md)", sweeps=True)
    if info.kind == "openmpi":
        started = [n for n in _OPENMPI_SET if n not in environ]
        if started:
            env[START_VARS] = ",".join(started)
        return LocalStart([program, *_OPENMPI_OPTIONS, "-n", str(ranks), *launcher], env,
                          f"Open MPI's {program} ({info.describe()}), oversubscribed and "
                          "unbound: the ranks are virtual nodes of this host; TERM and INT "
                          "reach them as USR1", drain_signal=signal.SIGUSR1)
    return LocalStart([program, "-n", str(ranks), *launcher], env,
                      f"{program} ({info.describe()})")


def _set_parent_death_signal(signum: int) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum)
    except (OSError, AttributeError):  # not Linux: the process just lacks the safeguard
        pass


def supervise(start: LocalStart) -> int:
    """Run the starter as a child in its own session (a terminal's ^C reaches this process
    only) and turn TERM, INT and USR1 into ``start.drain_signal`` for it; its status."""
    drain = start.drain_signal
    child = subprocess.Popen(start.argv, env=start.env, start_new_session=True,
                             preexec_fn=lambda: _set_parent_death_signal(drain))

    def forward(_signum: int, _frame: object) -> None:
        try:
            os.kill(child.pid, drain)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(sig, forward)
    rc = child.wait()
    return rc if rc >= 0 else 128 - rc


# -- the ranks ------------------------------------------------------------------------------
def rank_main(args: Sequence[str]) -> None:
    """One launcher rank under gforker: SIGTERM (drain) when the starter dies, then run."""
    starter = os.environ.pop(STARTER_PID_ENV, "")
    _set_parent_death_signal(signal.SIGTERM)
    if starter.isdigit() and os.getppid() != int(starter):
        print("balsam_mpi launcher: its starter (mpiexec.gforker) is already gone",
              file=sys.stderr)
        sys.exit(1)
    from ..launcher.launch import main as launch_main

    launch_main(list(args))


# -- command line ---------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -P -m balsam_mpi.batch.localstart",
        description="Start the launcher's ranks on this host with the MPI found beside "
                    "this Python (or on PATH), the way that MPI needs on one machine.")
    p.add_argument("-n", dest="ranks", type=int, default=1, help="ranks (virtual nodes)")
    p.add_argument("--mpiexec", metavar="PATH",
                   help="the MPI's mpiexec (default: beside this Python, else on PATH)")
    p.add_argument("--dry-run", action="store_true", help="print the command, start nothing")
    p.add_argument("--quiet", action="store_true", help="do not print the choice")
    p.add_argument("--rank", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("launcher_args", nargs=argparse.REMAINDER,
                   help="after --: options for python -m balsam_mpi")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    safepath.exit_if_unsafe("balsam_mpi.batch.localstart")
    args = _parser().parse_args(argv)
    rest = list(args.launcher_args)
    if rest[:1] == ["--"]:
        rest = rest[1:]
    if args.rank:
        rank_main(rest)
        return
    try:
        start = plan(args.ranks, rest, mpiexec=args.mpiexec)
    except BalsamError as exc:
        print(f"balsam_mpi.batch.localstart: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    if not args.quiet or args.dry_run:
        print(f"starting {args.ranks} launcher rank(s) with {start.how}", file=sys.stderr)
        print("  " + " ".join(start.argv), file=sys.stderr, flush=True)
    if args.dry_run:
        return
    if start.drain_signal:
        try:
            sys.exit(supervise(start))
        except OSError as exc:
            print(f"balsam_mpi.batch.localstart: cannot run {start.argv[0]}: {exc}",
                  file=sys.stderr)
            sys.exit(127)
    env = dict(start.env)
    if start.forks:
        env[STARTER_PID_ENV] = str(os.getpid())  # exec keeps this pid: gforker's
    if start.sweeps:
        # mpiexec keeps this pid, and MPICH names the ranks' start-up segment after it: a
        # killed job's file of that name would stop them in MPI_Init (node/shmleft.py).
        shmleft.sweep()
    try:
        os.execve(start.argv[0], start.argv, env)
    except OSError as exc:
        print(f"balsam_mpi.batch.localstart: cannot run {start.argv[0]}: {exc}", file=sys.stderr)
        sys.exit(127)


if __name__ == "__main__":
    main()
