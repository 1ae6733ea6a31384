"""What MPI is behind an mpiexec: banners as each MPI printed them (or documents them),
the cache, and the environment of a launcher's tasks under each launcher."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pytest

from balsam_mpi.node import mpidetect
from balsam_mpi.node.mpidetect import classify, fork_starter, probe
from balsam_mpi.node.mpienv import START_VARS, is_launcher_variable, task_mpi_env

# Printed here: the mpich wheel's (MPICH 5.0.2) and Debian's MPICH 4.0.2 hydra (the
# first lines; the rest lists launchers, among them "slurm"), Debian's Open MPI 4.1.4.
HYDRA_5 = """HYDRA build details:
    Version:                                 5.0.2
    Release Date:                            Fri Sep 25 20:45:26 UTC 2026
    CC:                              cc
    Configure options:                       --with-device=ch4:ucx,ofi --with-pm=hydra:gforker
    Process Manager:                         pmi
    Launchers available:                     ssh rsh fork slurm ll lsf sge manual persist
    Resource management kernels available:   user slurm ll lsf sge pbs cobalt
"""
OPENMPI_4_MPIEXEC = """mpiexec (OpenRTE) 4.1.4

Report bugs to http://www.open-mpi.org/community/help/
"""
OPENMPI_4_MPIRUN = "mpirun (Open MPI) 4.1.4\n\nReport bugs to http://www.open-mpi.org/community/help/\n"
# From the vendors' documentation (not run here).
OPENMPI_5 = "prterun (Open MPI) 5.0.3\n\nReport bugs to https://www.open-mpi.org/community/help/\n"
INTEL = "Intel(R) MPI Library for Linux* OS, Version 2021.10 Build 20230619 (id: c2e19c2f3e)\n" \
        "Copyright 2003-2023, Intel Corporation.\n"
SLURM = "slurm 22.05.8\n"


@pytest.mark.parametrize(("text", "kind", "banner"), [
    (HYDRA_5, "mpich", "HYDRA build details: Version 5.0.2"),
    (OPENMPI_4_MPIEXEC, "openmpi", "mpiexec (OpenRTE) 4.1.4"),
    (OPENMPI_4_MPIRUN, "openmpi", "mpirun (Open MPI) 4.1.4"),
    (OPENMPI_5, "openmpi", "prterun (Open MPI) 5.0.3"),
    (INTEL, "intel", INTEL.splitlines()[0]),
    (SLURM, "srun", "slurm 22.05.8"),
    ("", "unknown", ""),
    ("invalid mpiexec argument --version\nUsage: mpiexec -usize", "unknown",
     "invalid mpiexec argument --version"),
])
def test_banners(text: str, kind: str, banner: str) -> None:
    info = classify(text, "/x/mpiexec")
    assert (info.kind, info.banner) == (kind, banner)


def test_pals_is_known_by_its_path() -> None:
    assert classify("", "/opt/cray/pals/1.2.12/bin/mpiexec").kind == "pals"


def test_probe_runs_version_once_per_file(tmp_path: Path) -> None:
    program = tmp_path / "mpiexec"
    program.write_text("#!/bin/sh\necho 'mpiexec (OpenRTE) 4.1.4'\n")
    program.chmod(0o755)
    calls: list[tuple[list[str], dict[str, str]]] = []

    def run(argv: list[str], env: Mapping[str, str]) -> str:
        calls.append((argv, dict(env)))
        return mpidetect._run_version(argv, env)

    rank_env = {"PATH": "/bin", "PMI_FD": "9", "OMPI_COMM_WORLD_RANK": "1"}
    assert probe(str(program), rank_env, run=run).kind == "openmpi"
    assert probe(str(program), rank_env, run=run).kind == "openmpi"
    assert len(calls) == 1
    assert calls[0][0] == [str(program), "--version"]
    assert calls[0][1] == {"PATH": "/bin"}  # asked outside the launcher's MPI job
    program.write_text("#!/bin/sh\necho 'HYDRA build details:'\n")  # a new file: asked again
    assert probe(str(program), rank_env, run=run).kind == "mpich"
    assert len(calls) == 2


def test_probe_of_a_missing_or_hanging_program_is_unknown(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    assert probe(str(tmp_path / "absent")).kind == "unknown"
    slow = tmp_path / "slow"
    slow.write_text("#!/bin/sh\nexec sleep 30\n")
    slow.chmod(0o755)
    monkeypatch.setattr(mpidetect, "VERSION_TIMEOUT_S", 0.5)
    assert probe(str(slow)).kind == "unknown"


def test_fork_starter_beside_hydra(tmp_path: Path) -> None:
    assert fork_starter(str(tmp_path / "mpiexec")) is None
    (tmp_path / "mpiexec.gforker").touch()
    assert fork_starter(str(tmp_path / "mpiexec")) == str(tmp_path / "mpiexec.gforker")


# -- what each launcher set in a rank, and what a task keeps ------------------------------
# Printed from a real rank of Debian's Open MPI 4.1.4 (`mpirun --oversubscribe --bind-to
# none -n 2 python`), values shortened: everything mpirun added to the caller's env.
OPENMPI_RANK = {
    "HFI_NO_BACKTRACE": "1", "IPATH_NO_BACKTRACE": "1", "OMPI_APP_CTX_NUM_PROCS": "2",
    "OMPI_ARGV": "outer.py", "OMPI_COMMAND": "python", "OMPI_COMM_WORLD_LOCAL_RANK": "0",
    "OMPI_COMM_WORLD_LOCAL_SIZE": "2", "OMPI_COMM_WORLD_NODE_RANK": "0",
    "OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2",
    "OMPI_FILE_LOCATION": "/tmp/ompi.vm.0/pid.2351/0/0", "OMPI_FIRST_RANKS": "0",
    "OMPI_MCA_ess": "^singleton", "OMPI_MCA_ess_base_jobid": "1708195841",
    "OMPI_MCA_ess_base_vpid": "0", "OMPI_MCA_hwloc_base_binding_policy": "none",
    "OMPI_MCA_initial_wdir": "/tmp/w", "OMPI_MCA_mpi_oversubscribe": "0",
    "OMPI_MCA_orte_app_num": "0", "OMPI_MCA_orte_ess_node_rank": "0",
    "OMPI_MCA_orte_ess_num_procs": "2", "OMPI_MCA_orte_hnp_uri": "1708195840.0;tcp://x:1",
    "OMPI_MCA_orte_jobfam_session_dir": "/tmp/ompi.vm.0/pid.2351",
    "OMPI_MCA_orte_launch": "1", "OMPI_MCA_orte_local_daemon_uri": "1708195840.0;tcp://x:1",
    "OMPI_MCA_orte_num_nodes": "1", "OMPI_MCA_orte_precondition_transports": "f975-4ad4",
    "OMPI_MCA_orte_tmpdir_base": "/tmp", "OMPI_MCA_orte_top_session_dir": "/tmp/ompi.vm.0",
    "OMPI_MCA_pmix": "^s1,s2,cray,isolated", "OMPI_MCA_rmaps_base_oversubscribe": "1",
    "OMPI_MCA_shmem_RUNTIME_QUERY_hint": "mmap", "OMPI_NUM_APP_CTX": "1",
    "OMPI_UNIVERSE_SIZE": "2", "PMIX_BFROP_BUFFER_TYPE": "PMIX_BFROP_BUFFER_NON_DESC",
    "PMIX_DSTORE_21_BASE_PATH": "/tmp/x", "PMIX_DSTORE_ESH_BASE_PATH": "/tmp/y",
    "PMIX_GDS_MODULE": "ds21,ds12,hash", "PMIX_HOSTNAME": "vm", "PMIX_ID": "1708195841.0",
    "PMIX_NAMESPACE": "1708195841", "PMIX_RANK": "0", "PMIX_SECURITY_MODE": "native",
    "PMIX_SERVER_TMPDIR": "/tmp/ompi.vm.0/pid.2351",
    "PMIX_SERVER_URI4": "1708195840.0;tcp4://127.0.0.1:45383",
    "PMIX_SERVER_URI41": "1708195840.0;tcp4://127.0.0.1:45383",
    "PMIX_SYSTEM_TMPDIR": "/tmp", "PMIX_VERSION": "4.2.2rc2",
    START_VARS: "OMPI_MCA_rmaps_base_oversubscribe,OMPI_MCA_hwloc_base_binding_policy",
}
GFORKER_RANK = {"PMI_FD": "8", "PMI_RANK": "1", "PMI_SIZE": "2", "PMI_DEBUG": "0",
                "MPI_APPNUM": "0", "MPI_UNIVERSE_SIZE": "-1"}
USER = {  # the user's own MPI settings: a task must get every one of them
    "PATH": "/bin", "OMPI_MCA_btl_tcp_if_include": "lo", "OMPI_MCA_pml": "ob1",
    "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    "PMIX_MCA_gds": "hash", "PRTE_MCA_ras_base_launch_orted_on_hn": "1",
    "I_MPI_FABRICS": "shm:ofi", "MPIEXEC_TIMEOUT": "600", "HYDRA_DEBUG": "0",
    "OMPI_MCA_orte_tmpdir_base": "/scratch/ompi", "OMPI_MCA_orte_keep_fqdn_hostnames": "1",
}


def test_open_mpi_rank_identity_goes_and_the_users_settings_stay() -> None:
    """The scrub used to drop every OMPI_*: the user's OMPI_MCA_* tuning and
    OMPI_ALLOW_RUN_AS_ROOT* went with the rank's identity."""
    assert task_mpi_env({**OPENMPI_RANK, **USER}) == USER


