"""Task filters and sort orders: keyword filters → the parameters of tasks.sql's shared
`tasks_filter` predicate, and `--sort` → an ORDER BY composed from identifiers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .. import sql
from ..base import jsondoc, limits, values
from ..base.errors import UsageError
from .states import TaskState, parse_state

# `task ls --sort`: column -> ORDER BY (a leading '-' sorts descending); ties by id.
SORTABLE = ("id", "workflow", "name", "state", "priority", "created_at", "started_at",
            "ended_at", "wall_time_min", "num_nodes", "owner")


def as_ids(ids: int | Sequence[int]) -> list[int]:
    """Task ids as a list (an empty one stays empty: it means no task, never every task)."""
    if isinstance(ids, (str, bytes)) or ids is None:
        raise UsageError(f"id: {ids!r} is not a task id")
    out = [ids] if isinstance(ids, int) else list(ids)
    return [values.task_id("id", i) for i in out]


def listify(value: Any) -> list[Any] | None:
    """None (no filter), or the values as a list: an empty list stays empty."""
    if value is None:
        return None
    if isinstance(value, (str, int, TaskState)):
        return [value]
    return list(value)


FILTERS = ("id", "ids", "workflow", "state", "app", "name", "tags", "owner", "after")


def filter_params(filters: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters of the `tasks_filter` predicate from keyword filters."""
    from psycopg.types.json import Jsonb

    unknown = sorted(set(filters) - set(FILTERS))
    if unknown:
        raise UsageError(f"{unknown[0]}: not a task filter (use {', '.join(FILTERS)})")
    lists = {k: listify(filters.get(k)) for k in ("ids", "id", "workflow", "state", "app",
                                                   "owner")}
    ids = lists["ids"] if lists["ids"] is not None else lists["id"]
    if any(v == [] for v in lists.values()):
        # An empty list of anything matches nothing, never everything: `kill(ids=[])`
        # once killed every task in the project.
        ids = []
    states = lists["state"]
    tags = filters.get("tags")
    if tags is not None and not isinstance(tags, Mapping):
        raise UsageError(f"tags: must be a dict of key: value, got {tags!r}")
    name = filters.get("name")
    workflows = _texts("workflow", lists["workflow"])
    if name is not None:
        values.name("name", name)
    if tags:
        jsondoc.json_object("tags", tags, limits.TAGS_MAX_BYTES)
    state_names = None if states is None else sorted({parse_state(str(s)).value
                                                      for s in states})
    return {
        "ids": None if ids is None else as_ids(ids),
        # one value goes as equality (see tasks_filter), several as "= ANY"
        "workflow": workflows[0] if workflows and len(set(workflows)) == 1 else None,
        "workflows": workflows if workflows and len(set(workflows)) > 1 else None,
        "state": state_names[0] if state_names and len(state_names) == 1 else None,
        "states": state_names if state_names and len(state_names) > 1 else None,
        "apps": _texts("app", lists["app"]) or None,
        "name_like": None if name is None else glob_to_like(name),
        "tags": None if not tags else Jsonb(dict(tags)),
        "owners": _texts("owner", lists["owner"]) or None,
        "after": filters.get("after"),
    }


def _texts(field: str, items: list[Any] | None) -> list[Any] | None:
    """Filter values are text the database compares: no NUL, valid UTF-8, capped."""
    return None if items is None else [values.name(field, v) for v in items]


def glob_to_like(pattern: str) -> str:
    """A shell glob (* and ?) as a LIKE pattern, LIKE's own wildcards escaped."""
    out = []
    for ch in pattern:
        out.append({"*": "%", "?": "_", "%": "\\%", "_": "\\_", "\\": "\\\\"}.get(ch, ch))
    return "".join(out)


def where() -> Any:
    from psycopg import sql as pgsql

    return pgsql.SQL(sql.query("tasks_filter"))


def order_by(spec: str, params: Mapping[str, Any] | None = None) -> Any:
    """ORDER BY for a sort spec ('-' = descending; ties by id). Sorting by id under a
    single-state (and single-workflow) filter names the equal columns first: the order is
    the same, but then the planner sees that the (workflow, state, id) / (state, id) index
    yields it, instead of walking the primary key past every other workflow's tasks (a
    LIMIT plan that statistics cannot price when a workflow's ids are contiguous)."""
    from psycopg import sql as pgsql

    desc = spec.startswith("-")
    col = spec.lstrip("+-")
    if col not in SORTABLE:
        raise UsageError(f"sort: {col!r} is not sortable (use {', '.join(SORTABLE)}, "
                         "'-' in front for descending)")
    direction = pgsql.SQL(" DESC" if desc else "")
    if col != "id":
        return pgsql.Composed([pgsql.Identifier("t", col), direction, pgsql.SQL(", t.id")])
    fixed: list[str] = []
    if params is not None and params.get("state") is not None:
        if params.get("workflow") is not None:
            fixed = ["workflow", "state"]
        elif params.get("workflows") is None:
            fixed = ["state"]
    return pgsql.SQL(", ").join(
        [pgsql.Composed([pgsql.Identifier("t", c), direction]) for c in [*fixed, "id"]])
