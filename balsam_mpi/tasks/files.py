"""Reading tasks from the command line and from files (JSON lines or CSV). Pure.

Each record is a dict of column names, as in the Python API. Errors name the file and
line and the field; nothing is written unless every line is good.

Files are read as bytes and decoded line by line, so a byte that is not UTF-8 is reported
with its line (a UTF-8 byte-order mark on the first line is allowed), and no line longer
than ``LINE_MAX_BYTES`` is ever held whole.

CSV: the header names the fields. ``params``, ``tags``, ``env``, ``data`` and the lists
(``args``, ``input_files``, ``parents``) hold JSON, or a column ``params.who`` /
``tags.k`` / ``env.K`` fills one entry; empty cells mean "not given". Every other cell is
text parsed by its field's type (``validate.from_text``): ``3`` is a number there, as on
the command line, while JSON lines and the Python API must give numbers as numbers.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, Any

from ..base import limits, values
from ..base.errors import InputError
from .validate import (
    DICT_FIELDS,
    LIST_FIELDS,
    MODIFIABLE,
    DuplicateKey,
    from_text,
    parse_json,
    strict_json,
)

# Longer than any task the caps allow (base/limits.py: the JSON documents, args and patterns
# together, escaped), short enough that a hostile file cannot fill memory with one line.
LINE_MAX_BYTES = 16 * 1024 * 1024
_BOM = b"\xef\xbb\xbf"
# One KEY=VALUE flag; the field's own cap is checked with the task (base/limits.py).
_PAIR_MAX = limits.PARAMS_MAX_BYTES + limits.DATA_MAX_BYTES

Lines = IO[bytes] | IO[str] | Iterable[bytes] | Iterable[str]


def parse_pairs(items: Iterable[str], field: str) -> dict[str, str]:
    """``k=v`` flags (``--param who=world``) as a dict; the error names the flag (and the
    key: ``params.who``; for ``--set`` the key is the field)."""
    out: dict[str, str] = {}
    for item in items:
        if not isinstance(item, str):
            raise InputError(f"{field}: expected KEY=VALUE, got {values.show(item)}")
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InputError(f"{field}: expected KEY=VALUE, got {values.show(item)}")
        values.name(field, key)
        if key in out:
            raise InputError(f"{field}: {values.show(key, 40)} given twice")
        values.text(key if field == "set" else f"{field}.{key}", value, _PAIR_MAX)
        out[key] = value
    return out


def parse_sets(items: Iterable[str]) -> dict[str, Any]:
    """``--set field=value`` (``task modify``): each value parsed by its field's type —
    ``priority=5`` is a number, ``name=123`` is text, ``tags={"k": "v"}`` is JSON."""
    out: dict[str, Any] = {}
    for field, raw in parse_pairs(items, "set").items():
        if field not in MODIFIABLE:
            raise InputError(f"{values.label(field)}: cannot be "
                             f"modified (modifiable: {', '.join(sorted(MODIFIABLE))})")
        out[field] = from_text(field, raw)
    return out


def _numbered(stream: Lines, source: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line, decoded strictly; one line per error."""
    for n, raw in enumerate(_raw_lines(stream), 1):
        if isinstance(raw, bytes):
            if len(raw) > LINE_MAX_BYTES:
                raise InputError(f"{source} line {n}: longer than {LINE_MAX_BYTES:,} "
                                 "bytes; no task is that large")
            if n == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM):]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(f"{source} line {n}: not valid UTF-8 (byte "
                                 f"0x{raw[exc.start]:02x} at byte {exc.start + 1}); "
                                 "save the file as UTF-8") from None
        else:
            text = raw
            if len(text) > LINE_MAX_BYTES:
                raise InputError(f"{source} line {n}: longer than {LINE_MAX_BYTES:,} "
                                 "characters; no task is that large")
        yield n, text


def _raw_lines(stream: Lines) -> Iterator[bytes | str]:
    readline = getattr(stream, "readline", None)
    if readline is None:  # any iterable of lines (tests, generators)
        yield from stream
        return
    while True:  # never more than one capped line in memory
        raw = readline(LINE_MAX_BYTES + 1)
        if not raw:
            return
        yield raw


