"""A JSON document from a user, measured as Postgres will store it. Pure; no database.

The caps of ``base/limits.py`` on params, tags, env and data are on the bytes of the stored
jsonb's text (``octet_length(value::text)``), so the client measures the same thing the
database's CHECK constraints do, and refuses what JSON cannot hold (non-text keys, NaN,
NUL, undecodable text, hostile depth) with one line naming the field and the path in it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from . import limits
from .errors import InputError
from .values import kind_of, show

_BIG = 10**4000  # str() of a longer integer is refused by Python itself (3.11+)


def json_object(field: str, value: Any, max_bytes: int, *, key_max: int | None = None,
                max_depth: int = limits.JSON_MAX_DEPTH) -> dict[str, Any]:
    """A JSON object as Postgres will store it (jsonb): text keys, JSON values only
    (finite numbers), nested at most ``max_depth`` deep, at most ``max_bytes`` of text.

    The size is measured as ``octet_length(value::text)`` would measure the stored jsonb,
    so the client and the database's CHECK agree on where the cap is."""
    doc: dict[str, Any]
    if type(value) is dict:  # the common case, first: no ABC check
        doc = value
        size = _flat_size(doc, key_max)
        if size is None:
            size = json_size(field, doc, max_depth, key_max)
    elif isinstance(value, Mapping):
        size = json_size(field, value, max_depth, key_max)
        doc = dict(value)
    else:
        raise InputError(f"{field}: must be an object of key: value, got {kind_of(value)} "
                         f"{show(value)}")
    if size > max_bytes:
        raise InputError(f"{field}: at most {max_bytes:,} bytes as JSON, got {size:,}")
    return doc


def json_size(field: str, doc: Any, max_depth: int = limits.JSON_MAX_DEPTH,
              key_max: int | None = None) -> int:
    """Bytes of the jsonb text form of ``doc`` (``{"a": 1, "b": [1, 2]}``); refuses what
    JSON cannot hold. Iterative: a hostile depth cannot exhaust the stack."""
    size = 0
    stack: list[tuple[str, Any, int]] = [(field, doc, 1)]
    while stack:
        path, value, depth = stack.pop()
        if isinstance(value, str):
            size += _string_size(path, value)
        elif value is None or isinstance(value, bool):
            size += 4 if value is None or value else 5
        elif isinstance(value, int):
            size += len(str(value)) if -_BIG < value < _BIG else _too_big(path)
        elif isinstance(value, float):
            size += _float_size(path, value)
        elif isinstance(value, Mapping) or isinstance(value, (list, tuple)):
            if depth > max_depth:
                raise InputError(f"{field}: nested deeper than {max_depth} levels")
            items = value.items() if isinstance(value, Mapping) else enumerate(value)
            n = 0
            for key, item in items:
                n += 1
                if isinstance(value, Mapping):
                    if not isinstance(key, str):
                        raise InputError(f"{path}: keys must be text, got {kind_of(key)} "
                                         f"{show(key)}")
                    if key_max is not None and depth == 1 and len(key) > key_max:
                        raise InputError(f"{path}: keys have at most {key_max:,} characters, "
                                         f"got {len(key):,}")
                    sub = f"{path}.{key}" if key.isidentifier() else f"{path}[{show(key, 40)}]"
                    size += _string_size(sub, key) + 2  # ": "
                else:
                    sub = f"{path}[{key}]"
                stack.append((sub, item, depth + 1))
            size += 2 + 2 * max(n - 1, 0)  # brackets and ", " between items
        else:
            raise InputError(f"{path}: {kind_of(value)} {show(value)} is not a JSON value "
                             "(text, number, true/false, null, list or object)")
    return size


def _flat_size(doc: dict[Any, Any], key_max: int | None) -> int | None:
    """json_size of a flat object of plain ASCII text and integers (the common params and
    tags), in one pass; None when anything needs the general walk."""
    size = 2 + 2 * max(len(doc) - 1, 0)
    for key, value in doc.items():
        if type(key) is not str or not _plain(key) or key_max is not None and len(key) > key_max:
            return None
        size += len(key) + 4  # quotes and ": "
        kind = type(value)
        if kind is int and -10**18 < value < 10**18:
            size += len(str(value))
        elif kind is str and _plain(value):
            size += len(value) + 2
        else:
            return None
    return size


def _plain(text: str) -> bool:
    """ASCII that JSON writes as is: printable (no NUL, no control), no quote, no backslash."""
    return text.isascii() and text.isprintable() and '"' not in text and "\\" not in text


def _string_size(path: str, value: str) -> int:
    if "\x00" in value:
        raise InputError(f"{path}: contains a NUL character (\\x00), which cannot be stored")
    if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return len(value) + 2
    try:
        return len(json.dumps(value, ensure_ascii=False).encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InputError(f"{path}: not valid UTF-8 (undecodable byte at character "
                         f"{exc.start})") from None


def _float_size(path: str, value: float) -> int:
    if not math.isfinite(value):
        raise InputError(f"{path}: {value!r} is not a JSON number (numbers must be finite)")
    # jsonb keeps numbers as Postgres numeric, which prints without an exponent and with
    # no negative zero: 1e-07 is stored as 0.0000001, -0.0 as 0.0.
    if value == 0:
        return 3
    written = repr(value)
    if "e" not in written:
        return len(written)
    return len(format(Decimal(written), "f"))


def _too_big(path: str) -> int:
    raise InputError(f"{path}: a number with more than 4,000 digits")
