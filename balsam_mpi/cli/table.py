"""Plain text tables for the apps and tasks commands (no dependency, no colour)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Sequence
from typing import Any

import click

from ..base.clibase import echo
from ..base.termtext import visible

SPOOL_BYTES = 8 << 20  # a table's cells kept in memory before they go to a temporary file


def cell(value: Any, width: int = 40) -> str:
    text = "" if value is None else str(value)
    text = visible(text.replace("\n", " "))  # spelled out before it is measured
    return text if len(text) <= width else text[: width - 1] + "…"


def echo_table(header: Sequence[str], rows: Iterable[Sequence[Any]], *,
               empty: str = "nothing to show") -> None:
    """Rows (any iterable, read once) under the header, each column as wide as its widest
    cell. The widths are known only after the last row, so the cells wait in a temporary
    file past SPOOL_BYTES rather than in memory: ``task ls --limit 1000000`` once held a
    million tasks at once (2.9 GB)."""
    widths = [len(h) for h in header]
    with tempfile.SpooledTemporaryFile(SPOOL_BYTES, mode="w+", encoding="utf-8") as spool:
        n = 0
        for row in rows:
            texts = [cell(v) for v in row]
            widths = [max(w, len(t)) for w, t in zip(widths, texts, strict=True)]
            # a cell holds no NUL or newline: cell() spells them out (a tab stays)
            spool.write("\0".join(texts) + "\n")
            n += 1
        if not n:
            echo(empty, err=True)
            return
        spool.seek(0)
        click.echo("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
        for line in spool:
            texts = line[:-1].split("\0")
            click.echo("  ".join(v.ljust(w) for v, w in
                                 zip(texts, widths, strict=True)).rstrip())
