"""One value from a user, checked against the caps of ``base/limits.py``. Pure; no database.

Every check raises :class:`~balsam_mpi.base.errors.InputError` with one line that starts with
the field's name, so callers only add where the value came from (a file's line, a flag).

Two doors, one rule each, decided once:

* **Typed values** (the Python API, JSON lines, ``--set`` JSON): a number must be a number.
  The text ``"3"`` is not a ``num_nodes``, ``3.0`` is not a whole number, ``true`` is not 1.
  Integers of other libraries (``numpy.int64``) are accepted through ``__index__``.
* **Text** (command-line flags, CSV cells, environment variables): parsed by a strict
  grammar — ASCII digits, an optional sign, and for real numbers a decimal point and an
  exponent; no ``nan``/``inf``, no ``1_000``, no other scripts' digits, no hex.

Text fields refuse NUL (Postgres cannot store it) and text that is not valid UTF-8 (a
command line decoded with ``surrogateescape``): either would fail later with a message
that names nothing. JSON documents (params, tags, env, data) are checked by ``base/jsondoc.py``.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Mapping
from typing import Any

from . import limits, termtext
from .errors import InputError

_INT_TEXT = re.compile(r"[+-]?[0-9]{1,30}")
_REAL_TEXT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,4})?")
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})
_BLANK = " \t\r\n"


def show(value: Any, limit: int = 60) -> str:
    """A value for an error message: repr (one line, escapes shown), cut to ``limit``."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def label(key: Any) -> str:
    """A field name a user gave, as an error's first word: plain when it reads as a name."""
    if isinstance(key, str) and key.isidentifier() and len(key) <= 64:
        return key
    return show(key, 40)


# -- text ---------------------------------------------------------------------------------
def text(field: str, value: Any, max_chars: int, *, empty: bool = True) -> str:
    """A text value: a str, no NUL, valid UTF-8, at most ``max_chars`` characters."""
    if type(value) is str and value.isascii() and len(value) <= max_chars \
            and "\x00" not in value and (value or empty):
        return value  # the common case, first (speed: 100k tasks per call)
    if not isinstance(value, str):
        raise InputError(f"{field}: must be text, got {kind_of(value)} {show(value)}")
    if not value and not empty:
        raise InputError(f"{field}: must not be empty")
    if len(value) > max_chars:
        raise InputError(f"{field}: at most {max_chars:,} characters, got {len(value):,}")
    if "\x00" in value:
        raise InputError(f"{field}: contains a NUL character (\\x00), which cannot be stored")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InputError(f"{field}: not valid UTF-8 (undecodable byte at character "
                             f"{exc.start + 1})") from None
    return value


def name(field: str, value: Any) -> str:
    """A workflow, task name or filter value: text of at most NAME_MAX characters, a
    label (:func:`plain`)."""
    return plain(field, text(field, value, limits.NAME_MAX))




def plain(field: str, value: str, what: str = "") -> str:
    """``value`` if it holds no control character or bidirectional mark; else one line
    naming the field, the character (spelled out) and where it is.

    The characters are those a terminal acts on (every C0 control, tab and newline
    included, DEL, the C1 controls) and the marks and overrides of bidirectional text:
    ``termtext.NOT_IN_LABELS``, the set the CLIs spell out when they print a stored value,
    with tab and newline, which covers rows written before labels were checked."""
    if value.isascii() and value.isprintable():  # the common case: nothing to look for
        return value
    found = termtext.NOT_IN_LABELS.search(value)
    if found is None:
        return value
    ch = found.group()
    kind = "bidirectional control" if ord(ch) > 0x9f else "control"
    raise InputError(f"{field}: {what}contains the {kind} character "
                     f"{termtext.spelled(ch)} (character {found.start() + 1}); names, "
                     "workflows and tags are labels people read, so they may not hold "
                     "control characters or bidirectional marks")


_UNIX_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")


def unix_name(field: str, value: Any) -> str:
    """An account or group name that is safe to hand to useradd, usermod or getpwnam:
    letters, digits, '_', '.', '-', not starting with '-' (an option) or a digit."""
    name = text(field, value, 64, empty=False)
    if not _UNIX_NAME.fullmatch(name):
        raise InputError(f"{field}: {show(name)} is not a usable account or group name "
                         "(letters, digits, _ . -; not starting with a digit, '.' or '-')")
    return name


def path(field: str, value: Any) -> str:
    """A file-system path given by a user: text, no NUL, at most PATH_MAX (4,096) bytes."""
    given = text(field, value, 4096, empty=False)
    if len(given.encode("utf-8")) > 4096:
        raise InputError(f"{field}: longer than 4,096 bytes")
    return given


# -- numbers ------------------------------------------------------------------------------
def integer(field: str, value: Any, lo: int, hi: int) -> int:
    """A whole number in [lo, hi]; typed: text, floats and booleans are refused."""
    if isinstance(value, bool) or isinstance(value, (str, bytes, float)):
        raise InputError(f"{field}: must be a whole number, got {kind_of(value)} {show(value)}")
    try:
        number = operator.index(value)
    except TypeError:
        raise InputError(f"{field}: must be a whole number, got {kind_of(value)} "
                         f"{show(value)}") from None
    if not lo <= number <= hi:
        raise InputError(f"{field}: must be from {lo:,} to {hi:,}, got {show(number, 40)}")
    return number


