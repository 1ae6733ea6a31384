"""Which scheduler cluster this host talks to: the identity a batch-job row records.

`job sync` closes a QUEUED row whose job the scheduler no longer lists. That answer means
something only from a host that talks to the scheduler the job was given to: a project's
database may serve several machines, whose job ids mean nothing to one another. The row
records the identity of the submitting host's scheduler (`submit`), and any host whose
scheduler has the same identity may close it — another login node of the same cluster,
an autoscaler restarted elsewhere (batch/jobsync.py).

Slurm: ``ClusterName`` and the first ``SlurmctldHost`` of ``scontrol show config``,
as ``NAME@CONTROLLER`` (two sites may both call their cluster "cluster"; their
controllers still differ). PBS: the server ``qstat -B -f`` names. Anything else, or a
command that fails or prints something else: no identity (None), and the rows fall back
to the host rule. One call, argv lists, a timeout; the parsers are pure.
"""

from __future__ import annotations

import re
import subprocess

QUERY_TIMEOUT_S = 20
# The shape migrations/0032 allows in batch_jobs.sched_cluster.
_SHAPE = re.compile(r"[A-Za-z0-9_.:@\-]{1,256}")
_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,120}")


def identity(scheduler: str) -> str | None:
    """The identity of the ``scheduler`` cluster this host reaches, or None if unknown."""
    if scheduler == "slurm":
        return parse_slurm_config(_run(["scontrol", "show", "config"]))
    if scheduler == "pbs":
        return parse_pbs_server(_run(["qstat", "-B", "-f"]))
    return None


def _run(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, errors="replace",
                              timeout=QUERY_TIMEOUT_S, check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout if done.returncode == 0 else ""


def parse_slurm_config(text: str) -> str | None:
    """``NAME@CONTROLLER`` from ``scontrol show config`` (``ClusterName = x``,
    ``SlurmctldHost[0] = host(addr)``); None unless both are there and plain names."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values.setdefault(key.strip(), value.strip())
    name = values.get("ClusterName", "")
    controller = (values.get("SlurmctldHost[0]") or values.get("ControlMachine") or "")
    controller = controller.partition("(")[0].strip()
    if not (_NAME.fullmatch(name) and _NAME.fullmatch(controller)):
        return None
    return checked(f"{name}@{controller}")


def parse_pbs_server(text: str) -> str | None:
    """The first ``Server: NAME`` of ``qstat -B -f``."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "Server":
            name = value.strip()
            return checked(f"pbs:{name}") if _NAME.fullmatch(name) else None
    return None


def checked(value: str | None) -> str | None:
    """``value`` if it has the recorded shape, else None (unknown)."""
    return value if value is not None and _SHAPE.fullmatch(value) else None


def may_close(row_host: str, row_cluster: str | None, here: str,
              here_cluster: str | None) -> bool:
    """Whether a job the scheduler does not list may be taken for ended from this host:
    the same scheduler cluster, both known; else (an identity unknown) only the host
    the row was submitted from."""
    if row_cluster and here_cluster:
        return row_cluster == here_cluster
    return row_host == here
