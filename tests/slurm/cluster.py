"""A throwaway Slurm on this host: munged, slurmctld and three slurmd faking nodes n1-n3.

Everything lives under one temporary directory (configuration, munge key and socket,
state, spool, logs); the daemons run in the foreground as children of this process, so
each is stopped by its own PID — never by name, since other Slurm or munge daemons may
run on the same machine. Client commands reach this cluster through ``SLURM_CONF``
(:meth:`LocalSlurm.env`), which ``sbatch`` also passes on to the job it starts.

Several ``slurmd -N nX`` on one host share its cores: each node claims the host's CPUs
(``SlurmdParameters=config_overrides`` keeps a smaller host from draining them), so a
2-core host runs a 2-node job of 2 ranks per node.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

NODES = ("n1", "n2", "n3")
PACKAGES = ("slurm-wlm", "munge")
DAEMONS = ("slurmctld", "slurmd", "munged", "sbatch", "srun", "squeue", "scancel", "sinfo",
           "scontrol")
CPUS_PER_NODE = 2
KILL_WAIT_S = 30  # Slurm's default, stated so the tests' expectations are explicit
START_TIMEOUT_S = 90


class SlurmUnavailable(Exception):
    """This host cannot run the throwaway cluster (the reason is the message)."""


def skip_reason() -> str | None:
    """Why this host cannot bring up a Slurm of its own, or None when it can."""
    if os.geteuid() != 0:
        return ("the real-Slurm tier starts munged, slurmctld and slurmd, which needs root "
                "(CI runs it as root)")
    if shutil.which("apt-get") is None and missing_tools():
        return f"Slurm is not installed ({', '.join(missing_tools())}) and there is no apt-get"
    return None


def missing_tools() -> list[str]:
    return [name for name in DAEMONS if shutil.which(name) is None]


def install() -> None:
    """``apt-get install slurm-wlm munge`` when a tool is missing (once per machine)."""
    if not missing_tools():
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"],
                 ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]):
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900,
                              check=False)
        if done.returncode != 0:
            raise SlurmUnavailable(f"{' '.join(argv)} failed: "
                                   f"{(done.stderr or done.stdout).strip()[-500:]}")
    if missing_tools():
        raise SlurmUnavailable(f"still missing after install: {', '.join(missing_tools())}")


def first_job_id(now: float | None = None) -> int:
    """A first job id unlikely to have been used by an earlier cluster on this host
    (tenths of a second, wrapping every ~28 hours; Slurm allows up to 67,043,328)."""
    return 1000 + int((time.time() if now is None else now) * 10) % 1_000_000


def free_port_block(count: int, start: int = 17000, stop: int = 30000) -> int:
    """The first port of ``count`` consecutive free TCP ports (another cluster on this
    machine may hold the usual ones)."""
    for base in range(start, stop, count):
        if all(_port_free(base + i) for i in range(count)):
            return base
    raise SlurmUnavailable(f"no {count} consecutive free ports in {start}-{stop}")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


@dataclass
class LocalSlurm:
    """The running cluster: where it lives and the daemons this process started."""

    root: Path
    host: str
    ctld_port: int
    node_ports: tuple[int, ...]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "etc" / "slurm.conf"

    @property
    def munge_socket(self) -> Path:
        return self.root / "munge" / "munge.socket"

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """An environment whose Slurm commands talk to this cluster."""
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        return env

    def run(self, *argv: str, timeout: float = 60, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(list(argv), env=self.env(), capture_output=True, text=True,
                              timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: "
                               f"{(done.stderr or done.stdout).strip()}")
        return done

    # -- configuration -------------------------------------------------------------------
    def write_config(self) -> None:
        for sub in ("etc", "state", "spool", "log"):
            (self.root / sub).mkdir(mode=0o755)
        first, last = self.node_ports[0], self.node_ports[-1]
        lines = [
            "ClusterName=balsamtest",
            # Job ids of their own: MPICH names a step's shared memory after its Slurm
            # ids (/dev/shm/mpich_shm_<hash of JOB.STEP>), and ranks killed by a test leave
            # theirs behind; a later cluster counting from 1 again met them (MPI_Init:
            # "Out of memory").
            f"FirstJobId={first_job_id()}",
            f"SlurmctldHost={self.host}(127.0.0.1)",
            f"SlurmctldPort={self.ctld_port}",
            "SlurmUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={self.root / 'state'}",
            f"SlurmdSpoolDir={self.root / 'spool'}/%n",
            f"SlurmctldPidFile={self.root / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.root / 'spool'}/slurmd-%n.pid",
            f"SlurmctldLogFile={self.root / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={self.root / 'log'}/slurmd-%n.log",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "MpiDefault=pmi2",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "SlurmdParameters=config_overrides",
            "SchedulerType=sched/builtin",
            # A batch job is placed as soon as it is submitted (or requeued and released),
            # not up to 3 s later (Slurm's default delay, meant for sites taking thousands
            # of submissions a second): every test here waits for its jobs to start.
            "SchedulerParameters=batch_sched_delay=0",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            "ReturnToService=2",
            f"KillWait={KILL_WAIT_S}",
            "InactiveLimit=0",
            "MinJobAge=300",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=60",
            "MessageTimeout=20",
            f"NodeName={_bracket(NODES)} NodeHostname={self.host} NodeAddr=127.0.0.1 "
            f"Port=[{first}-{last}] CPUs={CPUS_PER_NODE} RealMemory=1000 State=UNKNOWN",
            f"PartitionName=debug Nodes={_bracket(NODES)} Default=YES MaxTime=INFINITE "
            "State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")
        os.chmod(self.conf, 0o644)

    def make_munge_key(self) -> None:
        munge = pwd.getpwnam("munge")
        mdir = self.root / "munge"
        mdir.mkdir(mode=0o755)
        os.chown(mdir, munge.pw_uid, munge.pw_gid)
        key = mdir / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chown(key, munge.pw_uid, munge.pw_gid)
        os.chmod(key, 0o400)

    # -- daemons -------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str], user: str | None = None) -> None:
        log = open(self.root / "log" / f"{name}.stdout", "ab")
        try:
            kwargs: dict[str, object] = {}
            if user is not None:
                entry = pwd.getpwnam(user)
                kwargs = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
            self.procs[name] = subprocess.Popen(
                argv, env=self.env(), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, **kwargs)  # type: ignore[call-overload]
        finally:
            log.close()

    def start(self) -> None:
        mdir = self.root / "munge"
        self._spawn("munged", [
            shutil.which("munged") or "munged", "--foreground",
            f"--key-file={mdir / 'munge.key'}", f"--socket={self.munge_socket}",
            f"--pid-file={mdir / 'munged.pid'}", f"--log-file={mdir / 'munged.log'}",
            f"--seed-file={mdir / 'munged.seed'}", "--num-threads=2"], user="munge")
        self._wait_for(lambda: self.munge_socket.exists(), "munged's socket")
        self._spawn("slurmctld", [shutil.which("slurmctld") or "slurmctld", "-D", "-i",
                                  "-f", str(self.conf)])
        self._wait_for(lambda: self.run("scontrol", "ping", check=False).returncode == 0,
                       "slurmctld to answer")
        for node in NODES:
            self._spawn(f"slurmd-{node}", [shutil.which("slurmd") or "slurmd", "-D", "-N",
                                           node, "-f", str(self.conf)])
        self._wait_for(self.nodes_idle, "the nodes to be idle")

    def nodes_idle(self) -> bool:
        done = self.run("sinfo", "-h", "-N", "-o", "%N %t", check=False)
        states = dict(line.split() for line in done.stdout.splitlines() if line.strip())
        return all(states.get(node) == "idle" for node in NODES)

    def _wait_for(self, ready: object, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise SlurmUnavailable(f"{name} exited ({proc.returncode}) while waiting "
                                           f"for {what}:\n{self.logs_tail()}")
            if ready():  # type: ignore[operator]
                return
            time.sleep(0.5)
        raise SlurmUnavailable(f"timed out waiting for {what}:\n{self.logs_tail()}")

    def cancel_all(self, timeout: float = 120) -> None:
        """Cancel every job still known and wait until no job is left running."""
        self.run("scancel", "--full", "-u", "root", check=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = self.run("squeue", "-h", "-o", "%i %T", check=False)
            if done.returncode != 0 or not done.stdout.strip():
                return
            time.sleep(1)

    def stop(self) -> None:
        """Every daemon this object started, by PID: TERM, then KILL after 20 s."""
        order = [f"slurmd-{n}" for n in NODES] + ["slurmctld", "munged"]
        for name in order:
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def logs_tail(self, lines: int = 30) -> str:
        out: list[str] = []
        for path in sorted((self.root / "log").glob("*")) + [self.root / "munge" / "munged.log"]:
            try:
                text = path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            out.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(out)


def _bracket(names: tuple[str, ...]) -> str:
    """n1,n2,n3 → n[1-3] (the names here are always consecutive)."""
    return f"n[1-{len(names)}]"


@contextmanager
def local_slurm(parent: str = "/tmp") -> Iterator[LocalSlurm]:
    """Install if needed, bring the cluster up, yield it; on exit cancel its jobs and stop
    its daemons by PID, then remove its directory."""
    reason = skip_reason()
    if reason:
        raise SlurmUnavailable(reason)
    install()
    root = Path(tempfile.mkdtemp(prefix="balsam-slurm-", dir=parent))
    os.chmod(root, 0o755)  # munged (as munge) and the jobs must traverse it
    base = free_port_block(len(NODES) + 1)
    cluster = LocalSlurm(root, socket.gethostname(), base,
                         tuple(base + 1 + i for i in range(len(NODES))))
    try:
        cluster.write_config()
        cluster.make_munge_key()
        cluster.start()
        yield cluster
    finally:
        try:
            if "slurmctld" in cluster.procs:
                cluster.cancel_all()
        finally:
            cluster.stop()
            if not os.environ.get("BALSAM_KEEP_SLURM"):
                shutil.rmtree(root, ignore_errors=True)
