"""Task and app input: validation, and the argv a task runs as. Pure: no database.

A task is a dict whose keys are the column names of DESIGN.md §4 (the same names as the
CLI flags, with dashes there). Everything a user can get wrong is caught here, before the
database is touched, with one line naming the field (the caller adds where: a line number
or a position in a list).

``render_argv`` is what the launcher's runner calls to turn (app, task) into argv.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import UsageError


class TaskSpecError(UsageError):
    """One bad field of one task or app; the message names it."""


# field -> minimum (None: any integer). Defaults are the database's (0001_initial.sql).
INT_FIELDS: dict[str, int | None] = {
    "num_nodes": 1, "ranks_per_node": 1, "threads_per_rank": 1, "gpus_per_rank": 0,
    "node_packing_count": 1, "priority": None, "error_retry_limit": 0,
    "timeout_retry_limit": 0, "lost_retry_limit": 0,
}
INT_DEFAULTS = {
    "num_nodes": 1, "ranks_per_node": 1, "threads_per_rank": 1, "gpus_per_rank": 0,
    "node_packing_count": 1, "priority": 0, "timeout_retry_limit": 3, "lost_retry_limit": 3,
}
FLOAT_FIELDS = ("wall_time_min",)
TEXT_FIELDS = ("workflow", "name", "app")
DICT_FIELDS = ("params", "tags", "env", "data")
LIST_FIELDS = ("args", "input_files")
BOOL_FIELDS = ("fail_with_parents",)
# Not columns: `parents` (ids of existing tasks, or the `key` of another task of the same
# batch) and `key` (a label other tasks of the batch may name as a parent).
REF_FIELDS = ("parents", "key")
TASK_FIELDS = frozenset((*INT_FIELDS, *FLOAT_FIELDS, *TEXT_FIELDS, *DICT_FIELDS,
                         *LIST_FIELDS, *BOOL_FIELDS, *REF_FIELDS))
# What `task modify` may change (identity, app and state have their own commands).
MODIFIABLE = frozenset((*INT_FIELDS, *FLOAT_FIELDS, "workflow", "name", *DICT_FIELDS,
                        *LIST_FIELDS, *BOOL_FIELDS))

APP_FIELDS = frozenset({"description", "preprocess", "postprocess", "env_script", "shell",
                        "postprocess_on_error", "postprocess_on_timeout",
                        "error_retry_limit"})
_APP_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class AppInfo:
    """What validating a task needs to know about its app."""

    id: int
    name: str
    command: str
    placeholders: frozenset[str]
    error_retry_limit: int = 0
    python: str = ""  # a Python app's import path: params are the call's keyword arguments


def placeholders(command: str) -> frozenset[str]:
    """The ``{names}`` of a command template; refuses ``{}``, ``{a.b}``, ``{a[0]}``."""
    names: set[str] = set()
    try:
        parsed = list(string.Formatter().parse(command))
    except ValueError as exc:
        raise TaskSpecError(f"command: bad template {command!r} ({exc}); "
                            "write a literal brace as {{ or }}") from None
    for _text, field, _spec, _conv in parsed:
        if field is None:
            continue
        if not _IDENT.match(field):
            raise TaskSpecError(f"command: placeholder {{{field}}} must be a plain name "
                                "like {input}; write a literal brace as {{ or }}")
        names.add(field)
    return frozenset(names)


def check_app(name: str, command: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """Validated app fields (the name, the template and the optional ones)."""
    if not isinstance(name, str) or not _APP_NAME.match(name):
        raise TaskSpecError(f"name: app names use letters, digits, '_', '.', '-'; got {name!r}")
    if not isinstance(command, str) or not command.strip():
        raise TaskSpecError("command: an app needs a non-empty command")
    placeholders(command)
    unknown = sorted(set(fields) - APP_FIELDS)
    if unknown:
        raise TaskSpecError(f"{unknown[0]}: not an app field (use {', '.join(sorted(APP_FIELDS))})")
    out: dict[str, Any] = {"name": name, "command": command}
    for key, value in fields.items():
        if key in ("shell", "postprocess_on_error", "postprocess_on_timeout"):
            out[key] = _bool(key, value)
        elif key == "error_retry_limit":
            out[key] = _int(key, value, 0)
        else:
            if not isinstance(value, str):
                raise TaskSpecError(f"{key}: must be text, got {type(value).__name__}")
            out[key] = value
    return out


def render_argv(command: str, params: Mapping[str, Any], args: Sequence[str] = (),
                shell: bool = False) -> list[str]:
    """The argv a task runs as. Without ``shell`` the template is split like a shell would
    split it *before* substitution, so a parameter value is always one argument and never
    interpreted; with ``shell`` values are quoted and the line runs under ``/bin/sh -c``."""
    # Numbers stay numbers so a format spec ({n:04d}) works; everything else is text.
    values = {k: v if isinstance(v, (int, float)) and not isinstance(v, bool) else _as_text(v)
              for k, v in params.items()}
    try:
        if shell:
            quoted = {k: shlex.quote(_as_text(v)) for k, v in values.items()}
            line = " ".join([command.format_map(quoted), *map(shlex.quote, args)])
            return ["/bin/sh", "-c", line]
        return [tok.format_map(values) for tok in shlex.split(command)] + list(args)
    except KeyError as exc:
        raise TaskSpecError(f"params: no value for placeholder {{{exc.args[0]}}}") from None
    except ValueError as exc:
        raise TaskSpecError(f"command: cannot split or fill {command!r} ({exc})") from None


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, sort_keys=True)


def _int(field: str, value: Any, minimum: int | None) -> int:
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise TaskSpecError(f"{field}: must be an integer, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise TaskSpecError(f"{field}: must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise TaskSpecError(f"{field}: must be ≥ {minimum}, got {value}")
    if not -(2**31) <= value < 2**31:
        raise TaskSpecError(f"{field}: {value} is out of range")
    return int(value)


def _float(field: str, value: Any) -> float:
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise TaskSpecError(f"{field}: must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TaskSpecError(f"{field}: must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise TaskSpecError(f"{field}: must be a number ≥ 0, got {value}")
    return float(value)


def _bool(field: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "1", "false", "no",
                                                            "0"):
        return value.strip().lower() in ("true", "yes", "1")
    raise TaskSpecError(f"{field}: must be true or false, got {value!r}")


def _text(field: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TaskSpecError(f"{field}: must be text, got {value!r}")
    return value


def _dict(field: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TaskSpecError(f"{field}: must be an object of key: value, got {value!r}")
    if field == "env":
        for k, v in value.items():
            if not isinstance(v, str) or not k or "=" in k:
                raise TaskSpecError(f"env: {k!r} must name a variable and map to text")
    return value


def _list(field: str, value: Any) -> list[str]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(
            isinstance(v, str) for v in value):
        raise TaskSpecError(f"{field}: must be a list of text, got {value!r}")
    return list(value)


def check_pattern(pattern: str) -> str:
    """An input_files glob must stay inside the parent's directory: relative, no '..'."""
    parts = pattern.replace("\\", "/").split("/")
    if not pattern or pattern.startswith("/") or ".." in parts:
        raise TaskSpecError(f"input_files: {pattern!r} must be a relative glob inside the "
                            "parent's directory (no leading '/', no '..')")
    return pattern


