"""Launch prefixes, the launcher's choice and the task environment: pure, no MPI run.

Every kind's argv is pinned here exactly. hydra and Open MPI were run for real here
(tests/e2e, tests/openmpi); srun, PALS, aprun and Intel MPI are untested on a live system
(docs/mpi-tasks.md), so any change to them must be a deliberate one.
"""

from __future__ import annotations

import pytest

from balsam_mpi.base.errors import BalsamError
from balsam_mpi.base.platform import SchedulerEnv
from balsam_mpi.node.mpidetect import MpiInfo
from balsam_mpi.node.mpilaunch import (
    KINDS,
    UNTESTED_KINDS,
    MpiLauncher,
    choose_launcher,
    is_launcher_variable,
    launch_prefix,
    needs_prefix,
    task_mpi_env,
)

TWO = ["x1", "x2"]


def test_mpich_prefix_as_tested_here() -> None:
    assert launch_prefix("mpich", hosts=["localhost", "localhost"], ranks_per_node=2) == [
        "mpiexec", "-n", "4", "--ppn", "2", "-hosts", "localhost,localhost"]


@pytest.mark.parametrize(("bind", "tail"), [
    ("none", ["-bind-to", "none"]),
    ("core", ["-bind-to", "core"]),
    ("hwthread", ["-bind-to", "hwthread"]),
    ("depth", ["-bind-to", "core:4"]),
])
def test_mpich_binding(bind: str, tail: list[str]) -> None:
    argv = launch_prefix("mpich", hosts=TWO, ranks_per_node=1, threads_per_rank=4,
                         cpu_bind=bind, program="/v/bin/mpiexec")
    assert argv == ["/v/bin/mpiexec", "-n", "2", "--ppn", "1", "-hosts", "x1,x2", *tail]


def test_openmpi_prefix_as_tested_here() -> None:
    # Virtual nodes of one host: mpirun sums the slots of a repeated name; so do we.
    assert launch_prefix("openmpi", hosts=["vm", "vm"], ranks_per_node=2) == [
        "mpiexec", "-n", "4", "--host", "vm:4"]
    assert launch_prefix("openmpi", hosts=["n1", "n2", "n3"], ranks_per_node=3,
                         program="/usr/bin/mpiexec") == [
        "/usr/bin/mpiexec", "-n", "9", "--host", "n1:3,n2:3,n3:3"]


@pytest.mark.parametrize(("bind", "threads", "tail"), [
    (None, 1, []),
    (None, 4, ["--map-by", "slot:PE=4"]),
    ("none", 4, ["--bind-to", "none"]),
    ("core", 1, ["--bind-to", "core"]),
    ("hwthread", 1, ["--bind-to", "hwthread"]),
    ("depth", 4, ["--map-by", "slot:PE=4", "--bind-to", "core"]),
])
def test_openmpi_binding(bind: str | None, threads: int, tail: list[str]) -> None:
    assert launch_prefix("openmpi", hosts=TWO, ranks_per_node=2, threads_per_rank=threads,
                         cpu_bind=bind) == ["mpiexec", "-n", "4", "--host", "x1:2,x2:2", *tail]


@pytest.mark.parametrize(("bind", "threads", "tail"), [
    (None, 1, []),
    (None, 8, ["-genv", "I_MPI_PIN_DOMAIN", "8:compact"]),
    ("none", 1, ["-genv", "I_MPI_PIN", "0"]),
    ("core", 1, ["-genv", "I_MPI_PIN_DOMAIN", "core"]),
    ("hwthread", 1, ["-genv", "I_MPI_PIN_DOMAIN", "1"]),
    ("depth", 8, ["-genv", "I_MPI_PIN_DOMAIN", "8:compact"]),
])
def test_intel_prefix(bind: str | None, threads: int, tail: list[str]) -> None:
    assert launch_prefix("intel", hosts=TWO, ranks_per_node=4, threads_per_rank=threads,
                         cpu_bind=bind) == [
        "mpiexec", "-n", "8", "-ppn", "4", "-hosts", "x1,x2", *tail]


