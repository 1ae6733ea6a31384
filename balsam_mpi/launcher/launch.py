"""`python -m balsam_mpi`: split the ranks — 0 leads (and runs a local node), others work.

Any unhandled exception on any rank is logged with the rank, host and traceback; a worker
tells the leader (ERROR), the leader writes what it holds and closes its batch job as
FAILED, and the rank aborts COMM_WORLD, so nothing hangs until the wall time. Without
mpiexec the launcher runs as one rank: a single node.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import logging
import os
import resource
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import FrameType
from typing import Any, NoReturn

from ..base import values
from ..base.errors import BalsamError, InputError, UsageError
from ..base.project import Project
from ..node import pidfds
from ..node.mpienv import START_VARS
from ..node.runner import raise_nofile
from . import lineout, logs, netmod
from .config import Settings, resolve

log = logging.getLogger(__name__)


class _Parser(argparse.ArgumentParser):
    """A bad flag is a UsageError like any bad setting: one line, on rank 0 only."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -P -m balsam_mpi",
        description="Run tasks from the project's database: one MPI rank per node, "
                    "rank 0 leads.")
    p.add_argument("--project", help="project directory (default: $BALSAM_DB_PATH)")
    p.add_argument("--workflow", dest="workflows", action="append", default=[],
                   metavar="W", help="only this workflow (exact; repeatable; default all)")
    p.add_argument("--tag", dest="tags", action="append", default=[], metavar="K=V",
                   help="only tasks with this tag (repeatable)")
    p.add_argument("--owner", dest="owners", action="append", default=[], metavar="ROLE",
                   help="only tasks created by this role (repeatable; default all)")
    p.add_argument("--idle-timeout", dest="idle_timeout_s", type=float, metavar="S",
                   help="exit after S seconds with nothing to run (default 10; 0 = at once)")
    p.add_argument("--persistent", action="store_true", default=None,
                   help="never exit for lack of work")
    p.add_argument("--gpus-per-node", dest="gpus_per_node", type=int, metavar="N")
    p.add_argument("--max-tasks", dest="max_tasks", type=int, metavar="N",
                   help="claim at most N tasks, then exit when they are done")
    p.add_argument("--time-limit-min", dest="time_limit_min", type=float, metavar="M",
                   help="minutes this launcher may run (default: the scheduler's)")
    p.add_argument("--null-runner", dest="null_runner", action="store_true", default=None,
                   help=argparse.SUPPRESS)
    p.add_argument("--log-level", dest="log_level", metavar="LEVEL")
    return p


def settings_from(argv: Sequence[str] | None) -> tuple[Settings, Project]:
    args = vars(parser().parse_args(argv))
    if args.get("persistent") and args.get("idle_timeout_s") is not None:
        # Which was meant? `submit` refuses the pair too (batch/jobscript.py).
        raise UsageError("--persistent never exits for lack of work, --idle-timeout after "
                         "a while: give one of them")
    project = Project.from_env(args.get("project"))
    settings = resolve(args, os.environ, project.read_settings())
    return settings, project


def _run_name() -> str:
    from ..base.platform import detect

    job = detect().job_id
    return (job or f"{socket.gethostname()}-{os.getppid()}").replace("/", "_")


# The thread level the launcher asks MPI for: the leader writes to the database (and its
# journal) from threads of its own that never call MPI, which is what FUNNELED promises.
THREAD_LEVEL = "funneled"
_LEVELS = ("single", "funneled", "serialized", "multiple")  # MPI_THREAD_*, in order


def thread_level_note(provided: int, asked: str = THREAD_LEVEL) -> str | None:
    """What the log should say about the thread level MPI gave (``MPI.Query_thread()``,
    an index into single < funneled < serialized < multiple), or None when it is at
    least the one asked.

    Lower than asked (an MPI built without thread support gives SINGLE) is not refused:
    no thread but the main one ever calls MPI (the database thread and the journal's
    write to Postgres and to a file only), so MPI's state is never touched from two
    threads, which is all FUNNELED would add. Strictly, SINGLE also says the process has
    no other thread at all; an MPI that relied on that would misbehave, so the log names
    the level and what to do about it."""
    want = _LEVELS.index(asked)
    if provided >= want:
        return None
    got = _LEVELS[provided] if 0 <= provided < len(_LEVELS) else str(provided)
    return (f"MPI gave thread level {got.upper()}, less than the {asked.upper()} asked: "
            "running anyway, since only the main thread of any rank calls MPI (the "
            "leader's database and journal threads never do). If ranks misbehave, use an "
            "MPI built with thread support")


