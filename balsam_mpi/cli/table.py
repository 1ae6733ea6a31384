"""Plain text tables for the apps and tasks commands (no dependency, no colour)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click

from ..base.clibase import echo
from ..base.termtext import visible


def cell(value: Any, width: int = 40) -> str:
    text = "" if value is None else str(value)
    text = visible(text.replace("\n", " "))  # spelled out before it is measured
    return text if len(text) <= width else text[: width - 1] + "…"


def echo_table(header: Sequence[str], rows: Sequence[Sequence[Any]], *,
               empty: str = "nothing to show") -> None:
    if not rows:
        echo(empty, err=True)
        return
    texts = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in texts)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    for r in texts:
        lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    click.echo("\n".join(lines))  # every cell is spelled out already (cell)
