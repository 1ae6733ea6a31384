"""Multi-node MPI tasks: the launch prefix per platform, and the environment a task gets.

A task with ``num_nodes > 1`` or ``ranks_per_node > 1`` runs as its own MPI job: the head
worker of its reserved nodes starts ``launch_prefix(...) + task argv``. Everything here is
a pure function of its arguments (and of an environment passed in), so every platform can
be checked on a laptop; only what ``choose_launcher`` finds on PATH touches the machine.

What was run for real on the development machine, and what was not (docs/mpi-tasks.md):

- ``mpich`` (MPICH's hydra ``mpiexec``): TESTED — a nested ``mpiexec -n 4 --ppn 2 -hosts
  localhost,localhost`` from inside each rank of ``mpiexec -n 2`` (tests/e2e), and the
  ``-bind-to`` forms by reading each rank's CPU affinity.
- ``srun`` (Slurm), ``pals`` (HPE Cray PALS ``mpiexec``, PBS Pro at ALCF), ``aprun``
  (Cobalt/ALPS, legacy): UNTESTED — no such system here. Their flags follow the
  schedulers' documentation (srun(1); ALCF's Polaris "Running Jobs" page; aprun(1) and
  ALCF's Theta/XC40 guide), and the unit tests pin the exact argv so a site check
  changes them knowingly.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from .errors import BalsamError
from .platform import SchedulerEnv, detect

KINDS = ("mpich", "srun", "pals", "aprun")
UNTESTED_KINDS = frozenset({"srun", "pals", "aprun"})
LAUNCHER_ENV = "BALSAM_MPI_LAUNCHER"  # explicit choice: one of KINDS
# How ranks are bound to CPUs, in one vocabulary mapped onto each launcher's own:
# "depth" binds each rank to threads_per_rank consecutive cores (ALCF's usual advice).
CPU_BINDS = ("none", "core", "hwthread", "depth")
_PROGRAM = {"mpich": "mpiexec", "srun": "srun", "pals": "mpiexec", "aprun": "aprun"}
_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")  # no ',' (the separator), no leading '-'


class LaunchError(BalsamError):
    """A multi-node task cannot be launched as asked (unknown launcher, bad layout)."""


@dataclass(frozen=True)
class MpiLauncher:
    """The launcher a worker uses for multi-rank tasks: its kind and the program to run."""

    kind: str
    program: str

    @property
    def tested(self) -> bool:
        return self.kind not in UNTESTED_KINDS

    def prefix(self, *, hosts: Sequence[str], ranks_per_node: int, threads_per_rank: int = 1,
               cpu_bind: str | None = None, gpus_per_rank: int = 0) -> list[str]:
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
    rank where the launcher has a flag for it (srun, PALS, aprun), since that is what
    keeps OpenMP threads of different ranks apart. The task's ``OMP_NUM_THREADS`` comes
    from its environment, which every one of these launchers forwards.
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
def choose_launcher(environ: Mapping[str, str] = os.environ, *, setting: str = "",
                    sched: SchedulerEnv | None = None,
                    which: Callable[[str], str | None] = shutil.which,
                    exists: Callable[[str], bool] = os.path.exists,
                    python_bin: str = os.path.dirname(sys.executable)) -> MpiLauncher:
    """The launcher for multi-rank tasks on this platform.

    An explicit ``setting`` (the launcher's option) or ``$BALSAM_MPI_LAUNCHER`` wins.
    Otherwise the scheduler decides: Slurm → srun, Cobalt → aprun, PBS → PALS's
    ``mpiexec`` unless the ``mpiexec`` on PATH is MPICH's hydra (then mpich), no
    scheduler → hydra, preferring the ``mpiexec`` beside this Python (the venv's, the
    one the job templates start the launcher with).
    """
    name = (setting or environ.get(LAUNCHER_ENV, "")).strip().lower()
    if name:
        if name not in KINDS:
            raise LaunchError(f"{LAUNCHER_ENV}={name!r} is not a launcher; use one of "
                              f"{', '.join(KINDS)}")
        return MpiLauncher(name, _find(name, which, exists, python_bin))
    scheduler = (sched or detect(environ)).scheduler
    if scheduler == "slurm":
        return MpiLauncher("srun", _find("srun", which, exists, python_bin))
    if scheduler == "cobalt":
        return MpiLauncher("aprun", _find("aprun", which, exists, python_bin))
    if scheduler == "pbs":
        found = which("mpiexec")
        if found is not None and _is_hydra(found, exists):
            return MpiLauncher("mpich", found)
        return MpiLauncher("pals", _find("pals", which, exists, python_bin))
    return MpiLauncher("mpich", _find("mpich", which, exists, python_bin))


def _find(kind: str, which: Callable[[str], str | None], exists: Callable[[str], bool],
          python_bin: str) -> str:
    if kind == "mpich":
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


# -- the task's environment ----------------------------------------------------------------
# What the launcher's own process manager sets for each of ITS ranks: who the rank is and
# how to reach the process manager. A task that inherits them is not a fresh job.
# Measured here (MPICH 5 hydra): a single-rank mpi4py task started with the launcher's
# PMI_FD/PMI_RANK/PMI_SIZE fails in MPI_Init ("PMI_Init returned -1") when the launcher's
# descriptors are closed, as the runner closes them; with them left open it talked to the
# launcher's own process manager and took the whole launcher job down. PMI_FD alone
# decides it there; the rest go as well because they describe a rank the task is not.
# A nested hydra mpiexec worked even unscrubbed (it sets PMI_* afresh for its ranks).
_SCRUB_PREFIXES = (
    "PMI_", "PMIX_",  # MPICH/hydra, Cray PMI, Slurm's PMI-2 and PMIx plugins
    "HYDI_",  # hydra's internal control descriptor
    "MPI_LOCALNRANKS", "MPI_LOCALRANKID",  # hydra: the launcher rank's node-local rank
    "PALS_",  # UNTESTED: Cray PALS rank identity (PALS_RANKID, PALS_NODEID, PALS_APID …)
    "OMPI_", "PRTE_",  # UNTESTED: Open MPI / PRRTE job identity (not a supported launcher)
    "ALPS_APP_",  # UNTESTED: ALPS (aprun) application identity
    "SLURM_STEP_", "SLURM_SRUN_COMM_",  # UNTESTED: the launcher's Slurm step …
)
# UNTESTED: Slurm's per-task and per-step variables (srun(1), OUTPUT ENVIRONMENT). The
# step-layout ones are also srun INPUT variables: a task's own `srun` would otherwise
# inherit the launcher step's one-task-per-node, all-CPUs layout. Job-level variables
# (SLURM_JOB_ID, SLURM_JOB_NODELIST, …) stay: srun needs them to find the allocation.
_SCRUB_NAMES = frozenset({
    "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID", "SLURM_TASK_PID", "SLURM_GTIDS",
    "SLURM_STEPID", "SLURM_LAUNCH_NODE_IPADDR", "SLURM_NTASKS", "SLURM_NPROCS",
    "SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE", "SLURM_CPUS_PER_TASK",
    "SLURM_CPU_BIND", "SLURM_CPU_BIND_TYPE", "SLURM_CPU_BIND_LIST",
    "SLURM_CPU_BIND_VERBOSE", "SLURM_DISTRIBUTION",
})


def is_launcher_variable(name: str) -> bool:
    """True for a variable of the launcher's own MPI job that a task must not inherit.

    Kept on purpose: MPICH_* and MPIR_CVAR_* (MPICH tuning, e.g. Cray's
    MPICH_GPU_SUPPORT_ENABLED), HYDRA_* (hydra options a user set; hydra sets none in its
    ranks), FI_*, UCX_*, OMP_*, CUDA_*/ROCR_*/ZE_* (replaced per task by the GPU share).
    """
    return name in _SCRUB_NAMES or name.startswith(_SCRUB_PREFIXES)


def task_mpi_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The worker's environment without its MPI job's identity (compute once per worker).

    A task's own ``env`` is applied after this, so a variable a task sets on purpose
    (an ``OMPI_MCA_*`` tuning, say) is never removed.
    """
    return {k: v for k, v in environ.items() if not is_launcher_variable(k)}