# MPI_Init runs inside `MPI.Init_thread`, in C, holding the GIL: a rank stuck there
# (a process manager that never answers; seen here once: three ranks under MPICH's
# gforker stuck in UCX's wire-up, each spinning on sched_yield at half a core for as long
# as nobody killed them) runs no Python at all. So the watchdog is the kernel's: an alarm,
# whose signal faulthandler's C handler answers by printing the rank's stack (the
# `MPI.Init_thread` line) before the default action ends the process. No thread
# is started before MPI_Init. Generous: a large job's MPI_Init can take minutes. Read from
# the environment only (settings come after MPI).
MPI_INIT_TIMEOUT_ENV = "BALSAM_MPI_INIT_TIMEOUT_S"
MPI_INIT_TIMEOUT_S = 600
MPI_INIT_TIMEOUT_MAX_S = 86_400


def mpi_init_timeout(environ: Mapping[str, str] = os.environ) -> int:
    """The MPI_Init timeout in whole seconds (0: none); a bad value is an InputError."""
    raw = environ.get(MPI_INIT_TIMEOUT_ENV)
    if raw is None:
        return MPI_INIT_TIMEOUT_S
    return values.int_from_text(MPI_INIT_TIMEOUT_ENV, raw, 0, MPI_INIT_TIMEOUT_MAX_S)


@contextlib.contextmanager
def mpi_init_watchdog() -> Iterator[None]:
    """End the process, with its stack on stderr, if the body (MPI_Init) has not returned
    within the timeout."""
    try:
        timeout = mpi_init_timeout()
    except InputError as exc:
        print(f"balsam_mpi launcher: error: {exc}", file=sys.stderr, flush=True)
        sys.exit(exc.exit_code)
    if timeout <= 0:
        yield
        return
    previous = signal.signal(signal.SIGALRM, signal.SIG_DFL)
    faulthandler.register(signal.SIGALRM, all_threads=True, chain=True)
    signal.alarm(timeout)
    try:
        yield
    finally:
        signal.alarm(0)
        faulthandler.unregister(signal.SIGALRM)
        signal.signal(signal.SIGALRM, previous)


# Descriptors a rank holds before its first task: MPI's, its database connections, its
# log and journal, the Python pool's and the watchdog's pipes. Under a hard limit of 24 or
# 40 (three ranks of a local start) a rank died of EMFILE part-way through its start, with
# tracebacks, and left its batch job RUNNING until the lease ran out; under 64 it ran.
NOFILE_FLOOR = 64


def check_open_files() -> None:
    """Refuse, in one line, an open-file limit the launcher cannot start under (the soft
    limit is raised to the hard one first: node/runner.py)."""
    raise_nofile()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < NOFILE_FLOOR:
        shown = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
        raise InputError(f"the open-file limit (ulimit -n) is {soft} (hard limit {shown}): "
                         f"the launcher needs at least {NOFILE_FLOOR}, plus about four for "
                         "each task running on a node; raise it where the launcher starts")


# A start-up refusal is the same on every rank (the same settings and limits), and rank 0
# says it. Every rank then aborts the job, and a worker's abort could reach the process
# manager first and end rank 0 before its line was out (seen once, three ranks under a
# loaded gforker: no output at all). So the others wait: rank 0's abort ends them, and a
# worker still there after the wait refused alone, and says why itself.
REFUSAL_WAIT_S = 5.0


def refuse_start(world: Any, rank: int, exc: BalsamError, *,
                 wait_s: float = REFUSAL_WAIT_S,
                 sleep: Callable[[float], None] = time.sleep,
                 let_out: Callable[[], object] = lineout.let_out) -> None:
    """One line on stderr and the job ended with the refusal's status (see above); the
    line read by the process manager before the abort (launcher/lineout.py)."""
    if rank == 0:
        print(f"balsam_mpi launcher: error: {exc}", file=sys.stderr, flush=True)
    if world.Get_size() == 1:  # nothing to take down: one line and the status only
        sys.exit(exc.exit_code)
    if rank != 0:
        sleep(wait_s)
        print(f"balsam_mpi launcher (rank {rank}): error: {exc}", file=sys.stderr,
              flush=True)
    let_out()
    world.Abort(exc.exit_code)


