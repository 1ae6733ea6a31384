"""The launcher's settings: CLI flag > ``BALSAM_*`` env > ``settings.toml [launcher]`` > default.

One frozen :class:`Settings`; every field can come from each layer under the same name
(``idle_timeout_s`` ↔ ``BALSAM_IDLE_TIMEOUT_S`` ↔ ``[launcher] idle_timeout_s``).

Every value is checked when it is read: typed (text from the environment by the strict
grammar of ``values``; TOML and flags by their own types), finite, inside the range of
``RANGES``, and the relations of ``_relations`` hold. A bad one is one line naming the
setting and where it came from, exit status 2. Why so strict: a lease of ``inf`` once
broke every lease sweep of a project ("interval out of range") after its launcher died,
and ``--idle-timeout nan`` never exited.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..base import limits, values
from ..base.errors import InputError, UsageError


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
    # The end of a run gives up its final write after this long without a renewed lease
    # (or the whole lease, if longer): what is left is in the journal (closing.py).
    close_patience_s: float = 30.0
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
    # Claims on a second database connection, beside the flushes (launcher/calls.py):
    # one more of the role's connections (rolelimits.py) per launcher.
    claim_connection: bool = True
    report_interval_s: float = 1.0  # a worker reports at least this often
    worker_timeout_s: float = 10.0  # a worker silent this long is declared dead
    poll_cap_s: float = 0.05  # longest idle sleep of a worker between probes
    leader_poll_cap_s: float = 0.01  # the same for the leader
    die_with_parent: bool = True  # tasks get a parent-death signal
    output_cap_mb: float = 256.0  # per task.out/err: keep head + tail past this; 0 = none
    task_cgroups: bool = True  # a cgroup per task where cgroup v2 is delegated to us
    null_runner: bool = False  # benchmarks: tasks "finish" at once, no process
    # Python tasks' warm interpreters (node/pypool.py, docs/python-tasks.md).
    python_max_calls: int = 1000  # replace an interpreter after this many calls (0: never)
    python_memory_mb: float = 0.0  # per interpreter; 0 = the task's share of the node's RAM
    python_address_cap: bool = True  # enforce it as RLIMIT_AS during calls (not GPU tasks)
    python_prestart: bool = True  # each node starts its interpreters' zygote at once
    # ... and forks this many interpreters before any call (-1: one per core of the node)
    python_spares: int = -1
    # ... whose zygote imports these modules first, so every interpreter has them
    python_preload: tuple[str, ...] = ()
    log_level: str = "INFO"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def tag_filter(self) -> dict[str, str]:
        return dict(self.tags)


_DAY = 86_400.0
# Inclusive ranges. Seconds unless the name ends in _min; counts for the integers. Wide
# enough for any real machine, narrow enough that nonsense (inf, 1e308, 10^9 GPUs) is
# refused where it is typed instead of deep inside a sweep or a sleep. The lease's range
# is base/limits.py's, because the database checks batch_jobs.lease_sec against the same one.
RANGES: dict[str, tuple[float, float]] = {
    "idle_timeout_s": (0.0, 30 * _DAY),  # longer: --persistent
    "gpus_per_node": (0, limits.INT_RANGES["gpus_per_rank"][1]),
    "max_tasks": (0, limits.ID_MAX),
    "time_limit_min": (0.0, limits.WALL_TIME_MIN_MAX),
    "heartbeat_s": (0.05, 3600.0),
    "lease_s": (limits.LEASE_S_MIN, limits.LEASE_S_MAX),
    "expire_check_s": (0.05, 3600.0),
    "drain_grace_s": (0.0, _DAY),
    "close_patience_s": (1.0, _DAY),
    "kill_grace_s": (0.0, 3600.0),
    "kill_poll_s": (0.01, 3600.0),
    "flush_interval_s": (0.0, 60.0),
    "flush_size": (1, 1_000_000),
    "claim_margin": (0.0, 64.0),
    "claim_margin_max": (0.0, 64.0),
    "claim_horizon_s": (0.0, 3600.0),
    "claim_limit": (1, 1_000_000),
    "claim_idle_s": (0.0, 60.0),
    "report_interval_s": (0.01, 3600.0),
    "poll_cap_s": (0.0, 10.0),
    "leader_poll_cap_s": (0.0, 10.0),
    "stop_grace_s": (0.0, 600.0),
    "signal_hold_s": (0.0, 60.0),
    "worker_timeout_s": (0.1, _DAY),
    "output_cap_mb": (0.0, 1e7),
    "python_max_calls": (0, 1_000_000_000),
    "python_memory_mb": (0.0, 1e9),
    "python_spares": (-1, 4096),
}
# A number not listed above (a setting added later) must still be finite and not negative.
_ANY = (0.0, 1e12)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

_FIELDS = {f.name: f for f in dataclasses.fields(Settings) if f.name != "extra"}
_DEFAULTS = Settings()
ENV_PREFIX = "BALSAM_"
_NOT_FROM_ENV = {"project"}  # BALSAM_DB_PATH names the project (base/project.py)
FILE = "settings.toml [launcher]"
# The launcher's flags where they are not "--" + the name with dashes (launcher/launch.py).
FLAGS = {"idle_timeout_s": "--idle-timeout", "workflows": "--workflow", "tags": "--tag",
         "owners": "--owner"}


def flag(name: str) -> str:
    return FLAGS.get(name, "--" + name.replace("_", "-"))


def resolve(cli: Mapping[str, Any], environ: Mapping[str, str] = os.environ,
            project_settings: Mapping[str, Any] | None = None) -> Settings:
    """Merge the layers; ``cli`` holds only the flags the user gave (None = not given)."""
    values_: dict[str, Any] = {}
    sources: dict[str, str] = {}
    launcher = (project_settings or {}).get("launcher", {})
    if not isinstance(launcher, Mapping):
        raise InputError(f"{FILE}: must be a table of settings, got "
                         f"{values.show(launcher)}")
    unknown = sorted(set(launcher) - set(_FIELDS))
    if unknown:
        raise InputError(f"{FILE}: unknown setting {values.show(unknown[0], 40)} (settings: "
                         f"{', '.join(sorted(_FIELDS))})")
    for name in _FIELDS:
        if name in launcher:
            where = f"{FILE} {name}"
            values_[name], sources[name] = _convert(name, launcher[name], where), where
        env_name = ENV_PREFIX + name.upper()
        if name not in _NOT_FROM_ENV and env_name in environ:
            values_[name], sources[name] = _convert(name, environ[env_name], env_name), env_name
        given = cli.get(name)
        if given is not None and given != () and given != []:
            values_[name], sources[name] = _convert(name, given, flag(name)), flag(name)
    _nearer_of_persistent_and_idle(values_, sources)
    settings = Settings(**values_)
    _relations(settings, sources)
    return settings


def _layer(source: str) -> int:
    """How near the user a setting's source is: settings.toml, then BALSAM_*, then a flag."""
    return 0 if source.startswith(FILE) else 1 if source.startswith(ENV_PREFIX) else 2


