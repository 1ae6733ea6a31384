"""Validating task and app input. Pure: no database.

A task is a dict whose keys are the column names of docs/architecture.md §4 (the same names as the
CLI flags, with dashes there). Everything a user can get wrong is caught here, before the
database is touched, with one line naming the field (an ``InputError``; the caller adds
where: a line number or a position in a list).
"""

from __future__ import annotations

import json
import math
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..base import jsondoc, limits, values
from ..base.errors import InputError
from .argv import check_format_specs, split_command

# field -> (minimum, maximum), base/limits.py's. Defaults are the database's (0001_initial.sql).
INT_FIELDS: dict[str, tuple[int, int]] = dict(limits.INT_RANGES)
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
APP_BOOLS = ("shell", "postprocess_on_error", "postprocess_on_timeout")
_APP_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A JSON object's byte cap (base/limits.py), and whether its keys are capped like names.
_DICT_CAPS = {"params": limits.PARAMS_MAX_BYTES, "tags": limits.TAGS_MAX_BYTES,
              "env": limits.ENV_MAX_BYTES, "data": limits.DATA_MAX_BYTES}


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
        raise InputError(f"command: bad template {values.show(command)} ({exc}); "
                         "write a literal brace as {{ or }}") from None
    for _text, field, _spec, _conv in parsed:
        if field is None:
            continue
        if not _IDENT.match(field):
            raise InputError(f"command: placeholder {{{values.show(field, 40)[1:-1]}}} "
                             "must be a plain name like {input}; write a literal brace "
                             "as {{ or }}")
        names.add(field)
    return frozenset(names)


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_app(name: str, command: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """Validated app fields (the name, the template and the optional ones)."""
    values.text("name", name, limits.NAME_MAX, empty=False)
    if not _APP_NAME.match(name):
        raise InputError(f"name: app names use letters, digits, '_', '.', '-'; "
                         f"got {values.show(name)}")
    values.text("command", command, limits.COMMAND_MAX)
    if not command.strip():
        raise InputError("command: an app needs a non-empty command")
    placeholders(command)
    check_format_specs(command)
    unknown = sorted(set(fields) - APP_FIELDS)
    if unknown:
        raise InputError(f"{values.label(unknown[0])}: not an app field "
                         f"(use {', '.join(sorted(APP_FIELDS))})")
    out: dict[str, Any] = {"name": name, "command": command}
    for key, value in fields.items():
        if key in APP_BOOLS:
            out[key] = values.boolean(key, value)
        elif key == "error_retry_limit":
            out[key] = values.integer(key, value, *INT_FIELDS[key])
        else:
            cap = limits.DESCRIPTION_MAX if key == "description" else limits.COMMAND_MAX
            out[key] = values.text(key, value, cap)
    if not out.get("shell"):
        try:  # an unclosed quote would fail every task of the app, at run time
            split_command(command)
        except ValueError as exc:
            raise InputError(f"command: cannot be split into arguments ({exc}); "
                             "close the quotation or add the app with --shell") from None
    return out


def _dict(field: str, value: Any) -> dict[str, Any]:
    doc = jsondoc.json_object(field, value, _DICT_CAPS[field],
                             key_max=limits.NAME_MAX if field in ("tags", "env") else None)
    if field == "tags" and doc:
        for k, v in doc.items():
            values.plain("tags", k, f"the key {values.show(k, 40)} ")
            if isinstance(v, str):
                values.plain(f"tags.{k}" if k.isidentifier() else "tags", v)
    if field == "env":
        for k, v in doc.items():
            # the database's env_names_ok, which refuses any other name as "outside the
            # limits" without naming it
            if not _ENV_NAME.fullmatch(k):
                raise InputError(f"env: {values.show(k, 40)} is not a variable name "
                                 "(ASCII letters, digits and '_', not starting with a digit)")
            values.text(f"env.{k}" if k.isidentifier() else "env", v, limits.ENV_VALUE_MAX)
    return doc


def _args(value: Any) -> list[str]:
    return values.text_list("args", value, limits.ARG_MAX, limits.ARGS_MAX_ITEMS,
                            limits.ARGS_MAX_BYTES)


def _patterns(value: Any) -> list[str]:
    patterns = values.text_list("input_files", value, limits.PATTERN_MAX,
                                limits.INPUT_FILES_MAX_ITEMS)
    return [values.check_pattern(p, f"input_files[{i}]") for i, p in enumerate(patterns)]


def _parents(value: Any) -> list[int | str]:
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (list, tuple)):
        raise InputError(f"parents: must be a list of task ids or keys, got "
                         f"{values.show(value)}")
    out: list[int | str] = []
    for i, ref in enumerate(value):
        if isinstance(ref, str):
            out.append(values.name(f"parents[{i}]", ref))
        else:
            out.append(values.task_id(f"parents[{i}]", ref))
    return out


def _workflow(value: Any) -> str:
    return values.plain("workflow", values.text("workflow", value, limits.NAME_MAX,
                                                empty=False))