def read_jsonl(stream: Lines, source: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(label, task) for each non-blank, non-comment line."""
    for n, task in numbered_jsonl(stream, source):
        yield f"{source} line {n}", task


def numbered_jsonl(stream: Lines, source: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, task) for each non-blank, non-comment line."""
    for n, line in _numbered(stream, source):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            obj = strict_json(text)
        except RecursionError:
            raise InputError(f"{source} line {n}: nested deeper than "
                             f"{limits.JSON_MAX_DEPTH} levels") from None
        except DuplicateKey as exc:
            raise InputError(f"{source} line {n}: {exc}") from None
        except json.JSONDecodeError as exc:
            raise InputError(f"{source} line {n}: malformed JSON ({exc.msg} at column "
                             f"{exc.colno})") from None
        except ValueError as exc:  # NaN, Infinity, an integer of over 4,300 digits
            raise InputError(f"{source} line {n}: malformed JSON "
                             f"({str(exc).splitlines()[0][:80]})") from None
        if not isinstance(obj, dict):
            raise InputError(f"{source} line {n}: expected a JSON object of "
                             f"field: value, got {type(obj).__name__}")
        yield n, obj




def read_csv(stream: Lines, source: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for n, task in numbered_csv(stream, source):
        yield f"{source} line {n}", task


def numbered_csv(stream: Lines, source: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(the line a row starts on, task) for each non-blank row."""
    numbered = _numbered(stream, source)
    at = [0]  # the line the reader is on, for errors in csv's own parsing

    def texts() -> Iterator[str]:
        for n, text in numbered:
            at[0] = n
            yield text

    # The default cell limit (128 KiB) is below the params cap; lines are capped above.
    csv.field_size_limit(max(csv.field_size_limit(), LINE_MAX_BYTES))
    # strict: the lenient default takes a quote that is never closed as a cell running to
    # the end of the file, so every row after it becomes text in one task's cell.
    reader = csv.reader(texts(), strict=True)
    header = _next_row(reader, source, at, 1)
    if header is None:
        return
    header = [h.strip() for h in header]
    for i, h in enumerate(header):
        values.text(f"{source} line 1: column {i + 1}", h, limits.NAME_MAX)
        if h in header[:i]:
            raise InputError(f"{source} line 1: column {values.show(h, 40)} is named twice")
    for h in header:
        base, dot, _key = h.partition(".")
        if dot and base in DICT_FIELDS and base in header:
            # one would overwrite or be merged into the other, cell by cell
            raise InputError(f"{source} line 1: columns {values.show(base, 40)} and "
                             f"{values.show(h, 40)} both give {base}; use one or the other")
    first = 2
    while True:
        row = _next_row(reader, source, at, first)
        if row is None:
            return
        line = first
        label = f"{source} line {line}"
        first = at[0] + 1
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise InputError(f"{label}: {len(row)} cells, the header has {len(header)}")
        task: dict[str, Any] = {}
        for name, cell in zip(header, row, strict=True):
            if cell == "":
                continue
            try:
                _put(task, name, cell)
            except InputError as exc:
                raise InputError(f"{label}: {exc}") from None
        yield line, task


def _next_row(reader: Any, source: str, at: list[int], start: int) -> list[str] | None:
    """The next row; ``start`` is the line it starts on, ``at`` the line being read."""
    try:
        row: list[str] | None = next(reader, None)
        return row
    except csv.Error as exc:
        if "unexpected end of data" in str(exc):
            raise InputError(f"{source} line {start}: a quote opened in this row is not "
                             "closed before the end of the file (write a quote inside a "
                             'quoted cell as "")') from None
        if "new-line character seen in unquoted field" in str(exc):  # lines end in \r alone
            raise InputError(f"{source} line {at[0]}: a carriage return (\\r) ends a line "
                             "outside quotes; save the file with \\n or \\r\\n line "
                             "ends") from None
        raise InputError(f"{source} line {at[0]}: bad CSV ({exc})") from None


def _put(task: dict[str, Any], name: str, cell: str) -> None:
    values.text(name, cell, LINE_MAX_BYTES)
    base, dot, key = name.partition(".")
    if dot:
        if base not in DICT_FIELDS:
            raise InputError(f"{name}: only params., tags., env. and data. columns "
                             "may name an entry")
        task.setdefault(base, {})[key] = cell
    elif name in DICT_FIELDS or name in LIST_FIELDS or name == "parents":
        try:
            value = parse_json(name, cell)
        except InputError:
            if name in DICT_FIELDS:
                raise
            value = cell  # a bare value: one element (parents: a key)
        # a bare number or string is one element of a list field
        task[name] = [value] if name not in DICT_FIELDS and not isinstance(
            value, (list, dict)) else value
    else:
        task[name] = from_text(name, cell)


def read_tasks(stream: Lines, source: str,
               fmt: str | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """Tasks from a stream (bytes, decoded here; or text); ``fmt`` "jsonl" or "csv"
    (default: by the file's suffix)."""
    return ((f"{source} line {n}", task) for n, task in read_numbered(stream, source, fmt))


def read_numbered(stream: Lines, source: str,
                  fmt: str | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, task) from a stream, as ``read_tasks``; the format is checked now,
    not at the first line."""
    kind = fmt or ("csv" if source.lower().endswith(".csv") else "jsonl")
    if kind == "csv":
        return numbered_csv(stream, source)
    if kind in ("jsonl", "json"):
        return numbered_jsonl(stream, source)
    raise InputError(f"format: {values.show(fmt)} is not jsonl or csv")


def with_defaults(task: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """A file's task with the command line's flags filling the fields it does not give."""
    return {**defaults, **task}
