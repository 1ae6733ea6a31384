"""Multi-node MPI tasks: the launch prefix per MPI, and which one this machine speaks.

A task with ``num_nodes > 1`` or ``ranks_per_node > 1`` runs as its own MPI job: the head
worker of its reserved nodes starts ``launch_prefix(...) + task argv``. The prefixes are
pure functions of their arguments, so every MPI can be checked on a laptop; only
``choose_launcher`` touches the machine: it finds the ``mpiexec`` and asks it what it is
(``mpidetect``). The task's environment is ``mpienv.task_mpi_env`` of the worker's.

What was run for real on the development machine, and what was not (docs/mpi-tasks.md):

- ``mpich`` (MPICH's hydra ``mpiexec``, and its fork-only ``mpiexec.gforker`` for tasks
  on this host alone): TESTED with the mpich wheel (MPICH 5.0.2) and Debian's MPICH 4.0.2.
- ``openmpi`` (Open MPI's ``mpiexec``/``mpirun``): TESTED with Debian's Open MPI 4.1.4
  (tests/openmpi, the demo and the MPI-task e2e tests). Open MPI 5 (PRRTE) is not.
- ``srun`` (Slurm), ``pals`` (HPE Cray PALS ``mpiexec``, PBS Pro at ALCF), ``aprun``
  (Cobalt/ALPS, legacy), ``intel`` (Intel MPI's hydra): their flags follow the vendors'
  documentation, and the unit tests pin the exact argv so a site check changes them
  knowingly.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ..base.errors import BalsamError
from ..base.platform import SchedulerEnv, detect
from ..protocol import RunOrder
from . import mpidetect
from .mpienv import is_launcher_variable, task_mpi_env

__all__ = ["CPU_BINDS", "KINDS", "LAUNCHER_ENV", "UNTESTED_KINDS", "LaunchError",
           "MpiLauncher", "Prefixes", "choose_launcher", "is_launcher_variable", "launch_prefix",
           "needs_prefix", "task_mpi_env"]

log = logging.getLogger(__name__)

KINDS = ("mpich", "openmpi", "intel", "srun", "pals", "aprun")
# srun is tested against a real Slurm (tests/slurm: 22.05, the mpich wheel over PMI-2).
UNTESTED_KINDS = frozenset({"pals", "aprun", "intel"})
LAUNCHER_ENV = "BALSAM_MPI_LAUNCHER"  # explicit choice: one of KINDS
# How ranks are bound to CPUs, in one vocabulary mapped onto each launcher's own:
# "depth" binds each rank to threads_per_rank consecutive cores (ALCF's usual advice).
CPU_BINDS = ("none", "core", "hwthread", "depth")
_PROGRAM = {"mpich": "mpiexec", "openmpi": "mpiexec", "intel": "mpiexec", "srun": "srun",
            "pals": "mpiexec", "aprun": "aprun"}
_SYNTAX = {  # for the log: which dialect the prefixes speak
    "mpich": "MPICH hydra (mpiexec -n N --ppn P -hosts h1,h2)",
    "openmpi": "Open MPI (mpiexec -n N --host h1:P,h2:P)",
    "intel": "Intel MPI hydra (mpiexec -n N -ppn P -hosts h1,h2)",
    "srun": "Slurm (srun --overlap --nodes … --ntasks-per-node=P --nodelist=h1,h2)",
    "pals": "HPE Cray PALS (mpiexec -n N --ppn P --hosts h1,h2 --depth T)",
    "aprun": "ALPS (aprun -n N -N P -d T -L nids)",
}
_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")  # no ',' (the separator), no leading '-'


class LaunchError(BalsamError):
    """A multi-node task cannot be launched as asked (unknown launcher, bad layout)."""


@dataclass(frozen=True)
class MpiLauncher:
    """The launcher a worker uses for multi-rank tasks: its kind and the program to run.

    A task whose every host is ``host`` runs on virtual nodes of this one machine, whose
    cores it shares with the other virtual nodes' tasks. With MPICH, ``fork_program``
    (``mpiexec.gforker``) starts it without hydra's TCP control port, which any local
    user could connect to (docs/security.md); binding needs hydra, so a task that asks
    for one still goes through ``program``. With Open MPI its ranks are left unbound:
    mpirun's default binding refuses more ranks than the machine has cores.
    """

    kind: str
    program: str
    fork_program: str = ""
    host: str = ""
    why: str = field(default="", compare=False)  # how it was chosen, for the log

    @property
    def tested(self) -> bool:
        return self.kind not in UNTESTED_KINDS

    def describe(self) -> str:
        text = f"{_SYNTAX[self.kind]} through {self.program}"
        if self.fork_program:
            text += f"; tasks on this host only: {self.fork_program} -n N (no TCP port)"
        return text + (f" [{self.why}]" if self.why else "")

    def prefix(self, *, hosts: Sequence[str], ranks_per_node: int, threads_per_rank: int = 1,
               cpu_bind: str | None = None, gpus_per_rank: int = 0) -> list[str]:
        here = bool(self.host and hosts and all(h == self.host for h in hosts))
        if here and cpu_bind is None and self.fork_program:
            _check_layout(hosts, ranks_per_node, threads_per_rank, cpu_bind, gpus_per_rank)
            return [self.fork_program, "-n", str(len(hosts) * ranks_per_node)]
        if here and cpu_bind is None and self.kind == "openmpi":
            cpu_bind = "none"
        return launch_prefix(self.kind, hosts=hosts, ranks_per_node=ranks_per_node,
                             threads_per_rank=threads_per_rank, cpu_bind=cpu_bind,
                             gpus_per_rank=gpus_per_rank, program=self.program)


def needs_prefix(num_nodes: int, ranks_per_node: int) -> bool:
    """Whether a task runs under a launch prefix (else it is started as a plain process)."""
    return num_nodes > 1 or ranks_per_node > 1


def launch_prefix(kind: str, *, hosts: Sequence[str], ranks_per_node: int,
                  threads_per_rank: int = 1, cpu_bind: str | None = None,
                  gpus_per_rank: int = 0, program: str | None = None) -> list[str]:
    """The argv that starts ``len(hosts) * ranks_per_node`` ranks of a task on ``hosts``.

    ``hosts`` are the task's reserved nodes, one entry per node (the same name repeated
    when worker ranks are virtual nodes of one host). ``cpu_bind`` None leaves binding
    to the launcher's default; ``threads_per_rank`` always sets the CPUs reserved per
    rank where the launcher has a flag for it (srun, PALS, aprun, Open MPI, Intel MPI),
    since that is what keeps OpenMP threads of different ranks apart. The task's
    ``OMP_NUM_THREADS`` comes from its environment, which every one of these launchers
    forwards.
    """
    if kind not in KINDS:
        raise LaunchError(f"unknown MPI launcher {kind!r}; use one of {', '.join(KINDS)}")
    _check_layout(hosts, ranks_per_node, threads_per_rank, cpu_bind, gpus_per_rank)
    prog = program or _PROGRAM[kind]
    nodes, ppn, depth = len(hosts), ranks_per_node, threads_per_rank
    total = nodes * ppn
    if kind == "mpich":
        return [prog, "-n", str(total), "--ppn", str(ppn), "-hosts", ",".join(hosts),
                *_mpich_bind(cpu_bind, depth)]
    if kind == "openmpi":
        return [prog, "-n", str(total), "--host", _slots(hosts, ppn),
                *_openmpi_bind(cpu_bind, depth)]
    if kind == "intel":
        return [prog, "-n", str(total), "-ppn", str(ppn), "-hosts", ",".join(hosts),
                *_intel_bind(cpu_bind, depth)]
    if kind == "srun":
        # --overlap: the launcher's own step holds every CPU of the job; --overcommit: the
        # launcher, not Slurm, decides what fits on a node, so a step is never refused for
        # CPUs Slurm counted to the job ("More processors requested than permitted" for
        # 2 ranks per node in a job without --exclusive, measured on Slurm 22.05).
        return [prog, "--overlap", "--overcommit", f"--nodes={nodes}", f"--ntasks={total}",
                f"--ntasks-per-node={ppn}", f"--cpus-per-task={depth}",
                f"--nodelist={','.join(hosts)}", *_srun_bind(cpu_bind),
                *([f"--gpus-per-task={gpus_per_rank}"] if gpus_per_rank else [])]
    if kind == "pals":
        return [prog, "-n", str(total), "--ppn", str(ppn), "--hosts", ",".join(hosts),
                "--depth", str(depth), *_pals_bind(cpu_bind)]
    return [prog, "-n", str(total), "-N", str(ppn), "-d", str(depth),
            *_aprun_bind(cpu_bind, depth), "-L", ",".join(_nids(hosts))]


def _check_layout(hosts: Sequence[str], ranks_per_node: int, threads_per_rank: int,
                  cpu_bind: str | None, gpus_per_rank: int) -> None:
    if not hosts:
        raise LaunchError("a multi-node task needs at least one host; the launcher must "
                          "pass the hosts of the nodes it reserved")
    for host in hosts:
        # The list is one argv word joined by commas: a comma or a leading '-' in a name
        # would change the command's meaning, so such a name is refused, never quoted.
        if not _HOST.fullmatch(host):
            raise LaunchError(f"host name {host!r} cannot go in a launch command; check "
                              "the scheduler's node list")
    if ranks_per_node < 1 or threads_per_rank < 1 or gpus_per_rank < 0:
        raise LaunchError(f"bad task layout: ranks_per_node={ranks_per_node}, "
                          f"threads_per_rank={threads_per_rank}, gpus_per_rank="
                          f"{gpus_per_rank}; ranks and threads must be at least 1")
    if cpu_bind is not None and cpu_bind not in CPU_BINDS:
        raise LaunchError(f"unknown cpu_bind {cpu_bind!r}; use one of {', '.join(CPU_BINDS)}")


def _mpich_bind(cpu_bind: str | None, depth: int) -> list[str]:
    # hydra: -bind-to core:N binds a rank to N cores (checked here through each rank's
    # sched_getaffinity). -gpus-per-proc is left out: on this GPU-less host it made
    # mpiexec abort, and the task's devices are set through its environment anyway.
    if cpu_bind is None:
        return []
    target = {"none": "none", "core": "core", "hwthread": "hwthread",
              "depth": f"core:{depth}"}[cpu_bind]
    return ["-bind-to", target]


def _slots(hosts: Sequence[str], ppn: int) -> str:
    """Open MPI's ``--host h1:P,h2:P``: a name given twice (virtual nodes of one host)
    gets its slots summed, in first-seen order, which is what mpirun does with it too."""
    slots: dict[str, int] = {}
    for host in hosts:
        slots[host] = slots.get(host, 0) + ppn
    return ",".join(f"{h}:{n}" for h, n in slots.items())


def _openmpi_bind(cpu_bind: str | None, depth: int) -> list[str]:
    # mpirun(1) of Open MPI 4.1 (checked here by each rank's sched_getaffinity): ranks map
    # by slot, so --host h1:P,h2:P puts P on each; "--map-by slot:PE=T" reserves and binds
    # T cores per rank (it fails when a node has fewer cores than ranks × T).
    if cpu_bind is None:
        return ["--map-by", f"slot:PE={depth}"] if depth > 1 else []
    if cpu_bind == "depth":
        return ["--map-by", f"slot:PE={depth}", "--bind-to", "core"]
    return ["--bind-to", {"none": "none", "core": "core", "hwthread": "hwthread"}[cpu_bind]]


def _intel_bind(cpu_bind: str | None, depth: int) -> list[str]:
    # UNTESTED. Intel MPI Developer Reference: pinning is set through I_MPI_PIN /
    # I_MPI_PIN_DOMAIN (one rank per domain; "<size>:compact" = size logical CPUs).
    if cpu_bind is None:
        return ["-genv", "I_MPI_PIN_DOMAIN", f"{depth}:compact"] if depth > 1 else []
    if cpu_bind == "none":
        return ["-genv", "I_MPI_PIN", "0"]
    domain = {"core": "core", "hwthread": "1", "depth": f"{depth}:compact"}[cpu_bind]
    return ["-genv", "I_MPI_PIN_DOMAIN", domain]


def _srun_bind(cpu_bind: str | None) -> list[str]:
    # UNTESTED. srun(1): --cpu-bind=none|cores|threads; with --cpus-per-task=N a task
    # bound to "cores" gets its N CPUs, which is what "depth" means here.
    if cpu_bind is None:
        return []
    target = {"none": "none", "core": "cores", "hwthread": "threads", "depth": "cores"}
    return [f"--cpu-bind={target[cpu_bind]}"]


def _pals_bind(cpu_bind: str | None) -> list[str]:
    # UNTESTED. ALCF Polaris docs: mpiexec -n N --ppn P --depth D --cpu-bind depth.
    if cpu_bind is None:
        return []
    return ["--cpu-bind", {"none": "none", "core": "core", "hwthread": "thread",
                           "depth": "depth"}[cpu_bind]]


def _aprun_bind(cpu_bind: str | None, depth: int) -> list[str]:
    # UNTESTED (legacy). aprun(1) -cc cpu|depth|none; ALCF's Theta guide: "when using
    # -d, always use -cc depth", so threads > 1 without a choice get depth.
    if cpu_bind is None:
        return ["-cc", "depth"] if depth > 1 else []
    return ["-cc", {"none": "none", "core": "cpu", "hwthread": "cpu",
                    "depth": "depth"}[cpu_bind]]


def _nids(hosts: Sequence[str]) -> list[str]:
    """aprun -L takes node ids (3825), not host names (nid03825)."""
    out: list[str] = []
    for host in hosts:
        match = re.fullmatch(r"nid0*(\d+)", host)
        if match is None:
            raise LaunchError(f"aprun needs nid host names, got {host!r}; set "
                              f"{LAUNCHER_ENV} to the launcher this system uses")
        out.append(match.group(1))
    return out


# -- which launcher ------------------------------------------------------------------------
Probe = Callable[[str, Mapping[str, str]], mpidetect.MpiInfo]


def choose_launcher(environ: Mapping[str, str] = os.environ, *, setting: str = "",
                    sched: SchedulerEnv | None = None,
                    which: Callable[[str], str | None] = shutil.which,
                    exists: Callable[[str], bool] = os.path.exists,
                    python_bin: str = os.path.dirname(sys.executable),
                    probe: Probe = mpidetect.probe, host: str | None = None) -> MpiLauncher:
    """The launcher for multi-rank tasks on this platform (logged once by the caller).

    An explicit ``setting`` (the launcher's option) or ``$BALSAM_MPI_LAUNCHER`` wins.
    Otherwise Slurm → srun and Cobalt → aprun. Else the ``mpiexec`` (PBS: on PATH; no
    scheduler: the one beside this Python first, as the demo and ``local.sh`` use) is
    asked what it is (``mpidetect``): MPICH hydra, Open MPI or Intel MPI get their own
    syntax; anything else is PALS under PBS and hydra elsewhere, with a warning. Without
    a scheduler, MPICH's ``mpiexec.gforker`` beside hydra starts tasks on this host alone.
    """
    name = (setting or environ.get(LAUNCHER_ENV, "")).strip().lower()
    if name:
        if name not in KINDS:
            raise LaunchError(f"{LAUNCHER_ENV}={name!r} is not a launcher; use one of "
                              f"{', '.join(KINDS)}")
        why = "the launcher setting" if setting else f"{LAUNCHER_ENV}={name}"
        return _chosen(MpiLauncher(name, _find(name, which, exists, python_bin), why=why))
    scheduler = (sched or detect(environ)).scheduler
    if scheduler == "slurm":
        return _chosen(MpiLauncher("srun", _find("srun", which, exists, python_bin),
                                   why="a Slurm job"))
    if scheduler == "cobalt":
        return _chosen(MpiLauncher("aprun", _find("aprun", which, exists, python_bin),
                                   why="a Cobalt job"))
    local = scheduler != "pbs"
    program = _find("mpich" if local else "pals", which, exists, python_bin)
    info = probe(program, environ)
    kind = info.kind
    why = info.describe()
    if kind in ("unknown", "srun") or (local and kind == "pals"):
        if not local and not _is_hydra(program, exists):
            kind = "pals"
            why += "; taken for PALS under PBS"
        else:
            log.warning("could not tell which MPI %s belongs to (%s); using MPICH hydra's "
                        "syntax. Set %s to one of %s if that is wrong", program,
                        info.banner or "no version banner", LAUNCHER_ENV, ", ".join(KINDS))
            kind = "mpich"
            why += "; assumed MPICH hydra"
    fork = mpidetect.fork_starter(program, exists) if local and kind == "mpich" else None
    return _chosen(MpiLauncher(kind, program, fork_program=fork or "",
                               host=socket.gethostname() if host is None else host, why=why))


class Prefixes:
    """One node's launch prefixes. The launcher is chosen at the first multi-rank task,
    once: if none fits, each multi-rank task fails with the reason while single-rank work
    runs on."""

    def __init__(self, host: str, environ: Mapping[str, str] = os.environ) -> None:
        self.host = host  # the scheduler's name of this node (HELLO carries it)
        self.environ = environ
        self._launcher: MpiLauncher | None = None
        self._error = ""

    def of(self, order: RunOrder) -> list[str]:
        """The prefix of ``order`` (none for a single-rank task); LaunchError if it has
        none here."""
        if not needs_prefix(order.num_nodes, order.ranks_per_node):
            return []
        if self._launcher is None and not self._error:
            try:
                self._launcher = choose_launcher(self.environ)
            except LaunchError as exc:
                self._error = str(exc)
                log.error("multi-rank tasks cannot start here: %s", exc)
            else:
                if not self._launcher.tested:
                    log.warning("launch prefix %r is untested (docs/mpi-tasks.md)",
                                self._launcher.kind)
        if self._launcher is None:
            raise LaunchError(self._error)
        hosts = order.hosts or (self.host,) * max(1, order.num_nodes)
        if order.env_script:  # the bare name, looked up on the PATH the script sets
            return launch_prefix(self._launcher.kind, hosts=hosts,
                                 ranks_per_node=order.ranks_per_node,
                                 threads_per_rank=order.threads,
                                 gpus_per_rank=order.gpus_per_rank)
        return self._launcher.prefix(hosts=hosts, ranks_per_node=order.ranks_per_node,
                                     threads_per_rank=order.threads,
                                     gpus_per_rank=order.gpus_per_rank)


def _chosen(launcher: MpiLauncher) -> MpiLauncher:
    log.info("multi-rank tasks start with %s", launcher.describe())
    return launcher


def _find(kind: str, which: Callable[[str], str | None], exists: Callable[[str], bool],
          python_bin: str) -> str:
    if kind in ("mpich", "openmpi", "intel"):
        beside = os.path.join(python_bin, "mpiexec")
        if exists(beside):
            return beside
    found = which(_PROGRAM[kind])
    if found is None:
        raise LaunchError(f"no {_PROGRAM[kind]!r} on PATH for the {kind} launcher; load "
                          f"the site's MPI module or set {LAUNCHER_ENV}")
    return found


def _is_hydra(path: str, exists: Callable[[str], bool]) -> bool:
    """MPICH installs ``mpiexec`` beside ``mpiexec.hydra`` (a copy or a link to it)."""
    return os.path.basename(path) == "mpiexec.hydra" or exists(
        os.path.join(os.path.dirname(path), "mpiexec.hydra"))
