"""Where this process runs: which batch scheduler, which job, which nodes, how much time.

``detect()`` reads only the environment it is given (and, for PBS and Cobalt, the node
file that environment names), so every scheduler can be tested with a fake environment on
a laptop. The launcher uses it to adopt the ``batch_jobs`` row that ``balsam-mpi submit``
inserted — by ``(scheduler, job_id)``, or by ``BALSAM_BATCH_JOB_ID`` — and to default its
``--time-limit-min``. Where the environment does not say when the job ends (Slurm 22.05
sets neither ``SLURM_JOB_END_TIME`` nor ``SLURM_JOB_START_TIME``), ``with_end_time`` asks
the scheduler once (``squeue``, ``qstat -f``). ``node_name`` is this host as the scheduler
names it, which is what every launch prefix must carry.

Multi-node MPI tasks (issue 7) build on it in ``node/mpilaunch.py``: ``choose_launcher`` picks
the launch prefix from this scheduler (srun, PALS ``mpiexec``, aprun — all three UNTESTED
on a live system, see docs/mpi-tasks.md; MPICH's hydra without a scheduler, tested
here), and ``task_mpi_env`` keeps the launcher's own PMI variables out of tasks.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BalsamError

log = logging.getLogger(__name__)

SCHEDULERS = ("pbs", "slurm", "cobalt", "local")
QUERY_TIMEOUT_S = 10.0  # asking the scheduler for the end time must not stall a launcher
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@\[\]\-]*")
BATCH_JOB_ID_ENV = "BALSAM_BATCH_JOB_ID"  # the batch_jobs row id a submitted script carries


class PlatformError(BalsamError):
    """The scheduler's environment is malformed (a node list or time we cannot read)."""


@dataclass(frozen=True)
class SchedulerEnv:
    """What the batch scheduler tells a job about itself (all optional but the name)."""

    scheduler: str  # 'pbs' | 'slurm' | 'cobalt' | 'local'
    job_id: str | None = None
    nodes: list[str] = field(default_factory=list)
    wall_time_min: float | None = None
    end_time: float | None = None  # epoch seconds when the scheduler ends the job, if known


def detect(environ: Mapping[str, str] = os.environ) -> SchedulerEnv:
    """The scheduler environment of this process; ``local`` when no scheduler is found.

    Checked in the order PBS, Slurm, Cobalt: a job id variable decides, since login
    shells on some sites export stray scheduler variables without a job.
    """
    if environ.get("PBS_JOBID"):
        return _pbs(environ)
    if environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID"):
        return _slurm(environ)
    if environ.get("COBALT_JOBID"):
        return _cobalt(environ)
    return SchedulerEnv(scheduler="local", job_id=None, nodes=[socket.gethostname()])


def time_limit_min(env: SchedulerEnv, margin_min: float = 0.0,
                   now: float | None = None) -> float | None:
    """Minutes the launcher may run: time to the scheduler's end minus ``margin_min``.

    Prefers the end time (exact even when the launcher starts late in the job), else the
    requested wall time; None when neither is known. Never below zero.
    """
    if env.end_time is not None:
        left = (env.end_time - (time.time() if now is None else now)) / 60.0
    elif env.wall_time_min is not None:
        left = env.wall_time_min
    else:
        return None
    return max(0.0, left - margin_min)


def node_name(environ: Mapping[str, str] = os.environ) -> str:
    """This host as the scheduler names it in its node lists.

    Launch prefixes (``srun --nodelist``, PALS ``--hosts``) must carry these names: under
    Slurm the slurmd's ``SLURMD_NODENAME``, which need not be the host name (a fully
    qualified host name is enough to differ); under PBS this host's own entry of
    ``PBS_NODEFILE`` (often fully qualified); otherwise, or when neither says, the host
    name. The same order as :func:`detect`: a job id decides.
    """
    host = socket.gethostname()
    if environ.get("PBS_JOBID"):
        short = host.split(".")[0]
        for entry in read_nodefile(environ.get("PBS_NODEFILE", "")):
            if entry == host or entry.split(".")[0] == short:
                return entry
    elif environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID"):
        name = environ.get("SLURMD_NODENAME", "").strip()
        if name:
            return name
    return host


Runner = Callable[..., "subprocess.CompletedProcess[str]"]


