"""The launcher's settings: CLI flag > ``BALSAM_*`` env > ``settings.toml [launcher]`` > default.

One frozen :class:`Settings`; every field can come from each layer under the same name
(``idle_timeout_s`` ↔ ``BALSAM_IDLE_TIMEOUT_S`` ↔ ``[launcher] idle_timeout_s``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import UsageError


@dataclass(frozen=True)
class Settings:
    project: str | None = None
    workflows: tuple[str, ...] = ()  # exact names; empty = all
    tags: tuple[tuple[str, str], ...] = ()  # containment filter on tasks.tags
    owners: tuple[str, ...] = ()  # empty = everyone's tasks
    idle_timeout_s: float = 10.0  # 0 = exit as soon as idle
    persistent: bool = False  # never exit for idleness
    gpus_per_node: int = 0
    max_tasks: int = 0  # 0 = no limit
    time_limit_min: float = 0.0  # 0 = the scheduler's, else none
    heartbeat_s: float = 10.0
    lease_s: float = 60.0
    expire_check_s: float = 5.0  # how often the leader looks for other jobs' expired leases
    drain_grace_s: float = 30.0
    kill_grace_s: float = 10.0
    stop_grace_s: float = 3.0  # TERM to SIGKILL when the job ends (under PBS's kill_delay)
    signal_hold_s: float = 2.0  # how long a task's death by a signal waits for the stop
    kill_poll_s: float = 1.5  # how often the leader looks for killed tasks
    flush_interval_s: float = 0.1  # buffered reports wait at most this long
    flush_size: int = 4096  # … or until this many are buffered
    claim_margin: float = 0.5  # node shares a node may hold queued, until its pace is known
    claim_margin_max: float = 1.0  # … and at most, once it is (see resources.Pace)
    claim_horizon_s: float = 2.0  # queue what a node finishes in this long
    claim_limit: int = 4096  # rows per claim statement at most
    claim_idle_s: float = 0.5  # wait between claims that found nothing
    report_interval_s: float = 1.0  # a worker reports at least this often
    worker_timeout_s: float = 10.0  # a worker silent this long is declared dead
    poll_cap_s: float = 0.05  # longest idle sleep of a worker between probes
    leader_poll_cap_s: float = 0.01  # the same for the leader
    die_with_parent: bool = True  # tasks get a parent-death signal
    output_cap_mb: float = 256.0  # per task.out/err: keep head + tail past this; 0 = none
    task_cgroups: bool = True  # a cgroup per task where cgroup v2 is delegated to us
    null_runner: bool = False  # benchmarks: tasks "finish" at once, no process
    # Python tasks' warm interpreters (pypool.py, docs/python-tasks.md).
    python_max_calls: int = 1000  # replace an interpreter after this many calls (0: never)
    python_memory_mb: float = 0.0  # per interpreter; 0 = the task's share of the node's RAM
    python_address_cap: bool = True  # enforce it as RLIMIT_AS during calls (not GPU tasks)
    log_level: str = "INFO"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def tag_filter(self) -> dict[str, str]:
        return dict(self.tags)


_FIELDS = {f.name: f for f in dataclasses.fields(Settings) if f.name != "extra"}
ENV_PREFIX = "BALSAM_"
_NOT_FROM_ENV = {"project"}  # BALSAM_DB_PATH names the project (project.py)


def _convert(name: str, value: Any, source: str) -> Any:
    default = getattr(Settings(), name)
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                low = value.strip().lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off", ""):
                    return False
                raise ValueError(value)
            return bool(value)
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, tuple):
            if isinstance(value, str):
                items = [v.strip() for v in value.split(",") if v.strip()]
            else:
                items = list(value)
            if name == "tags":
                return tuple(_tag(str(v)) for v in items)
            return tuple(str(v) for v in items)
        return value if value is None else str(value)
    except (TypeError, ValueError):
        raise UsageError(f"{source}: {name} = {value!r} is not a valid "
                         f"{type(default).__name__}") from None


def _tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise UsageError(f"--tag {text!r}: write it as key=value")
    return key, value


def resolve(cli: Mapping[str, Any], environ: Mapping[str, str] = os.environ,
            project_settings: Mapping[str, Any] | None = None) -> Settings:
    """Merge the layers; ``cli`` holds only the flags the user gave (None = not given)."""
    values: dict[str, Any] = {}
    launcher = dict((project_settings or {}).get("launcher", {}))
    for name in _FIELDS:
        if name in launcher:
            values[name] = _convert(name, launcher[name], "settings.toml [launcher]")
        env_name = ENV_PREFIX + name.upper()
        if name not in _NOT_FROM_ENV and env_name in environ:
            values[name] = _convert(name, environ[env_name], env_name)
        given = cli.get(name)
        if given is not None and given != () and given != []:
            values[name] = _convert(name, given, "--" + name.replace("_", "-"))
    settings = Settings(**values)
    _check(settings)
    return settings


def _check(s: Settings) -> None:
    for name in ("idle_timeout_s", "max_tasks", "gpus_per_node", "time_limit_min",
                 "claim_margin", "python_max_calls", "python_memory_mb"):
        if getattr(s, name) < 0:
            raise UsageError(f"{name} must not be negative, got {getattr(s, name)}")
    for name in ("heartbeat_s", "lease_s", "expire_check_s", "flush_interval_s",
                 "report_interval_s", "poll_cap_s", "leader_poll_cap_s"):
        if getattr(s, name) <= 0:
            raise UsageError(f"{name} must be positive, got {getattr(s, name)}")
    # A leader stops its tasks after half its lease without a heartbeat (lease.py): beating
    # less often than that would stop them with the database perfectly well.
    if s.heartbeat_s * 2 >= s.lease_s:
        raise UsageError(f"heartbeat_s ({s.heartbeat_s:g}) must be less than half of "
                         f"lease_s ({s.lease_s:g})")
    if s.worker_timeout_s < 3 * s.report_interval_s:
        raise UsageError(f"worker_timeout_s ({s.worker_timeout_s:g}) must be at least 3 "
                         f"report intervals ({3 * s.report_interval_s:g})")
    if s.flush_size < 1 or s.claim_limit < 1:
        raise UsageError("flush_size and claim_limit must be at least 1")