def test_a_task_keeps_the_session_directory_base_of_the_launchers_daemon() -> None:
    """Open MPI's orted sets orte_tmpdir_base in every rank to its own (the user's choice,
    or /tmp). Scrubbed with the orte_* family, a task's mpirun or singleton daemon kept its
    session directory in /tmp whatever the user had set, among other jobs' leftovers."""
    assert task_mpi_env(OPENMPI_RANK) == {"OMPI_MCA_orte_tmpdir_base": "/tmp"}


def test_gforker_rank_identity_goes() -> None:
    assert task_mpi_env({**GFORKER_RANK, **USER}) == USER


def test_a_user_setting_of_the_same_name_is_never_in_the_start_list() -> None:
    # localstart lists only what mpirun set because of its own options; a user's own
    # binding policy was there before, so it is not listed and stays.
    env = {"OMPI_MCA_hwloc_base_binding_policy": "core", START_VARS: "", "PATH": "/bin"}
    assert task_mpi_env(env) == {"OMPI_MCA_hwloc_base_binding_policy": "core",
                                 "PATH": "/bin"}


def test_the_start_list_cannot_hide_other_variables() -> None:
    env = {START_VARS: "PATH,HOME,OMPI_MCA_x", "PATH": "/bin", "HOME": "/h",
           "OMPI_MCA_x": "1"}
    assert task_mpi_env(env) == {"PATH": "/bin", "HOME": "/h"}


@pytest.mark.parametrize("name", sorted(USER))
def test_user_settings_are_not_launcher_variables(name: str) -> None:
    assert not is_launcher_variable(name)


def test_real_environment_is_not_emptied() -> None:
    kept = task_mpi_env(os.environ)
    assert kept.get("PATH") == os.environ.get("PATH")
