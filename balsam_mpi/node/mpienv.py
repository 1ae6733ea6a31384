"""The environment a task gets: the worker's, minus what its MPI launcher set in the rank.

A launcher rank was started by some process manager (hydra, gforker, Open MPI's mpirun,
PALS, srun, aprun), which told it who it is and how to reach the manager through
environment variables. A task that inherits them is not a fresh job: measured here, an
mpi4py task given hydra's ``PMI_FD`` failed in ``MPI_Init`` or joined the launcher's own
job and took it down, and a task's ``mpirun`` given Open MPI 4.1's rank variables refused
to start ("mpirun does not support recursive calls"). Those variables are removed, and
only those: the user's own settings for their MPI — ``OMPI_MCA_*``, ``PMIX_MCA_*``,
``PRTE_MCA_*``, ``OMPI_ALLOW_RUN_AS_ROOT*``, ``MPICH_*``, ``MPIR_CVAR_*``, ``HYDRA_*``,
``I_MPI_*``, ``FI_*``, ``UCX_*`` — reach the task unchanged.

Open MPI turns some of its own command-line options into ``OMPI_MCA_*`` variables of the
ranks (``--oversubscribe`` → ``OMPI_MCA_rmaps_base_oversubscribe``). Only the starter
knows which ones it caused, so it names them in ``BALSAM_MPI_START_VARS`` (see
``localstart``) and they are removed as well; a name the user had set before is never
listed there. The launcher names the MPICH network module it chose for its own ranks
there too (``launcher/netmod.py``).
"""

from __future__ import annotations

from collections.abc import Mapping

START_VARS = "BALSAM_MPI_START_VARS"  # comma-separated: set in the ranks by our own start
STARTED_NETMOD = "MPIR_CVAR_CH4_NETMOD"  # launcher/netmod.py

_SCRUB_PREFIXES = (
    "PMI_", "PMIX_",  # MPICH/hydra/gforker, Cray PMI, Slurm's PMI-2 and PMIx, Open MPI
    "HYDI_",  # hydra's internal control descriptor
    "MPI_LOCALNRANKS", "MPI_LOCALRANKID",  # hydra: the launcher rank's node-local rank
    "PALS_",  # UNTESTED: Cray PALS rank identity (PALS_RANKID, PALS_NODEID, PALS_APID …)
    "OMPI_COMM_WORLD_",  # Open MPI: rank, size, local rank of the launcher's job
    "OMPI_MCA_orte_ess_", "OMPI_MCA_ess",  # Open MPI 4: the launcher job's ids
    "PRTE_",  # UNTESTED: Open MPI 5 / PRRTE job identity (PRTE_MCA_* is kept, below)
    "ALPS_APP_",  # UNTESTED: ALPS (aprun) application identity
    "SLURM_STEP_", "SLURM_SRUN_COMM_",  # UNTESTED: the launcher's Slurm step …
)
# User settings inside the scrubbed families: tuning a user sets for their own MPI runs.
_KEEP_PREFIXES = ("PMIX_MCA_", "PRTE_MCA_")
_SCRUB_NAMES = frozenset({
    # What Open MPI 4.1.4's mpirun set in a rank here, beyond the families above
    # (printed from a real rank: `mpirun -n 1 env`, diffed against the caller's env).
    "OMPI_APP_CTX_NUM_PROCS", "OMPI_ARGV", "OMPI_COMMAND", "OMPI_FILE_LOCATION",
    "OMPI_FIRST_RANKS", "OMPI_NUM_APP_CTX", "OMPI_UNIVERSE_SIZE", "OMPI_MCA_pmix",
    "OMPI_MCA_initial_wdir", "OMPI_MCA_mpi_oversubscribe",
    "OMPI_MCA_shmem_RUNTIME_QUERY_hint", "HFI_NO_BACKTRACE", "IPATH_NO_BACKTRACE",
    # Open MPI 4's orted: the job's daemon URIs, session directories and layout. Named one
    # by one, not as a family: OMPI_MCA_orte_* also holds the user's own settings, and
    # one of them, orte_tmpdir_base, decides where a task's mpirun or singleton keeps its
    # session directory (dropping it sent every task's daemon back to /tmp).
    "OMPI_MCA_orte_app_num", "OMPI_MCA_orte_bound_at_launch", "OMPI_MCA_orte_hnp_uri",
    "OMPI_MCA_orte_jobfam_session_dir", "OMPI_MCA_orte_launch",
    "OMPI_MCA_orte_local_daemon_uri", "OMPI_MCA_orte_num_nodes",
    "OMPI_MCA_orte_precondition_transports", "OMPI_MCA_orte_top_session_dir",
    # Set by the same orted code in some 4.x builds (odls_base_default_fns.c), not seen here.
    "OMPI_MCA_orte_num_restarts", "OMPI_MCA_orte_do_not_barrier",
    "OMPI_MCA_orte_staged_execution", "OMPI_MCA_orte_cpu_type", "OMPI_MCA_orte_cpu_model",
    # MPICH's gforker: the job's application number and universe size.
    "MPI_APPNUM", "MPI_UNIVERSE_SIZE",
    # UNTESTED: Slurm's per-task and per-step variables (srun(1), OUTPUT ENVIRONMENT). The
    # step-layout ones are also srun INPUT variables: a task's own `srun` would otherwise
    # inherit the launcher step's one-task-per-node, all-CPUs layout. Job-level variables
    # (SLURM_JOB_ID, SLURM_JOB_NODELIST, …) stay: srun needs them to find the allocation.
    "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID", "SLURM_TASK_PID", "SLURM_GTIDS",
    "SLURM_STEPID", "SLURM_LAUNCH_NODE_IPADDR", "SLURM_NTASKS", "SLURM_NPROCS",
    "SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE", "SLURM_CPUS_PER_TASK",
    "SLURM_CPU_BIND", "SLURM_CPU_BIND_TYPE", "SLURM_CPU_BIND_LIST",
    "SLURM_CPU_BIND_VERBOSE", "SLURM_DISTRIBUTION",
    START_VARS,
})


def is_launcher_variable(name: str) -> bool:
    """True for a variable of the launcher's own MPI job that a task must not inherit.

    Kept on purpose: MPICH_* and MPIR_CVAR_* (MPICH tuning, e.g. Cray's
    MPICH_GPU_SUPPORT_ENABLED), HYDRA_* (hydra options a user set; hydra sets none in its
    ranks), OMPI_MCA_* other than the launcher job's identity, OMPI_ALLOW_RUN_AS_ROOT*,
    PMIX_MCA_*, PRTE_MCA_*, I_MPI_*, FI_*, UCX_*, OMP_*, CUDA_*/ROCR_*/ZE_* (replaced per
    task by the GPU share).
    """
    if name.startswith(_KEEP_PREFIXES):
        return False
    return name in _SCRUB_NAMES or name.startswith(_SCRUB_PREFIXES)


def task_mpi_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The worker's environment without its MPI job's identity (compute once per worker).

    A task's own ``env`` is applied after this, so a variable a task sets on purpose
    (an ``OMPI_MCA_*`` tuning, say) is never removed.
    """
    # Only Open MPI's own parameters, and the MPICH network module the launcher chose for
    # its own ranks (launcher/netmod.py), can be named: the list cannot hide anything else.
    started = {n for n in environ.get(START_VARS, "").split(",")
               if n.startswith(("OMPI_MCA_", "PRTE_MCA_")) or n == STARTED_NETMOD}
    return {k: v for k, v in environ.items()
            if k not in started and not is_launcher_variable(k)}