def test_tasks_on_this_host_alone_use_the_fork_starter() -> None:
    """MPICH with gforker beside hydra: a task whose every host is this one starts with
    gforker (no TCP control port); any other host, or a binding, needs hydra."""
    here = MpiLauncher("mpich", "/v/bin/mpiexec", fork_program="/v/bin/mpiexec.gforker",
                       host="vm")
    assert here.prefix(hosts=["vm", "vm"], ranks_per_node=2) == [
        "/v/bin/mpiexec.gforker", "-n", "4"]
    assert here.prefix(hosts=["vm", "other"], ranks_per_node=1) == [
        "/v/bin/mpiexec", "-n", "2", "--ppn", "1", "-hosts", "vm,other"]
    assert here.prefix(hosts=["vm"], ranks_per_node=2, cpu_bind="core")[-2:] == [
        "-bind-to", "core"]
    with pytest.raises(BalsamError, match="bad task layout"):
        here.prefix(hosts=["vm"], ranks_per_node=0)
    assert "mpiexec.gforker -n N (no TCP port)" in here.describe()


def test_open_mpi_tasks_on_this_host_alone_are_unbound() -> None:
    """4 ranks on virtual nodes of a 2-core host: mpirun's default binding refused them
    ("binding more processes than cpus"); on other hosts the default stays."""
    here = MpiLauncher("openmpi", "/usr/bin/mpiexec", host="vm")
    assert here.prefix(hosts=["vm", "vm"], ranks_per_node=2, threads_per_rank=2) == [
        "/usr/bin/mpiexec", "-n", "4", "--host", "vm:4", "--bind-to", "none"]
    assert here.prefix(hosts=["vm", "n2"], ranks_per_node=2) == [
        "/usr/bin/mpiexec", "-n", "4", "--host", "vm:2,n2:2"]
    assert here.prefix(hosts=["vm"], ranks_per_node=2, cpu_bind="core")[-2:] == [
        "--bind-to", "core"]


def test_srun_prefix() -> None:
    assert launch_prefix("srun", hosts=["nid001", "nid002", "nid004"], ranks_per_node=4,
                         threads_per_rank=8, cpu_bind="depth", gpus_per_rank=1) == [
        "srun", "--overlap", "--overcommit", "--nodes=3", "--ntasks=12", "--ntasks-per-node=4",
        "--cpus-per-task=8", "--nodelist=nid001,nid002,nid004", "--cpu-bind=cores",
        "--gpus-per-task=1"]


def test_srun_defaults_leave_binding_and_gpus_alone() -> None:
    assert launch_prefix("srun", hosts=TWO, ranks_per_node=2) == [
        "srun", "--overlap", "--overcommit", "--nodes=2", "--ntasks=4", "--ntasks-per-node=2",
        "--cpus-per-task=1", "--nodelist=x1,x2"]


def test_pals_prefix() -> None:
    assert launch_prefix("pals", hosts=TWO, ranks_per_node=4, threads_per_rank=8,
                         cpu_bind="depth", gpus_per_rank=1) == [
        "mpiexec", "-n", "8", "--ppn", "4", "--hosts", "x1,x2", "--depth", "8",
        "--cpu-bind", "depth"]
    assert launch_prefix("pals", hosts=TWO, ranks_per_node=1, cpu_bind="hwthread")[-2:] == [
        "--cpu-bind", "thread"]


def test_aprun_prefix_uses_node_ids() -> None:
    assert launch_prefix("aprun", hosts=["nid03825", "nid03830"], ranks_per_node=64,
                         threads_per_rank=2) == [
        "aprun", "-n", "128", "-N", "64", "-d", "2", "-cc", "depth", "-L", "3825,3830"]
    assert launch_prefix("aprun", hosts=["nid00007"], ranks_per_node=2, cpu_bind="none") == [
        "aprun", "-n", "2", "-N", "2", "-d", "1", "-cc", "none", "-L", "7"]
    with pytest.raises(BalsamError, match="nid host names"):
        launch_prefix("aprun", hosts=["x1"], ranks_per_node=1)


@pytest.mark.parametrize("kwargs", [
    {"hosts": []},
    {"hosts": ["a,b"]},
    {"hosts": ["-x"]},
    {"hosts": ["a b"]},
    {"ranks_per_node": 0},
    {"threads_per_rank": 0},
    {"gpus_per_rank": -1},
    {"cpu_bind": "scatter"},
])
def test_bad_layouts_refused(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"hosts": TWO, "ranks_per_node": 1, **kwargs}
    for kind in KINDS:
        with pytest.raises(BalsamError):
            launch_prefix(kind, **args)  # type: ignore[arg-type]


def test_unknown_kind() -> None:
    with pytest.raises(BalsamError, match="unknown MPI launcher"):
        launch_prefix("mpirun", hosts=TWO, ranks_per_node=1)


def test_needs_prefix() -> None:
    assert not needs_prefix(1, 1)
    assert needs_prefix(2, 1)
    assert needs_prefix(1, 4)


