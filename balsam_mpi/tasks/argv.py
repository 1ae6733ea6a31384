"""The argv a task runs as: its app's command template filled with the task's params.

``render_argv`` is the one function that does this (the node's runner calls it through the
launcher's task message); validation (``tasks/validate.py``) uses the same split to refuse, at
``app add``, a command that could never be split.
"""

from __future__ import annotations

import json
import re
import shlex
import string
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from ..base import limits, values
from ..base.errors import InputError


@lru_cache(maxsize=256)
def split_command(command: str) -> tuple[str, ...]:
    """shlex.split, once per command: it costs O(n) per character with a large constant
    (35 ms for a 64 KiB command here), and an ensemble renders one command many times."""
    return tuple(shlex.split(command))


_SPEC_NUMBER = re.compile(r"[0-9]+")


@lru_cache(maxsize=256)
def check_format_specs(command: str) -> None:
    """Each placeholder's format spec ({n:04d}) holds no placeholder of its own (a name no
    task may give: params refuses it), and no width or precision beyond what one argument
    may hold. Checked at `app add` (validate.check_app) and again before every fill, once
    per command (cached: a refusal raises and is not cached, so it is said each time): a
    template stored past the client must not make the leader build a gigabyte of text
    before the size of the command line is measured."""
    for _text, field, spec, _conv in string.Formatter().parse(command):
        if field is None or not spec:
            continue
        if "{" in spec or "}" in spec:
            raise InputError(f"command: placeholder {{{field}}}'s format "
                             f"{values.show(spec, 40)} holds a nested placeholder; write "
                             "the format out")
        for number in _SPEC_NUMBER.findall(spec):
            if len(number) > 6 or int(number) > limits.ARG_MAX:
                raise InputError(f"command: placeholder {{{field}}}'s format "
                                 f"{values.show(spec, 40)} asks for {number} characters; "
                                 f"one argument holds at most {limits.ARG_MAX:,}")


def render_argv(command: str, params: Mapping[str, Any], args: Sequence[str] = (),
                shell: bool = False) -> list[str]:
    """The argv a task runs as. Without ``shell`` the template is split like a shell would
    split it *before* substitution, so a parameter value is always one argument and never
    interpreted; with ``shell`` values are quoted and the line runs under ``/bin/sh -c``."""
    # Numbers stay numbers so a format spec ({n:04d}) works; everything else is text.
    filled = {k: v if isinstance(v, (int, float)) and not isinstance(v, bool) else _as_text(v)
              for k, v in params.items()}
    try:
        check_format_specs(command)
        numeric = numeric_fields(command)
        for name, spec in numeric:
            value = filled.get(name)
            if isinstance(value, str):
                filled[name] = _as_number(name, spec, value)
        if shell:
            # a formatted number is digits, signs, '.', 'e' and letters of its base: no
            # quoting needed, and quoting would make it text the format cannot take
            as_is = {name for name, _spec in numeric}
            quoted = {k: v if k in as_is and isinstance(v, (int, float)) and
                      not isinstance(v, bool) else shlex.quote(_as_text(v))
                      for k, v in filled.items()}
            line = " ".join([command.format_map(quoted), *map(shlex.quote, args)])
            return ["/bin/sh", "-c", line]
        return [tok.format_map(filled) for tok in split_command(command)] + list(args)
    except KeyError as exc:
        raise InputError(f"params: no value for placeholder {{{exc.args[0]}}}") from None
    except ValueError as exc:
        raise InputError(f"command: cannot split or fill {values.show(command)} "
                         f"({exc})") from None


_INT_TYPES, _FLOAT_TYPES = frozenset("bdoxX"), frozenset("eEfFgG%n")


@lru_cache(maxsize=256)
def numeric_fields(command: str) -> tuple[tuple[str, str], ...]:
    """(name, spec) of each placeholder whose format asks for a number ({n:04d},
    {x:.3f}): `--param n=5` and CSV cells give text, which such a format refuses."""
    return tuple((field, spec) for _text, field, spec, _conv in string.Formatter().parse(command)
                 if field and spec and spec[-1] in _INT_TYPES | _FLOAT_TYPES)


def _as_number(name: str, spec: str, text: str) -> int | float:
    # "n" takes either: a whole number stays one (so "7" is not written "7.0")
    whole = spec[-1] in _INT_TYPES or (spec[-1] == "n" and text.strip().lstrip("+-").isdigit())
    try:
        return int(text, 10) if whole else float(text)
    except ValueError:
        raise InputError(f"params: {{{name}}} is formatted as a number ({spec}), got "
                         f"{values.show(text, 40)}") from None


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, sort_keys=True)