def with_end_time(env: SchedulerEnv, environ: Mapping[str, str] = os.environ,
                  run: Runner = subprocess.run, now: float | None = None) -> SchedulerEnv:
    """``env`` with the job's end time, asked of the scheduler when its environment did not
    give it (Slurm: ``squeue -h -j ID -o %e``; PBS: ``qstat -f ID``, start time plus
    wall time). Called once, when a launcher starts. On any failure — the command missing,
    slow (``QUERY_TIMEOUT_S``), refusing, or an answer we cannot read — one warning says
    so and ``env`` is returned unchanged (the launcher then has only what it was given).
    """
    if env.end_time is not None or env.job_id is None or env.scheduler not in ("slurm", "pbs"):
        return env
    if not _JOB_ID.fullmatch(env.job_id):  # it becomes an argument: no option look-alikes
        log.warning("not asking the scheduler about job id %r: not a job id", env.job_id)
        return env
    if env.scheduler == "slurm":
        # ISO local time (2025-01-31T12:00:00), whatever the user's SLURM_TIME_FORMAT says.
        argv = ["squeue", "-h", "-j", env.job_id, "-o", "%e"]
        child_env = {**environ, "SLURM_TIME_FORMAT": "standard"}
    else:
        argv = ["qstat", "-f", env.job_id]
        child_env = dict(environ)
    command = " ".join(argv)
    why = ""
    try:
        done = run(argv, capture_output=True, text=True, timeout=QUERY_TIMEOUT_S,
                   env=child_env, stdin=subprocess.DEVNULL, check=False)
        if done.returncode != 0:
            said = (done.stderr or done.stdout).strip().splitlines()
            why = f"exit {done.returncode}: {said[0][:200] if said else 'no message'}"
        elif env.scheduler == "slurm":
            end = _squeue_end(done.stdout)
        else:
            end = _qstat_end(done.stdout, time.time() if now is None else now)
    except FileNotFoundError:
        why = f"{argv[0]} is not on PATH"
    except subprocess.TimeoutExpired:
        why = f"no answer in {QUERY_TIMEOUT_S:g} s"
    except (OSError, PlatformError) as exc:
        why = str(exc)
    if why:
        log.warning("could not learn when this job ends (%s: %s); the launcher has no time "
                    "limit unless --time-limit-min gives one", command, why)
        return env
    log.info("the scheduler says job %s ends at %s (%s)", env.job_id,
             time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(end)), command)
    return SchedulerEnv(env.scheduler, env.job_id, env.nodes, env.wall_time_min, end)


