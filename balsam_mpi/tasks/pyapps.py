"""Python apps: the function an app calls, named by import path, checked before the database.

An app names its function as ``package.module:function`` — dotted identifiers on both
sides of one colon, ASCII only (``pkg.mod:Class.method`` works too). The database checks
the same shape (migration 0009), so a row written through psql cannot hold anything else.
The path is all that travels: a task gives only keyword arguments, as JSON.

A Python app has no ``shell``, ``env_script``, preprocess or postprocess: its function
is called in a warm interpreter (``pypool``), with no process of its own around the call.
It alone may turn ``task_dirs`` off: its calls then run in their workflow's directory,
with their output in memory (docs/python-tasks.md, *Calls without directories*).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..base import limits, values
from ..base.errors import InputError
from . import validate

# App fields that only make sense around a process (the database refuses them too).
NOT_FOR_PYTHON = ("shell", "env_script", "preprocess", "postprocess",
                  "postprocess_on_error", "postprocess_on_timeout")
ONLY_PYTHON = ("task_dirs",)  # and this one only a call can do without (0020)


def check_task_dirs(value: Any, python: bool) -> bool:
    """``task_dirs``: true or false; false only for a Python app."""
    on = values.boolean("task_dirs", value)
    if not on and not python:
        raise InputError("task_dirs: only a Python app's calls can run without directories "
                         "of their own; a command's process runs in its directory, and "
                         "its outputs are what its children write to")
    return on


def check_path(path: Any, field: str = "python") -> str:
    """``package.module:function`` or one line saying what is wrong with it."""
    if not isinstance(path, str):
        raise InputError(f"{field}: must be text like package.module:function, "
                         f"got {path!r}")
    if len(path) > limits.PYTHON_PATH_MAX:
        raise InputError(f"{field}: {len(path)} characters; an import path has at most "
                         f"{limits.PYTHON_PATH_MAX}")
    if not limits.PYTHON_PATH.fullmatch(path):
        raise InputError(f"{field}: {path!r} is not an import path; write "
                         "package.module:function (dotted names, one colon, ASCII)")
    return path


def _given(key: str, value: Any) -> bool:
    if key in validate.APP_BOOLS and isinstance(value, str):
        return value.strip().lower() in ("true", "yes", "1")
    return value not in (None, "", False, 0)


def check_app(name: str, python: Any, fields: Mapping[str, Any]) -> dict[str, Any]:
    """Validated fields of a Python app: name, python, description, error_retry_limit."""
    path = check_path(python)
    for key in NOT_FOR_PYTHON:
        if _given(key, fields.get(key)):
            raise InputError(f"{key}: a Python app has none: its function is called in "
                             "a warm interpreter, with no process around the call "
                             "(docs/python-tasks.md)")
    rest = {k: v for k, v in fields.items() if k not in NOT_FOR_PYTHON + ONLY_PYTHON}
    # The name and the remaining fields are checked as for any app; the path stands in
    # for the command template, which it passes as one (it has no braces).
    out = validate.check_app(name, path, rest)
    del out["command"]
    out["python"] = path
    out["task_dirs"] = check_task_dirs(fields.get("task_dirs", True), python=True)
    return out