def test_launcher_object_and_tested_flag() -> None:
    launcher = MpiLauncher("pals", "/opt/cray/pals/bin/mpiexec")
    assert launcher.prefix(hosts=TWO, ranks_per_node=2)[:3] == [
        "/opt/cray/pals/bin/mpiexec", "-n", "4"]
    assert not launcher.tested
    assert MpiLauncher("mpich", "mpiexec").tested
    assert MpiLauncher("openmpi", "mpiexec").tested
    assert UNTESTED_KINDS == {"pals", "aprun", "intel"}
    assert MpiLauncher("srun", "/usr/bin/srun").tested  # tests/slurm


# -- choosing ------------------------------------------------------------------------------
def _choose(environ: dict[str, str], sched: str, on_path: dict[str, str],
            files: frozenset[str] | set[str] = frozenset(), setting: str = "",
            banners: dict[str, str] | None = None) -> MpiLauncher:
    """choose_launcher on a fake machine: programs on PATH, files, and what each
    program prints for --version (nothing by default)."""
    asked: list[str] = []

    def probe(program: str, _env: object) -> MpiInfo:
        asked.append(program)
        from balsam_mpi.node.mpidetect import classify
        return classify((banners or {}).get(program, ""), program)

    return choose_launcher(environ, setting=setting, sched=SchedulerEnv(sched),
                           which=on_path.get, exists=files.__contains__,
                           python_bin="/venv/bin", probe=probe, host="vm")


HYDRA_BANNER = "HYDRA build details:\n    Version:                                 5.0.2\n"
OMPI_BANNER = ("mpiexec (OpenRTE) 4.1.4\n\nReport bugs to "
               "http://www.open-mpi.org/community/help/\n")
INTEL_BANNER = "Intel(R) MPI Library for Linux* OS, Version 2021.10 Build 20230619\n"


def test_choice_follows_the_scheduler() -> None:
    path = {"srun": "/usr/bin/srun", "aprun": "/opt/cray/bin/aprun",
            "mpiexec": "/opt/cray/pals/1.2/bin/mpiexec"}
    assert _choose({}, "slurm", path) == MpiLauncher("srun", "/usr/bin/srun")
    assert _choose({}, "cobalt", path) == MpiLauncher("aprun", "/opt/cray/bin/aprun")
    pals = _choose({}, "pbs", path)
    assert (pals.kind, pals.program) == ("pals", "/opt/cray/pals/1.2/bin/mpiexec")


def test_pbs_with_mpich_on_path_uses_hydra() -> None:
    launcher = _choose({}, "pbs", {"mpiexec": "/soft/mpich/bin/mpiexec"},
                       files={"/soft/mpich/bin/mpiexec.hydra"})
    assert (launcher.kind, launcher.program) == ("mpich", "/soft/mpich/bin/mpiexec")


@pytest.mark.parametrize(("banner", "kind"), [
    (HYDRA_BANNER, "mpich"), (OMPI_BANNER, "openmpi"), (INTEL_BANNER, "intel")])
@pytest.mark.parametrize("sched", ["local", "pbs"])
def test_the_mpiexec_is_asked_what_it_is(banner: str, kind: str, sched: str) -> None:
    """Open MPI's mpiexec gets Open MPI's syntax, not hydra's --ppn (every multi-rank
    task failed with 'unknown option --ppn' before), with or without a scheduler. Intel
    MPI ships an mpiexec.hydra too: its banner, not the file, decides."""
    path = {"mpiexec": "/site/bin/mpiexec"}
    launcher = _choose({}, sched, path, files={"/site/bin/mpiexec.hydra"},
                       banners={"/site/bin/mpiexec": banner})
    assert (launcher.kind, launcher.program) == (kind, "/site/bin/mpiexec")
    assert "/site/bin/mpiexec --version" in launcher.why


def test_unknown_mpiexec_without_scheduler_is_taken_for_hydra() -> None:
    launcher = _choose({}, "local", {"mpiexec": "/x/mpiexec"},
                       banners={"/x/mpiexec": "usage: mpiexec [options]"})
    assert launcher.kind == "mpich" and "assumed MPICH hydra" in launcher.why