def _nearer_of_persistent_and_idle(values_: dict[str, Any], sources: dict[str, str]) -> None:
    """``persistent`` and ``idle_timeout_s`` say opposite things; given in different
    layers, the nearer one is what this run means, as for any one setting. `init` writes
    idle_timeout_s into settings.toml, so `--persistent` must win over it; and
    settings.toml's ``persistent = true`` with an ``--idle-timeout`` flag once ran a job
    meant to end when idle until its wall time. Same layer: left to _relations."""
    if not values_.get("persistent") or "idle_timeout_s" not in sources:
        return
    persistent, idle = _layer(sources["persistent"]), _layer(sources["idle_timeout_s"])
    if persistent > idle:
        del values_["idle_timeout_s"], sources["idle_timeout_s"]  # persistent ignores it
    elif idle > persistent:
        values_["persistent"] = False
        sources["persistent"] = f"{sources['idle_timeout_s']}, over {sources['persistent']}"


def _convert(name: str, value: Any, source: str) -> Any:
    """One setting's value from one layer: typed, finite, in range; errors name both."""
    try:
        return _typed(name, value, source)
    except InputError as exc:
        raise InputError(f"{source}: {exc}") from None


def _typed(name: str, value: Any, source: str) -> Any:
    default = getattr(_DEFAULTS, name)
    from_text = isinstance(value, str) and source.startswith(ENV_PREFIX)
    if isinstance(default, bool):
        if from_text:
            return values.bool_from_text(name, value)
        if not isinstance(value, bool):
            raise InputError(f"{name} must be true or false, got {values.show(value)}")
        return value
    if isinstance(default, (int, float)):
        return _number(name, value, isinstance(default, int), from_text)
    if isinstance(default, tuple):
        items = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) \
            else value
        if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, (list, tuple)):
            raise InputError(f"{name} must be a list of names, got {values.show(value)}")
        if name == "tags":
            return tuple(_tag(v) for v in items)
        if name == "python_preload":
            return _modules(items)
        return tuple(values.name(name, v) for v in items)
    if name == "log_level":
        level = values.text(name, value, 20).strip().upper()
        if level not in LOG_LEVELS:
            raise InputError(f"log_level must be one of {', '.join(LOG_LEVELS)}, got "
                             f"{values.show(value)}")
        return level
    if name == "project":
        return None if value is None else values.path(name, value)
    return value if value is None else values.text(name, value, limits.NAME_MAX)


def _number(name: str, value: Any, whole: bool, from_text: bool) -> int | float:
    lo, hi = RANGES.get(name, _ANY)
    if whole:
        try:
            if from_text:
                return values.int_from_text(name, value, int(lo), int(hi))
            return values.integer(name, value, int(lo), int(hi))
        except InputError as exc:
            raise InputError(str(exc).replace(f"{name}: ", f"{name} ", 1)) from None
    unit = "minutes" if name.endswith("_min") else "seconds" if name.endswith("_s") else ""
    span = f"from {_fmt(lo)} to {_fmt(hi)}"
    what = f"a number of {unit} {span}" if unit else f"a number {span}"
    try:
        number = values.number_from_text(name, value, lo, hi) if from_text \
            else values.number(name, value, lo, hi)
    except InputError:
        raise InputError(f"{name} must be {what}, got {values.show(value, 40)}") from None
    return float(number)


