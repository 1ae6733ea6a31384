"""Task ids and the filter options shared by the task commands."""

from __future__ import annotations

from typing import Any

import click


def task_id(text: str, field: str = "id") -> int:
    """A task id from the command line: a whole number from 1 to 2^63-1."""
    from ..base.values import id_from_text

    return id_from_text(field, text)


def count(text: str, field: str = "limit") -> int:
    """A positive count from the command line (``--limit``)."""
    from ..base.values import count_from_text

    return count_from_text(field, text)


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
    """The API's filters from the shared options, each value checked where it was given."""
    from ..base import values
    from ..tasks import files
    from ..tasks.states import parse_state

    out: dict[str, Any] = {}
    for key in ("workflow", "app", "owner"):
        if opts.get(key):
            out[key] = [values.name(key, v) for v in opts[key]]
    if opts.get("state"):
        out["state"] = [parse_state(values.name("state", v)).value for v in opts["state"]]
    if opts.get("name") is not None:  # '' selects the unnamed tasks, not every task
        out["name"] = values.name("name", opts["name"])
    if opts.get("tags"):
        out["tags"] = files.parse_pairs(opts["tags"], "tags")
        for k, v in out["tags"].items():
            values.name("tags", k)
            values.text(f"tags.{k}", v, 1024)
    if ids:
        out["ids"] = [task_id(i) for i in ids]
    return out
