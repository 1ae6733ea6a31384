"""The rows of the in-memory store (``launcher/memstore.py``): a task and a batch job, with
the columns the leader's calls read and write."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .storeport import ClaimFilter


@dataclass
class Task:
    id: int
    app: str
    workflow: str = "w"
    name: str = ""
    state: str = "READY"
    priority: int = 0
    tags: dict[str, str] = field(default_factory=dict)
    owner: str = "me"
    num_nodes: int = 1
    ranks_per_node: int = 1
    node_packing_count: int = 1
    wall_time_min: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)
    parents: tuple[int, ...] = ()
    batch_job_id: int | None = None
    lease_epoch: int | None = None
    started_at: float | None = None
    ended_at: float | None = None
    exit_code: int | None = None
    state_message: str = ""
    error_retries: int = 0
    error_retry_limit: int = 0
    timeout_retries: int = 0
    timeout_retry_limit: int = 3
    lost_retries: int = 0
    lost_retry_limit: int = 3
    result: str | None = None


@dataclass
class Job:
    id: int
    epoch: int
    lease_s: float
    heartbeat_at: float
    state: str = "RUNNING"
    user: str = "me"
    end_reason: str = ""
    filters: ClaimFilter = ClaimFilter()
    nodes: int = 1
    hungry_at: float | None = None  # 0015: its claims find less than its free slots
    superseded_until: float | None = None  # 0021: an earlier run's tasks stopped by then


def takes(f: ClaimFilter, t: Task) -> bool:
    """Would a launcher with these filters claim ``t``? (launcher_filter_takes)"""
    return ((not f.workflows or t.workflow in f.workflows)
            and dict(f.tags).items() <= t.tags.items()
            and (not f.owners or t.owner in f.owners)
            and not any(dict(n).items() <= t.tags.items() for n in f.not_tags))


def requeue(t: Task, *, counted: bool, why: str) -> None:
    """Back to RESTART_READY, the lost counter +1 if ``counted`` (FAILED at its limit)."""
    failed = counted and t.lost_retries >= t.lost_retry_limit
    t.state = "FAILED" if failed else "RESTART_READY"
    t.lost_retries += int(counted and not failed)
    t.batch_job_id, t.state_message = None, why