def _patterns(value: Any) -> list[str]:
    return [check_pattern(p) for p in _list("input_files", value)]


def _parents(value: Any) -> list[int | str]:
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise TaskSpecError(f"parents: must be a list of task ids or keys, got {value!r}")
    out: list[int | str] = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, str)):
            raise TaskSpecError(f"parents: {v!r} is neither a task id nor a key")
        out.append(v)
    return out


def _checker(field: str) -> Any:
    if field == "input_files":
        return _patterns
    if field in INT_FIELDS:
        minimum = INT_FIELDS[field]
        return lambda v: v if type(v) is int and (minimum is None or v >= minimum) \
            and -(2**31) <= v < 2**31 else _int(field, v, minimum)
    if field in FLOAT_FIELDS:
        return lambda v: _float(field, v)
    if field in DICT_FIELDS:
        return lambda v: _dict(field, v)
    if field in LIST_FIELDS:
        return lambda v: _list(field, v)
    if field in BOOL_FIELDS:
        return lambda v: _bool(field, v)
    if field == "parents":
        return _parents
    return lambda v: _text(field, v)


# field -> validator; check_task visits only the fields a task gives (speed: 100k tasks).
_CHECKERS = {f: _checker(f) for f in TASK_FIELDS}

# The value of every column a bulk add writes when the task does not give it (the
# database's defaults, 0001_initial.sql); sent once per batch, not once per task.
TASK_DEFAULTS: dict[str, Any] = {
    **INT_DEFAULTS, "error_retry_limit": 0, "name": "", "wall_time_min": 0.0,
    "fail_with_parents": True, "params": {}, "tags": {}, "env": {}, "data": {}, "args": [],
    "input_files": [], "state": "READY", "state_message": "", "pending_parents": 0,
    "failed_by": None,
}


