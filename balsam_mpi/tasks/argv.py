"""The argv a task runs as: its app's command template filled with the task's params.

``render_argv`` is the one function that does this (the node's runner calls it through the
launcher's task message); validation (``tasks/validate.py``) uses the same split to refuse, at
``app add``, a command that could never be split.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from ..base import values
from ..base.errors import InputError


@lru_cache(maxsize=256)
def split_command(command: str) -> tuple[str, ...]:
    """shlex.split, once per command: it costs O(n) per character with a large constant
    (35 ms for a 64 KiB command here), and an ensemble renders one command many times."""
    return tuple(shlex.split(command))


def render_argv(command: str, params: Mapping[str, Any], args: Sequence[str] = (),
                shell: bool = False) -> list[str]:
    """The argv a task runs as. Without ``shell`` the template is split like a shell would
    split it *before* substitution, so a parameter value is always one argument and never
    interpreted; with ``shell`` values are quoted and the line runs under ``/bin/sh -c``."""
    # Numbers stay numbers so a format spec ({n:04d}) works; everything else is text.
    filled = {k: v if isinstance(v, (int, float)) and not isinstance(v, bool) else _as_text(v)
              for k, v in params.items()}
    try:
        if shell:
            quoted = {k: shlex.quote(_as_text(v)) for k, v in filled.items()}
            line = " ".join([command.format_map(quoted), *map(shlex.quote, args)])
            return ["/bin/sh", "-c", line]
        return [tok.format_map(filled) for tok in split_command(command)] + list(args)
    except KeyError as exc:
        raise InputError(f"params: no value for placeholder {{{exc.args[0]}}}") from None
    except ValueError as exc:
        raise InputError(f"command: cannot split or fill {values.show(command)} "
                         f"({exc})") from None


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, sort_keys=True)