def _squeue_end(text: str) -> float:
    value = text.strip()
    try:
        return time.mktime(time.strptime(value, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        raise PlatformError(f"the end time {value[:60]!r} is not a time (no time "
                            "limit?)") from None


def _qstat_end(text: str, now: float) -> float:
    """Start time + ``Resource_List.walltime``; without ``stime``, now + what is left of
    the wall time by ``resources_used.walltime``."""
    fields = _qstat_fields(text)
    wall = fields.get("Resource_List.walltime")
    if not wall:
        raise PlatformError("qstat shows no Resource_List.walltime")
    wall_s = (_duration_min(wall, "Resource_List.walltime") or 0.0) * 60.0
    if not wall_s:
        raise PlatformError(f"Resource_List.walltime = {wall!r} is no limit")
    stime = fields.get("stime")
    if stime:
        try:
            return time.mktime(time.strptime(" ".join(stime.split()), "%a %b %d %H:%M:%S %Y")
                               ) + wall_s
        except ValueError:
            raise PlatformError(f"cannot read stime = {stime!r}") from None
    used = fields.get("resources_used.walltime")
    if used:
        return now + wall_s - (_duration_min(used, "resources_used.walltime") or 0.0) * 60.0
    raise PlatformError("qstat shows neither stime nor resources_used.walltime")


def _qstat_fields(text: str) -> dict[str, str]:
    """``name = value`` lines of ``qstat -f``; a long value continues on lines that start
    with a tab."""
    fields: dict[str, str] = {}
    last = ""
    for line in text.splitlines():
        if line.startswith("\t") and last:
            fields[last] += line.strip()
            continue
        name, sep, value = line.strip().partition(" = ")
        if sep:
            last = name
            fields[name] = value.strip()
    return fields


def batch_job_id(environ: Mapping[str, str] = os.environ) -> int | None:
    """The ``batch_jobs`` row id a submitted script exports, validated; None if unset."""
    raw = environ.get(BATCH_JOB_ID_ENV, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise PlatformError(f"{BATCH_JOB_ID_ENV}={raw!r} is not a batch job id; unset it or "
                            "set it to the id `balsam-mpi job ls` shows")
    return int(raw)


# -- PBS Pro -------------------------------------------------------------------------------
def _pbs(environ: Mapping[str, str]) -> SchedulerEnv:
    nodes = read_nodefile(environ.get("PBS_NODEFILE", ""))
    wall = _duration_min(environ.get("PBS_WALLTIME", ""), "PBS_WALLTIME")
    return SchedulerEnv("pbs", environ["PBS_JOBID"], nodes, wall, None)


# -- Slurm ---------------------------------------------------------------------------------
def _slurm(environ: Mapping[str, str]) -> SchedulerEnv:
    job_id = environ.get("SLURM_JOB_ID") or environ["SLURM_JOBID"]
    nodelist = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST") or ""
    end = _epoch(environ.get("SLURM_JOB_END_TIME", ""), "SLURM_JOB_END_TIME")
    start = _epoch(environ.get("SLURM_JOB_START_TIME", ""), "SLURM_JOB_START_TIME")
    wall = (end - start) / 60.0 if end is not None and start is not None else None
    return SchedulerEnv("slurm", job_id, expand_hostlist(nodelist), wall, end)


_BRACKET = re.compile(r"\[([^\[\]]*)\]")


def expand_hostlist(text: str) -> list[str]:
    """Expand Slurm's compressed host list: ``nid[0001-0003,0007],login1`` → 4+1 names.

    Zero padding follows the range's first bound, as Slurm writes it; several bracket
    groups in one name (``r[1-2]n[01-02]``) expand as their product, in Slurm's order.
    """
    hosts: list[str] = []
    for item in _split_top_level(text.strip()):
        parts = _BRACKET.split(item)  # literal, inside, literal, inside, ..., literal
        if "[" in "".join(parts[0::2]) or "]" in "".join(parts[0::2]):
            raise PlatformError(f"cannot read the host list {text!r}: unbalanced brackets")
        choices = [[p] if i % 2 == 0 else _expand_ranges(p, text)
                   for i, p in enumerate(parts)]
        hosts.extend("".join(combo) for combo in itertools.product(*choices))
    return hosts


def _split_top_level(text: str) -> list[str]:
    items: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        if char == "," and depth == 0:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    items.append("".join(current))
    if depth != 0:
        raise PlatformError(f"cannot read the host list {text!r}: unbalanced brackets")
    return [item.strip() for item in items if item.strip()]


def _expand_ranges(spec: str, whole: str) -> list[str]:
    out: list[str] = []
    for piece in spec.split(","):
        piece = piece.strip()
        low, sep, high = piece.partition("-")
        if not low.isdigit() or (sep and not high.isdigit()):
            raise PlatformError(f"cannot read the host list {whole!r}: bad range {piece!r}")
        if not sep:
            out.append(low)
            continue
        if int(high) < int(low):
            raise PlatformError(f"cannot read the host list {whole!r}: range {piece!r} "
                                "runs backwards")
        width = len(low)
        out.extend(str(n).zfill(width) for n in range(int(low), int(high) + 1))
    return out


# -- Cobalt (legacy: Theta) ----------------------------------------------------------------
def _cobalt(environ: Mapping[str, str]) -> SchedulerEnv:
    if environ.get("COBALT_NODEFILE"):
        nodes = read_nodefile(environ["COBALT_NODEFILE"])
    else:
        nodes = _cobalt_partname(environ.get("COBALT_PARTNAME", ""))
    end = _epoch(environ.get("COBALT_ENDTIME", ""), "COBALT_ENDTIME")
    start = _epoch(environ.get("COBALT_STARTTIME", ""), "COBALT_STARTTIME")
    wall = (end - start) / 60.0 if end is not None and start is not None else None
    return SchedulerEnv("cobalt", environ["COBALT_JOBID"], nodes, wall, end)


def _cobalt_partname(text: str) -> list[str]:
    """Theta's COBALT_PARTNAME is a list of nid numbers (``3825-3828,3830``); aprun and the
    hostnames use the zero-padded ``nid03825`` form. Other partition names say nothing
    about hosts, so they give an empty list rather than a guess."""
    text = text.strip()
    if not text or not re.fullmatch(r"[0-9,\- ]+", text):
        return []
    return [f"nid{int(n):05d}" for n in _expand_ranges(text, text)]


# -- helpers -------------------------------------------------------------------------------
def read_nodefile(path: str) -> list[str]:
    """The distinct hosts of a scheduler node file, in order (PBS repeats a host per slot).

    A missing or unreadable file gives an empty list: the launcher then counts its ranks
    instead, which is what it can trust anyway.
    """
    if not path:
        return []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return []
    return list(dict.fromkeys(line.strip() for line in lines if line.strip()))


def _duration_min(text: str, name: str) -> float | None:
    """Minutes from seconds (``5400``) or ``[[HH:]MM:]SS`` — PBS sites print either."""
    text = text.strip()
    if not text:
        return None
    try:
        if ":" in text:
            seconds = 0.0
            for part in text.split(":"):
                seconds = seconds * 60 + float(part)
        else:
            seconds = float(text)
    except ValueError:
        raise PlatformError(f"cannot read {name}={text!r} as a duration; pass "
                            "--time-limit-min to the launcher instead") from None
    return seconds / 60.0 if seconds > 0 else None


def _epoch(text: str, name: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise PlatformError(f"cannot read {name}={text!r} as epoch seconds; pass "
                            "--time-limit-min to the launcher instead") from None
    return value if value > 0 else None