def check_task(raw: Mapping[str, Any], apps: Mapping[str, AppInfo]) -> dict[str, Any]:
    """One validated task: the fields it gives (checked and converted), ``app_id`` for
    ``app``, and the app's error_retry_limit unless the task sets its own. Fields it does
    not give take TASK_DEFAULTS. Raises TaskSpecError naming the field."""
    if not isinstance(raw, Mapping):
        raise TaskSpecError(f"a task must be an object of field: value, got {raw!r}")
    for f in ("app", "workflow"):
        if raw.get(f) in (None, ""):
            raise TaskSpecError(f"{f}: missing (every task needs an app and a workflow)")
    app_name = raw["app"]
    app = apps.get(app_name) if isinstance(app_name, str) else None
    if app is None:
        _text("app", app_name)
        raise TaskSpecError(f"app: no app named {app_name!r}; add it with "
                            f"`balsam-mpi app add {app_name} --command '…'`")
    task: dict[str, Any] = {}
    checkers = _CHECKERS
    for k, v in raw.items():
        check = checkers.get(k)
        if check is None:
            raise TaskSpecError(f"{k}: unknown field (fields are the column names, "
                                "e.g. app, workflow, name, params, num_nodes, parents)")
        if v is not None:
            task[k] = check(v)
    del task["app"]
    task["app_id"] = app.id
    if app.error_retry_limit and "error_retry_limit" not in task:
        task["error_retry_limit"] = app.error_retry_limit
    params = task.get("params")
    if params or app.placeholders:
        check_params(params or {}, app)
    if app.python:
        for f in ("num_nodes", "ranks_per_node"):
            if task.get(f, 1) > 1:
                raise TaskSpecError(f"{f}: app {app.name!r} calls a Python function, which "
                                    "runs in one interpreter: num_nodes and ranks_per_node "
                                    "must be 1")
        if task.get("args"):
            raise TaskSpecError(f"args: app {app.name!r} calls a Python function: give its "
                                "keyword arguments as params")
    return task


def check_params(params: Mapping[str, Any], app: AppInfo) -> None:
    """Every placeholder has a value and every value has a placeholder (catches typos)."""
    if app.python:
        return  # keyword arguments of a function (JSON), not placeholders of a template
    for k in params:
        if k not in app.placeholders:
            have = ", ".join(sorted(app.placeholders)) or "none"
            raise TaskSpecError(f"params: {k!r} is not a placeholder of app {app.name!r} "
                                f"(its placeholders: {have})")
    for k in sorted(app.placeholders):
        if k not in params:
            raise TaskSpecError(f"params: app {app.name!r} needs a value for {{{k}}}")


def check_changes(changes: Mapping[str, Any]) -> dict[str, Any]:
    """Validated fields for `task modify` / Client.update."""
    out: dict[str, Any] = {}
    for f, value in changes.items():
        if f not in MODIFIABLE:
            raise TaskSpecError(f"{f}: cannot be modified (modifiable: "
                                f"{', '.join(sorted(MODIFIABLE))})")
        if f in INT_FIELDS:
            out[f] = _int(f, value, INT_FIELDS[f])
        elif f in FLOAT_FIELDS:
            out[f] = _float(f, value)
        elif f in DICT_FIELDS:
            out[f] = _dict(f, value)
        elif f == "input_files":
            out[f] = _patterns(value)
        elif f in LIST_FIELDS:
            out[f] = _list(f, value)
        elif f in BOOL_FIELDS:
            out[f] = _bool(f, value)
        else:
            out[f] = _text(f, value)
            if f == "workflow" and not value:
                raise TaskSpecError("workflow: must not be empty")
    return out
