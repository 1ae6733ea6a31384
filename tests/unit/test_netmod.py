"""The MPICH network module of the launcher's own ranks (launcher/netmod.py): OFI under a
multi-node srun when the MPI is an MPICH with both UCX and OFI (the PyPI wheel), never
against the user's choice, and never passed on to tasks."""

from __future__ import annotations

import pytest

from balsam_mpi.launcher import netmod
from balsam_mpi.node.mpienv import START_VARS, task_mpi_env

WHEEL = ("MPICH Version:      5.0.2\nMPICH ABI:          18:2:6\n"
         "MPICH Device:       ch4:ucx ofi\n"
         "MPICH configure:    --with-device=ch4:ucx,ofi --with-pm=hydra:gforker\n")
UCX_ONLY = WHEEL.replace("ch4:ucx ofi", "ch4:ucx")
CH3 = WHEEL.replace("ch4:ucx ofi", "ch3:nemesis")
OPEN_MPI = "Open MPI v4.1.4, package: Debian OpenMPI, ident: 4.1.4, repo rev: v4.1.4"
SRUN = {"SLURM_STEP_ID": "0", "SLURM_STEP_NUM_NODES": "3", "PMI_FD": "7", "PMI_SIZE": "3",
        "PMI_RANK": "0"}


def test_the_modules_of_an_mpich_are_read_from_its_version_text() -> None:
    assert netmod.mpich_netmods(WHEEL) == {"ucx", "ofi"}
    assert netmod.mpich_netmods(UCX_ONLY) == {"ucx"}
    assert netmod.mpich_netmods(CH3) == frozenset()
    assert netmod.mpich_netmods(OPEN_MPI) == frozenset()


def test_the_wheel_under_a_multi_node_srun_asks_for_ofi() -> None:
    assert netmod.choose(SRUN, WHEEL) == "ofi"


@pytest.mark.parametrize("change", [
    {"MPIR_CVAR_CH4_NETMOD": "ucx"},  # the user chose: always wins
    {"MPICH_CH4_NETMOD": "ucx"},
    {"SLURM_STEP_NUM_NODES": "1"},  # one node: no address exchange through PMI
    {"SLURM_STEP_ID": None},  # not a step srun started
    {"PMI_FD": None, "PMI_SIZE": None},  # no Slurm PMI (PMIx, or none)
    {"MPI_LOCALNRANKS": "1"},  # hydra started it (inside an allocation): its own PMI
], ids=["user-cvar", "user-mpich-var", "one-node", "no-step", "no-pmi", "hydra"])
def test_left_alone_otherwise(change: dict[str, str | None]) -> None:
    env = {**SRUN, **{k: v for k, v in change.items() if v is not None}}
    for k, v in change.items():
        if v is None:
            env.pop(k)
    assert netmod.choose(env, WHEEL) is None


@pytest.mark.parametrize("version", [UCX_ONLY, CH3, OPEN_MPI])
def test_only_an_mpich_that_has_both_modules(version: str) -> None:
    assert netmod.choose(SRUN, version) is None


def test_the_choice_is_set_for_mpi_init_and_kept_from_tasks() -> None:
    env = {**SRUN, START_VARS: "OMPI_MCA_rmaps_base_oversubscribe"}
    assert netmod.apply(env, WHEEL, START_VARS) == "ofi"
    assert env["MPIR_CVAR_CH4_NETMOD"] == "ofi"
    assert env[START_VARS] == "OMPI_MCA_rmaps_base_oversubscribe,MPIR_CVAR_CH4_NETMOD"
    assert "MPIR_CVAR_CH4_NETMOD" not in task_mpi_env(env)
    user = {**SRUN, "MPIR_CVAR_CH4_NETMOD": "ucx"}
    assert netmod.apply(user, WHEEL, START_VARS) is None
    assert task_mpi_env(user)["MPIR_CVAR_CH4_NETMOD"] == "ucx"  # the user's reaches tasks
