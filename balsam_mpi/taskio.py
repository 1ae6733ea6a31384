"""Reading tasks from the command line and from files (JSON lines or CSV). Pure.

Each record is a dict of column names, as in the Python API. Errors name the file and
line and the field; nothing is written unless every line is good.

CSV: the header names the fields. ``params``, ``tags``, ``env``, ``data`` and the lists
(``args``, ``input_files``, ``parents``) hold JSON, or a column ``params.who`` /
``tags.k`` / ``env.K`` fills one entry; empty cells mean "not given".
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from .taskspec import DICT_FIELDS, LIST_FIELDS, TaskSpecError


def parse_pairs(items: Iterable[str], field: str) -> dict[str, str]:
    """``k=v`` flags (``--param who=world``) as a dict; the error names the flag."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise TaskSpecError(f"{field}: expected KEY=VALUE, got {item!r}")
        out[key.strip()] = value
    return out


def parse_value(text: str) -> Any:
    """`--set field=value`: JSON when it parses (numbers, lists, objects), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def read_jsonl(stream: Iterable[str], source: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(label, task) for each non-blank, non-comment line."""
    for n, line in enumerate(stream, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TaskSpecError(f"{source} line {n}: malformed JSON ({exc.msg} at column "
                                f"{exc.colno})") from None
        if not isinstance(obj, dict):
            raise TaskSpecError(f"{source} line {n}: expected a JSON object of "
                                f"field: value, got {type(obj).__name__}")
        yield f"{source} line {n}", obj


def read_csv(stream: Iterable[str], source: str) -> Iterator[tuple[str, dict[str, Any]]]:
    reader = csv.reader(stream)
    header = next(reader, None)
    if header is None:
        return
    header = [h.strip() for h in header]
    for n, row in enumerate(reader, 2):
        if not any(cell.strip() for cell in row):
            continue
        label = f"{source} line {n}"
        if len(row) != len(header):
            raise TaskSpecError(f"{label}: {len(row)} cells, the header has {len(header)}")
        task: dict[str, Any] = {}
        for name, cell in zip(header, row, strict=True):
            if cell == "":
                continue
            try:
                _put(task, name, cell)
            except TaskSpecError as exc:
                raise TaskSpecError(f"{label}: {exc}") from None
        yield label, task


def _put(task: dict[str, Any], name: str, cell: str) -> None:
    base, dot, key = name.partition(".")
    if dot:
        if base not in DICT_FIELDS:
            raise TaskSpecError(f"{name}: only params., tags., env. and data. columns "
                                "may name an entry")
        task.setdefault(base, {})[key] = cell
    elif name in DICT_FIELDS or name in LIST_FIELDS or name == "parents":
        try:
            value = json.loads(cell)
            # a bare number or string is one element of a list field
            task[name] = [value] if name not in DICT_FIELDS and not isinstance(
                value, (list, dict)) else value
        except ValueError:
            if name in LIST_FIELDS or name == "parents":
                # a bare value: one element (parents: an id or a key)
                task[name] = [int(cell) if name == "parents" and cell.isdigit() else cell]
            else:
                raise TaskSpecError(f"{name}: expected JSON, got {cell!r}") from None
    else:
        task[name] = cell


def read_tasks(text_stream: io.TextIOBase | Iterable[str], source: str,
               fmt: str | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """Tasks from a stream; ``fmt`` "jsonl" or "csv" (default: by the file's suffix)."""
    kind = fmt or ("csv" if source.lower().endswith(".csv") else "jsonl")
    if kind == "csv":
        return read_csv(text_stream, source)
    if kind in ("jsonl", "json"):
        return read_jsonl(text_stream, source)
    raise TaskSpecError(f"format: {fmt!r} is not jsonl or csv")


def with_defaults(task: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """A file's task with the command line's flags filling the fields it does not give."""
    return {**defaults, **task}