def test_local_prefers_the_venv_mpiexec_and_its_fork_starter() -> None:
    path = {"mpiexec": "/usr/bin/mpiexec"}
    venv = _choose({}, "local", path, files={"/venv/bin/mpiexec", "/venv/bin/mpiexec.gforker"},
                   banners={"/venv/bin/mpiexec": HYDRA_BANNER})
    assert venv == MpiLauncher("mpich", "/venv/bin/mpiexec",
                               fork_program="/venv/bin/mpiexec.gforker", host="vm")
    system = _choose({}, "local", path, banners={"/usr/bin/mpiexec": HYDRA_BANNER})
    assert system == MpiLauncher("mpich", "/usr/bin/mpiexec", host="vm")


def test_fork_starter_only_without_a_scheduler_and_only_for_mpich() -> None:
    files = {"/s/bin/mpiexec.gforker"}
    pbs = _choose({}, "pbs", {"mpiexec": "/s/bin/mpiexec"}, files=files,
                  banners={"/s/bin/mpiexec": HYDRA_BANNER})
    assert pbs.kind == "mpich" and pbs.fork_program == ""
    ompi = _choose({}, "local", {"mpiexec": "/s/bin/mpiexec"}, files=files,
                   banners={"/s/bin/mpiexec": OMPI_BANNER})
    assert ompi.kind == "openmpi" and ompi.fork_program == ""


def test_explicit_choice_wins_setting_before_env() -> None:
    path = {"srun": "/usr/bin/srun", "mpiexec": "/usr/bin/mpiexec"}
    env = {"BALSAM_MPI_LAUNCHER": "srun"}
    assert _choose(env, "pbs", path).kind == "srun"
    assert _choose(env, "pbs", path, setting="mpich").kind == "mpich"
    with pytest.raises(BalsamError, match="BALSAM_MPI_LAUNCHER"):
        _choose({"BALSAM_MPI_LAUNCHER": "mpirun"}, "local", path)


def test_missing_program_says_what_to_do() -> None:
    with pytest.raises(BalsamError, match="no 'srun' on PATH"):
        _choose({}, "slurm", {})


def test_choice_detects_the_scheduler_from_the_environment() -> None:
    launcher = choose_launcher({"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "nid[1-2]"},
                               which={"srun": "/usr/bin/srun"}.get)
    assert launcher.kind == "srun"


def test_the_choice_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="balsam_mpi.node.mpilaunch"):
        _choose({}, "local", {"mpiexec": "/usr/bin/mpiexec"},
                banners={"/usr/bin/mpiexec": OMPI_BANNER})
    assert "multi-rank tasks start with Open MPI (mpiexec -n N --host h1:P,h2:P) through " \
           "/usr/bin/mpiexec" in caplog.text
    assert "mpiexec (OpenRTE) 4.1.4" in caplog.text


# -- the task's environment ---------------------------------------------------------------
HYDRA_RANK = {  # what MPICH 5's hydra set in a rank here (printed from a real rank)
    "HYDI_CONTROL_FD": "7", "MPI_LOCALNRANKS": "2", "MPI_LOCALRANKID": "0",
    "PMI_FD": "9", "PMI_HOSTNAME": "vm", "PMI_RANK": "0", "PMI_SIZE": "2",
}
KEEP = {
    "PATH": "/bin", "HOME": "/root", "OMP_NUM_THREADS": "4", "OMP_PLACES": "cores",
    "CUDA_VISIBLE_DEVICES": "0,1", "MPICH_GPU_SUPPORT_ENABLED": "1",
    "MPIR_CVAR_ENABLE_GPU": "0", "HYDRA_LAUNCHER": "fork", "FI_PROVIDER": "cxi",
    "UCX_TLS": "sm", "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "nid[1-4]",
    "SLURM_CPUS_ON_NODE": "64", "PBS_JOBID": "1.pbs", "PBS_NODEFILE": "/var/pbs/1",
    "BALSAM_DB_PATH": "/p",
}


def test_task_env_drops_the_hydra_rank_identity_and_keeps_the_rest() -> None:
    assert task_mpi_env({**HYDRA_RANK, **KEEP}) == KEEP


@pytest.mark.parametrize("name", [
    "PMIX_RANK", "PMIX_NAMESPACE", "PMI_JOBID", "PALS_RANKID", "PALS_APID",
    "OMPI_COMM_WORLD_RANK", "PRTE_LAUNCHED", "ALPS_APP_PE", "SLURM_PROCID",
    "SLURM_STEP_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_CPUS_PER_TASK",
    "SLURM_CPU_BIND", "SLURM_SRUN_COMM_PORT",
])
def test_other_launchers_rank_identity_is_dropped(name: str) -> None:
    assert is_launcher_variable(name)
    assert task_mpi_env({name: "1", "PATH": "/bin"}) == {"PATH": "/bin"}