def main(argv: Sequence[str] | None = None) -> None:
    import mpi4py

    # Loaded, not yet initialized: the library says what it is before MPI_Init reads the
    # environment (netmod.py). mpi4py finalizes at exit as it would have. (A program that
    # imported mpi4py.MPI before calling main has initialized MPI already: left as it is.)
    if "mpi4py.MPI" not in sys.modules:
        mpi4py.rc.initialize = False
        mpi4py.rc.finalize = True
    from mpi4py import MPI

    raise_nofile()  # before MPI_Init, which opens descriptors of its own
    netmod_choice = None
    if not MPI.Is_initialized():
        netmod_choice = netmod.apply(os.environ, _library_version(MPI), START_VARS)
        with mpi_init_watchdog():
            MPI.Init_thread(_required_level(MPI))

    t_init = time.time()
    world = MPI.COMM_WORLD
    rank = world.Get_rank()
    host = socket.gethostname()
    try:
        check_open_files()  # before anything is written: nothing adopted, nothing claimed
        no_pidfds = pidfds.check()  # how the nodes watch their tasks (node/pidfds.py)
        settings, project = settings_from(argv)
        logs.setup(rank, project.log_dir, _run_name(), settings.log_level)
        if no_pidfds is not None:  # said once on stderr (rank 0), in every rank's log
            log.log(logging.WARNING if rank == 0 else logging.INFO, "%s", no_pidfds)
        if netmod_choice is not None:
            log.info("MPICH network module %s for the launcher's ranks (a multi-node srun "
                     "step: launcher/netmod.py)", netmod_choice)
        note = thread_level_note(_thread_index(MPI))
        if note is not None:  # said once on stderr (rank 0), in every rank's log
            log.log(logging.WARNING if rank == 0 else logging.INFO, "%s", note)
    except BalsamError as exc:
        refuse_start(world, rank, exc)
        return
    runner: Any = None
    try:
        from .comm import Comm

        comm = Comm(world)
        if rank == 0:
            from .session import LeaderSession

            runner = LeaderSession(settings, comm, project, t_init)
        else:
            from .session import WorkerSession

            runner = WorkerSession(settings, comm, project)
        _install_signals(runner)
        profile = os.environ.get("BALSAM_PROFILE_DIR")  # benchmarks: per-rank cProfile
        if profile:
            import cProfile

            cProfile.runctx("runner.run()", globals(), {"runner": runner},
                            os.path.join(profile, f"rank{rank}.prof"))
        else:
            runner.run()
    except BalsamError as exc:
        if runner is None and rank == 0 and isinstance(exc, UsageError):
            # Refused by the leader's set-up before its batch job was opened (an --owner
            # no task can have): one line and exit 2, like any bad setting. Logged at
            # INFO: the log's stderr handler would print the line a second time.
            log.info("refused: %s", exc)
            refuse_start(world, rank, exc)
            return
        log.error("%s", exc)
        if rank == 0:
            print(f"balsam_mpi launcher: error: {exc}", file=sys.stderr, flush=True)
        _abort(world, runner, rank, host, exc.exit_code, traceback.format_exc(), exc)
    except BaseException as exc:
        text = traceback.format_exc()
        log.critical("unhandled error on rank %s (%s):\n%s", rank, host, text)
        _abort(world, runner, rank, host, 1, text, exc)


def _library_version(mpi: Any) -> str:
    """MPI_Get_library_version, which MPI-3 allows before MPI_Init; "" from a library
    that refuses it (then MPI's own choices stand)."""
    try:
        return str(mpi.Get_library_version())
    except Exception:  # an MPI-2 library, or one that insists on MPI_Init first
        return ""


def _required_level(mpi: Any) -> int:
    """MPI_THREAD_* of THREAD_LEVEL."""
    return int(getattr(mpi, f"THREAD_{THREAD_LEVEL.upper()}"))


def _thread_index(mpi: Any) -> int:
    """The level MPI gave, as an index into _LEVELS."""
    provided = mpi.Query_thread()
    order = [mpi.THREAD_SINGLE, mpi.THREAD_FUNNELED, mpi.THREAD_SERIALIZED,
             mpi.THREAD_MULTIPLE]
    return order.index(provided) if provided in order else -1


def _abort(world: Any, runner: Any, rank: int, host: str, code: int, text: str,
           exc: BaseException | None = None) -> None:
    """Stop this rank's tasks, let the leader write what it holds, abort COMM_WORLD."""
    try:
        if runner is not None:
            runner.crashed(text, exc)
    except BaseException:  # aborting anyway: say why stopping did not go well
        log.critical("while stopping after the error:\n%s", traceback.format_exc())
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):  # MPI_Abort ends the process unflushed
        with contextlib.suppress(Exception):
            stream.flush()
    lineout.let_out()  # what this rank said of the error, out before the abort
    world.Abort(code)


def _install_signals(runner: Any) -> None:
    """SIGTERM / SIGINT / SIGUSR1 (the scheduler's end, a user's ^C): drain and stop."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        runner.stop(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(sig, handler)