def number(field: str, value: Any, lo: float, hi: float) -> float:
    """A finite real number in [lo, hi]; typed: text and booleans are refused."""
    if isinstance(value, (bool, str, bytes)):
        raise InputError(f"{field}: must be a number, got {kind_of(value)} {show(value)}")
    if _is_index(value):
        whole = operator.index(value)  # compared exactly: 10**400 is out of range, not inf
        if not lo <= whole <= hi:
            raise InputError(f"{field}: must be from {lo:g} to {hi:g}, got {show(whole, 40)}")
        return float(whole)
    try:
        real = float(value)  # float, numpy floats, Decimal
    except (TypeError, ValueError):
        raise InputError(f"{field}: must be a number, got {kind_of(value)} "
                         f"{show(value)}") from None
    if not math.isfinite(real):
        raise InputError(f"{field}: must be a finite number, got {show(value, 40)}")
    if not lo <= real <= hi:
        raise InputError(f"{field}: must be from {lo:g} to {hi:g}, got {show(real, 40)}")
    return real


def boolean(field: str, value: Any) -> bool:
    """True or false; typed: 1, "yes" and None are refused."""
    if not isinstance(value, bool):
        raise InputError(f"{field}: must be true or false, got {kind_of(value)} {show(value)}")
    return value


def task_id(field: str, value: Any, noun: str = "task") -> int:
    """A task (or batch job) id: a whole number from 1 to 2^63-1 (bigint)."""
    if isinstance(value, bool) or not _is_index(value):
        raise InputError(f"{field}: {show(value)} is not a {noun} id (a whole number ≥ 1)")
    number = operator.index(value)
    if not 1 <= number <= limits.ID_MAX:
        raise InputError(f"{field}: {show(number, 40)} is not a {noun} id (ids are from 1 "
                         f"to 2^63-1)")
    return number


# -- from text ----------------------------------------------------------------------------
def int_from_text(field: str, raw: str, lo: int, hi: int) -> int:
    """A whole number written as text (a flag, a CSV cell, an environment variable)."""
    stripped = _checked_text(field, raw).strip(_BLANK)
    if not _INT_TEXT.fullmatch(stripped):
        raise InputError(f"{field}: must be a whole number, got {show(raw)}")
    return integer(field, int(stripped), lo, hi)


def number_from_text(field: str, raw: str, lo: float, hi: float) -> float:
    """A finite real number written as text: 30, 2.5, .5, 1e3 (never nan, inf, 1_0)."""
    stripped = _checked_text(field, raw).strip(_BLANK)
    if not _REAL_TEXT.fullmatch(stripped):
        raise InputError(f"{field}: must be a number like 30 or 2.5, got {show(raw)}")
    return number(field, float(stripped), lo, hi)


def bool_from_text(field: str, raw: str) -> bool:
    low = _checked_text(field, raw).strip(_BLANK).lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise InputError(f"{field}: must be true or false (or yes/no, on/off, 1/0), "
                     f"got {show(raw)}")


def id_from_text(field: str, raw: str, noun: str = "task") -> int:
    stripped = _checked_text(field, raw).strip(_BLANK)
    if not _INT_TEXT.fullmatch(stripped):
        raise InputError(f"{field}: {show(raw)} is not a {noun} id (a whole number ≥ 1)")
    return task_id(field, int(stripped), noun)


def count_from_text(field: str, raw: str, hi: int = limits.ID_MAX - 1) -> int:
    """How many (``--limit``): a whole number from 1 to ``hi``."""
    return int_from_text(field, raw, 1, hi)


def _checked_text(field: str, raw: Any) -> str:
    return text(field, raw, 100)  # a number written out is short


# -- lists -------------------------------------------------------------------------------
def text_list(field: str, value: Any, item_max: int, max_items: int,
              max_bytes: int | None = None) -> list[str]:
    """A list of text: each item checked, at most ``max_items`` (and ``max_bytes`` in all)."""
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (list, tuple)):
        raise InputError(f"{field}: must be a list of text, got {kind_of(value)} {show(value)}")
    if len(value) > max_items:
        raise InputError(f"{field}: at most {max_items:,} items, got {len(value):,}")
    total = 0
    for i, item in enumerate(value):
        text(f"{field}[{i}]", item, item_max)
        total += len(item) if item.isascii() else len(item.encode("utf-8"))
    if max_bytes is not None and total > max_bytes:
        raise InputError(f"{field}: at most {max_bytes:,} bytes in all, got {total:,}")
    return list(value)


def _is_index(value: Any) -> bool:
    if isinstance(value, (str, bytes, float)):
        return False
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "the text"
    if isinstance(value, bytes):
        return "bytes"
    if isinstance(value, float):
        return "the number"
    if isinstance(value, int):
        return "the integer"
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"a {type(value).__name__}"


def check_pattern(pattern: str, field: str = "input_files") -> str:
    """An input_files glob must stay inside the parent's directory: relative, no '..'."""
    text(field, pattern, limits.PATTERN_MAX)
    parts = pattern.replace("\\", "/").split("/")
    if not pattern or pattern.startswith("/") or ".." in parts:
        raise InputError(f"{field}: {show(pattern)} must be a relative glob inside "
                         "the parent's directory (no leading '/', no '..')")
    return pattern