def _fmt(x: float) -> str:
    return f"{int(x):,}" if float(x).is_integer() else f"{x:g}"


def _tag(text: Any) -> tuple[str, str]:
    if isinstance(text, (list, tuple)) and len(text) == 2:  # already a pair
        key, value = text
    else:
        key, sep, value = values.text("tags", text, limits.NAME_MAX * 2).partition("=")
        if not sep or not key:
            raise InputError(f"tags: write each as key=value, got {values.show(text)}")
    return values.name("tags", key), values.name(f"tags.{key}", value)


PRELOAD_MAX = 64  # modules a zygote imports before it forks anything


def _modules(items: list[Any] | tuple[Any, ...]) -> tuple[str, ...]:
    """Module names for the zygote to import (``pkg.module``): dotted identifiers only,
    as an app's import path holds them; nothing else reaches an interpreter's import."""
    if len(items) > PRELOAD_MAX:
        raise InputError(f"python_preload: at most {PRELOAD_MAX} modules, got {len(items)}")
    names = []
    for item in items:
        name = values.text("python_preload", item, limits.PYTHON_PATH_MAX)
        if not limits.PYTHON_MODULE.fullmatch(name):
            raise InputError(f"python_preload: {values.show(name, 60)} is not a module name "
                             "(dotted identifiers, as package.module)")
        names.append(name)
    return tuple(dict.fromkeys(names))


def leader_silence_s(s: Settings) -> float:
    """How long a worker hears nothing from its leader before it cuts its tasks and
    leaves (worker.py). A live leader answers every REPORT at once, and a worker reports
    every ``report_interval_s``. A leader that answered at T had heartbeated after
    T - lease/2 (else it would have been cutting its tasks already), so its lease runs
    out after T + lease/2: the worker's tasks must be dead by then, kill grace included,
    with a heartbeat's margin. Never under three report intervals, so a busy leader is
    not taken for a frozen one (with a lease that short the bound is not kept)."""
    bound = s.lease_s / 2 - s.kill_grace_s - s.heartbeat_s
    return max(bound, 3 * s.report_interval_s)


def _relations(s: Settings, sources: Mapping[str, str]) -> None:
    """What must hold between settings; the error names both and where each came from."""

    def said(name: str) -> str:
        where = sources.get(name)
        return f"{getattr(s, name):g}, " + (f"from {where}" if where else "the default")

    # A leader stops its tasks after half its lease without a heartbeat (launcher/lease.py): beating
    # less often than that would stop them with the database perfectly well.
    if s.heartbeat_s * 2 >= s.lease_s:
        raise UsageError(f"heartbeat_s ({said('heartbeat_s')}) must be less than half of "
                         f"lease_s ({said('lease_s')})")
    # … and its tasks must be dead (SIGTERM, then SIGKILL after kill_grace_s) before the
    # other half runs out and another leader may requeue them: never two runs at once.
    if s.kill_grace_s * 2 >= s.lease_s:
        raise UsageError(f"kill_grace_s ({said('kill_grace_s')}) must be less than half of "
                         f"lease_s ({said('lease_s')})")
    # Both in one layer: which was meant cannot be known (the flag pair is refused earlier
    # too: launch.py, batch/jobscript.py). In different layers the nearer one has already
    # won (_nearer_of_persistent_and_idle).
    if s.persistent and "idle_timeout_s" in sources:
        raise UsageError(f"persistent (from {sources['persistent']}) never exits for lack "
                         f"of work, idle_timeout_s ({said('idle_timeout_s')}) after a "
                         "while: give one of them")
    if s.claim_margin > s.claim_margin_max:
        raise UsageError(f"claim_margin ({said('claim_margin')}) must not exceed "
                         f"claim_margin_max ({said('claim_margin_max')})")
    # The drain starts drain_grace_s before the end: longer than the whole run, and the
    # launcher would drain before it ever ran a task.
    if s.time_limit_min > 0 and s.drain_grace_s >= s.time_limit_min * 60.0:
        limit = sources.get("time_limit_min")
        raise UsageError(f"drain_grace_s ({said('drain_grace_s')}) must be less than "
                         f"time_limit_min ({s.time_limit_min:g} min = "
                         f"{s.time_limit_min * 60:g} s, from {limit})")
    if s.worker_timeout_s < 3 * s.report_interval_s:
        raise UsageError(f"worker_timeout_s ({said('worker_timeout_s')}) must be at least 3 "
                         f"report intervals (report_interval_s {said('report_interval_s')})")
    for name in RANGES:  # Settings built in code skip _convert; a last guard
        if not math.isfinite(getattr(s, name)):  # pragma: no cover - _convert refuses
            raise UsageError(f"{name} must be finite")
