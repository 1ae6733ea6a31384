"""Stand-ins for the site's launch tools and for the launcher, used by the template tests.

Installed under the names ``srun``, ``mpiexec`` and ``aprun`` (the tool behaves as its
name says) and as the venv's ``python`` (a launcher rank). They behave as the real tools
do at the end of a job, as far as their documentation and our measurements on Slurm
22.05 go (docs/schedulers.md):

* ``srun``: TERM, HUP or QUIT make it kill its whole step at once (SIGKILL) — unless the
  job is already ending (the scheduler's own TERM; the step is then terminated by Slurm,
  and srun just leaves); USR1, USR2, ALRM are forwarded to every process of the step;
  a single INT only prints the step's status, a second within a second kills the step.
* ``aprun``: forwards HUP, INT, QUIT, TERM, ABRT, USR1, USR2, URG and WINCH to the
  application (HPE's aprun documentation).
* ``mpiexec`` (PALS): its signal handling is not documented where we looked; it forwards
  TERM, INT, HUP, USR1, USR2 to its ranks, as MPICH's hydra does.

The ranks do not descend from the tool (a scheduler starts them through its own daemons):
the tool starts each in a session of its own and lists their PIDs in ``$OUT/step.pids``,
which is how the scheduler stand-in finds "every process of the job". Every signal a tool
receives is logged with its sender's PID (``$OUT/<tool>.signals``).

A rank (``python -m balsam_mpi …``) writes ``$OUT/rank<N>.log``; on its first TERM, USR1
or INT it "drains" for ``DRAIN_S`` and exits 42, so a rank killed before its drain ends
never writes ``drained``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

DRAIN_S = 1.0
FORWARDS = {
    "srun": {signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM},
    "aprun": {signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGABRT,
              signal.SIGUSR1, signal.SIGUSR2, signal.SIGURG, signal.SIGWINCH},
    "mpiexec": {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2},
}
CAUGHT = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
          signal.SIGUSR2, signal.SIGALRM, signal.SIGCONT, signal.SIGABRT, signal.SIGURG,
          signal.SIGWINCH}


def out_dir() -> Path:
    return Path(os.environ["OUT"])


def rank_main() -> int:
    rank = os.environ.get("FAKE_RANK", "0")
    log = (out_dir() / f"rank{rank}.log").open("a", buffering=1)
    log.write(f"start {os.getpid()}\n")
    if rank == "0":
        (out_dir() / "argv").write_text("\n".join(sys.argv[1:]) + "\n")
        umask = os.umask(0)
        os.umask(umask)
        (out_dir() / "umask").write_text(f"{umask:04o}\n")
    stops: list[int] = []
    logged = 0

    def stop(sig: int, _frame: object) -> None:
        # Only note it: writing to the log here could interrupt a write of the main code
        # to the same buffered file ("reentrant call"), as a launcher's handler must not.
        stops.append(sig)

    def log_stops() -> None:
        nonlocal logged
        while logged < len(stops):
            log.write(f"stop {signal.Signals(stops[logged]).name}\n")
            logged += 1

    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(sig, stop)
    log.write("ready\n")
    while not stops:
        time.sleep(0.02)
    until = time.monotonic() + DRAIN_S  # cutting tasks, writing reports, closing the job
    while time.monotonic() < until:
        log_stops()
        time.sleep(0.02)
    log_stops()
    log.write("drained\n")
    return 42


def _command(argv: list[str]) -> tuple[int, list[str]]:
    """(ranks, the command) from a launch line: -n N and the first non-option word on."""
    ranks, i = 1, 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-n", "-N", "--ppn", "--cpu-bind", "-cc", "-d", "-L", "--depth"):
            if arg == "-n":
                ranks = int(argv[i + 1])
            i += 2
        elif arg.startswith("-"):
            i += 1
        else:
            return ranks, argv[i:]
    raise SystemExit("no command")


def tool_main(tool: str) -> int:
    out = out_dir()
    (out / f"{tool}.argv").write_text("\n".join(sys.argv) + "\n")
    signal.pthread_sigmask(signal.SIG_BLOCK, CAUGHT)
    ranks, command = _command(sys.argv[1:])
    step = [subprocess.Popen(command, env={**os.environ, "FAKE_RANK": str(r)},
                             start_new_session=True,
                             preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_UNBLOCK,
                                                                       CAUGHT))
            for r in range(ranks)]
    with (out / "step.pids").open("a") as fh:
        fh.write("".join(f"{p.pid}\n" for p in step))
    log = (out / f"{tool}.signals").open("a", buffering=1)
    last_int = [0.0]

    def to_step(sig: int) -> None:
        for proc in step:
            try:
                os.kill(proc.pid, sig)
            except ProcessLookupError:
                pass

    def watch() -> None:
        while True:
            info = signal.sigwaitinfo(CAUGHT)
            sig = signal.Signals(info.si_signo)
            log.write(f"{sig.name} from {info.si_pid}\n")
            if sig in FORWARDS[tool]:
                to_step(sig)
            elif tool == "srun" and sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
                if (out / "job-ending").exists():
                    os._exit(128 + sig)  # the job is being ended by Slurm: srun just leaves
                to_step(signal.SIGKILL)  # "forcing job termination"
            elif tool == "srun" and sig == signal.SIGINT:
                now = time.monotonic()
                if now - last_int[0] < 1.0:
                    to_step(signal.SIGINT)
                    to_step(signal.SIGKILL)
                last_int[0] = now
            elif sig not in (signal.SIGCONT, signal.SIGURG, signal.SIGWINCH):
                to_step(signal.SIGKILL)  # a signal the tool does not handle ends it: so do ranks
                os._exit(128 + sig)

    threading.Thread(target=watch, daemon=True).start()
    codes = [proc.wait() for proc in step]
    return max(codes, key=lambda c: (c != 0, abs(c))) if codes else 0


if __name__ == "__main__":
    name = Path(sys.argv[0]).name
    sys.exit(rank_main() if name.startswith("python") else tool_main(name))