def _checker(field: str) -> Callable[[Any], Any]:
    if field in INT_FIELDS:
        lo, hi = INT_FIELDS[field]
        # the common case first: a plain int in range (speed: 100k tasks per call)
        return lambda v: v if type(v) is int and lo <= v <= hi \
            else values.integer(field, v, lo, hi)
    if field in FLOAT_FIELDS:
        return lambda v: values.number(field, v, 0.0, limits.WALL_TIME_MIN_MAX)
    if field in DICT_FIELDS:
        return lambda v: _dict(field, v)
    if field in BOOL_FIELDS:
        return lambda v: values.boolean(field, v)
    named: dict[str, Callable[[Any], Any]] = {
        "args": _args, "input_files": _patterns, "parents": _parents,
        "workflow": _workflow, "key": lambda v: values.name("key", v)}
    return named.get(field, lambda v: values.name(field, v))


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
    not give take TASK_DEFAULTS. Raises InputError naming the field."""
    _required(raw)
    app_name = raw["app"]
    app = apps.get(app_name) if isinstance(app_name, str) else None
    if app is None:
        values.name("app", app_name)
        raise InputError(f"app: no app named {values.show(app_name)}; add it with "
                         f"`balsam-mpi app add NAME --command '…'`")
    task = _fields(raw)
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
                raise InputError(f"{f}: app {app.name!r} calls a Python function, which "
                                 "runs in one interpreter: num_nodes and ranks_per_node "
                                 "must be 1")
        if task.get("args"):
            raise InputError(f"args: app {app.name!r} calls a Python function: give its "
                             "keyword arguments as params")
    return task


def check_shape(raw: Any) -> dict[str, Any]:
    """What can be checked of one task without the database: every field it gives, not
    whether its app exists or fits its params (a task adding tasks through its launcher
    has no connection; the launcher's writer checks the rest, with check_task)."""
    _required(raw)
    return _fields(raw)


def _required(raw: Any) -> None:
    if not isinstance(raw, Mapping):
        raise InputError(f"a task must be an object of field: value, got "
                         f"{values.show(raw)}")
    for f in ("app", "workflow"):
        if raw.get(f) in (None, ""):
            raise InputError(f"{f}: missing (every task needs an app and a workflow)")


def _fields(raw: Mapping[str, Any]) -> dict[str, Any]:
    task: dict[str, Any] = {}
    checkers = _CHECKERS
    for k, v in raw.items():
        check = checkers.get(k)
        if check is None:
            raise InputError(f"{values.label(k)}: unknown field (fields are the column "
                             "names, e.g. app, workflow, name, params, num_nodes, parents)")
        if v is not None:
            task[k] = check(v)
    return task


def check_params(params: Mapping[str, Any], app: AppInfo) -> None:
    """Every placeholder has a value and every value has a placeholder (catches typos)."""
    if app.python:
        return  # keyword arguments of a function (JSON), not placeholders of a template
    for k in params:
        if k not in app.placeholders:
            have = ", ".join(sorted(app.placeholders)) or "none"
            raise InputError(f"params: {values.show(k, 40)} is not a placeholder of app "
                             f"{app.name!r} (its placeholders: {have})")
    for k in sorted(app.placeholders):
        if k not in params:
            raise InputError(f"params: app {app.name!r} needs a value for {{{k}}}")


def check_changes(changes: Mapping[str, Any]) -> dict[str, Any]:
    """Validated fields for `task modify` / Client.update: as strict as an add."""
    out: dict[str, Any] = {}
    for f, value in changes.items():
        if f not in MODIFIABLE:
            raise InputError(f"{values.label(f)}: cannot be modified "
                             f"(modifiable: {', '.join(sorted(MODIFIABLE))})")
        if value is None:
            raise InputError(f"{f}: cannot be set to null")
        out[f] = _CHECKERS[f](value)
    return out


def from_text(field: str, raw: str) -> Any:
    """A field's value written as text (a flag, a CSV cell, ``--set``), parsed by the
    field's type: numbers and booleans strictly, objects and lists as JSON, text as is."""
    if field in INT_FIELDS:
        return values.int_from_text(field, raw, *INT_FIELDS[field])
    if field in FLOAT_FIELDS:
        return values.number_from_text(field, raw, 0.0, limits.WALL_TIME_MIN_MAX)
    if field in BOOL_FIELDS:
        return values.bool_from_text(field, raw)
    if field in DICT_FIELDS or field in LIST_FIELDS or field == "parents":
        return parse_json(field, raw)
    return raw


def parse_json(field: str, raw: str) -> Any:
    """JSON text of one field: one line naming it for malformed, deep or non-finite JSON."""
    values.text(field, raw, limits.PARAMS_MAX_BYTES + limits.DATA_MAX_BYTES)
    try:
        return strict_json(raw)
    except RecursionError:
        raise InputError(f"{field}: nested deeper than {limits.JSON_MAX_DEPTH} "
                         "levels") from None
    except DuplicateKey as exc:
        raise InputError(f"{field}: {exc}") from None
    except ValueError as exc:
        raise InputError(f"{field}: expected JSON, got {values.show(raw)} "
                         f"({str(exc).splitlines()[0][:80]})") from None


class DuplicateKey(ValueError):
    """A JSON object that names one key twice."""


def strict_json(text: str) -> Any:
    """json.loads without NaN / Infinity, without numbers too large to be finite, and
    without an object that names a key twice (json.loads keeps the last value and drops
    the other without a word; CSV columns and KEY=VALUE flags refuse the same)."""
    return json.loads(text, parse_constant=_no_constant, parse_float=_finite,
                      object_pairs_hook=_unique_keys)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(f"{values.show(key, 40)} given twice (each key of a "
                                   "JSON object once)")
            seen.add(key)
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(literal: str) -> float:
    value = float(literal)
    if math.isinf(value):
        raise ValueError(f"{literal[:40]} is too large for a number")
    return value
