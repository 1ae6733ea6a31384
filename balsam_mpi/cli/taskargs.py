"""Task ids and the filter options shared by the task commands."""

from __future__ import annotations

from typing import Any

import click


def task_id(text: str, field: str = "id") -> int:
    from ..taskspec import TaskSpecError

    try:
        value = int(text)
    except ValueError:
        raise TaskSpecError(f"{field}: {text!r} is not a task id") from None
    if value < 1:
        raise TaskSpecError(f"{field}: {text!r} is not a task id")
    return value



def filter_options(fn: Any) -> Any:
    """The task filters shared by ls, kill, retry and rm."""
    opts = [
        click.option("--workflow", "workflow", multiple=True, help="Exact workflow (repeatable)."),
        click.option("--state", "state", multiple=True, help="State (repeatable)."),
        click.option("--app", "app", multiple=True, help="App name (repeatable)."),
        click.option("--name", "name", default=None, metavar="GLOB", help="Name glob (* ?)."),
        click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE",
                     help="Has this tag (repeatable: all of them)."),
        click.option("--owner", "owner", multiple=True, help="Created by (repeatable)."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def filters_from(opts: dict[str, Any], ids: tuple[str, ...] = ()) -> dict[str, Any]:
    from .. import taskio

    out: dict[str, Any] = {}
    for key in ("workflow", "state", "app", "owner"):
        if opts.get(key):
            out[key] = list(opts[key])
    if opts.get("name"):
        out["name"] = opts["name"]
    if opts.get("tags"):
        out["tags"] = taskio.parse_pairs(opts["tags"], "tags")
    if ids:
        out["ids"] = [task_id(i) for i in ids]
    return out
