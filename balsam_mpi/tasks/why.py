"""`task why ID`: why a task is not running, in sentences that say what to do."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .states import TaskState

if TYPE_CHECKING:
    from .read import TaskReader

S = TaskState


def explain(read: TaskReader, task_id: int) -> list[str]:
    task = read.task(task_id)
    state = S(task["state"])
    tid = task["id"]
    msg = f" ({task['state_message']})" if task["state_message"] else ""
    if state is S.JOB_FINISHED:
        return [f"task {tid} is finished (JOB_FINISHED at {task['ended_at'] or 'unknown'})"]
    if state in (S.FAILED, S.USER_KILLED):
        return [f"task {tid} is {state.value}{msg}; "
                f"`balsam-mpi task retry {tid}` runs it again"]
    if state in (S.PREPROCESSED, S.RUNNING, S.RUN_DONE, S.POSTPROCESSED, S.RUN_ERROR,
                 S.RUN_TIMEOUT):
        return [_claimed(read, task, state)]
    if state in (S.CREATED, S.AWAITING_PARENTS):
        return _waiting(read, task, state)
    if task["batch_job_id"] is not None:  # claimed: its launcher starts it any moment
        return [_claimed(read, task, state) + "; it has not started yet"]
    return _runnable(read, task, state)


def _claimed(read: TaskReader, task: dict[str, Any], state: TaskState) -> str:
    where = ""
    if task["batch_job_id"] is not None:
        jobs = read.fetch("tasks_batch_job", {"id": task["batch_job_id"]})
        if jobs:
            j = jobs[0]
            sched = f" ({j['scheduler']} {j['scheduler_job_id']})" if j["scheduler_job_id"] else ""
            where = (f" by batch job {j['id']}{sched} on host {j['host'] or '?'} "
                     f"(user {j['user']})")
    since = task["started_at"] or task["claimed_at"]
    when = f" since {since:%Y-%m-%d %H:%M:%S %Z}" if since else ""
    return f"task {task['id']} is {state.value}: claimed{where}{when}"


def _waiting(read: TaskReader, task: dict[str, Any], state: TaskState) -> list[str]:
    parents = read.fetch("tasks_parents", {"ids": [task["id"]]})
    open_ = [p for p in parents if str(p["state"]) != S.JOB_FINISHED.value]
    if not open_:
        return [f"task {task['id']} is {state.value} with no unfinished parent; "
                f"`balsam-mpi task retry {task['id']}` or a new `dep` re-evaluates it"]
    lines = [f"task {task['id']} is waiting for {len(open_)} of its {len(parents)} parents:"]
    for p in open_[:20]:
        label = f" {p['workflow']}/{p['name']}" if p["name"] else f" {p['workflow']}"
        lines.append(f"  parent {p['id']}{label} is {p['state']}")
    if len(open_) > 20:
        lines.append(f"  … and {len(open_) - 20} more")
    return lines


def _runnable(read: TaskReader, task: dict[str, Any], state: TaskState) -> list[str]:
    tid = task["id"]
    jobs = read.fetch("tasks_why_jobs")
    if not jobs:
        return [f"task {tid} is {state.value} but no batch job is running: submit one "
                "(`balsam-mpi submit …`) or start a launcher"]
    fits: list[dict[str, Any]] = []
    reasons: list[str] = []
    for j in jobs:
        why_not = _misfit(task, j)
        if why_not:
            reasons.append(f"  batch job {j['id']} on {j['host'] or '?'}: {why_not}")
        else:
            fits.append(j)
    if not fits:
        return [f"task {tid} is {state.value} but no running batch job can take it:", *reasons]
    ahead = read.fetch("tasks_ahead", {"id": tid, "priority": task["priority"]})
    n = int(ahead[0]["count"]) if ahead else 0
    names = ", ".join(str(j["id"]) for j in fits)
    return [f"task {tid} is {state.value} and waits its turn: {n} runnable tasks come "
            f"before it (priority, then id); batch jobs that can take it: {names}"]


def _misfit(task: dict[str, Any], job: dict[str, Any]) -> str:
    """Why this batch job's launcher would not claim the task ('' if it would). Mirrors
    launcher_claim: nodes, time left, and the job's filters (workflows, tags, owners)."""
    if task["num_nodes"] > job["nodes"]:
        return f"the task asks for {task['num_nodes']} nodes, the job has {job['nodes']}"
    left = job["left_min"]
    if left is not None and task["wall_time_min"] and task["wall_time_min"] > float(left):
        return (f"the task asks for {task['wall_time_min']:g} min, the job has "
                f"{max(float(left), 0):.1f} min left")
    filters = job["filters"] if isinstance(job["filters"], dict) else {}
    allowed = _names(filters.get("workflows", filters.get("workflow")))
    if allowed and task["workflow"] not in allowed:
        return f"it runs only workflow {', '.join(allowed)}"
    tags = filters.get("tags")
    if isinstance(tags, dict) and tags:
        have = task["tags"] or {}
        missing = [f"{k}={v}" for k, v in sorted(tags.items()) if have.get(k) != v]
        if missing:
            return f"it runs only tasks tagged {', '.join(missing)}"
    owners = _names(filters.get("owners", filters.get("owner")))
    if owners and task["owner"] not in owners:
        return f"it runs only tasks of {', '.join(owners)}"
    return ""


def _names(value: Any) -> list[str]:
    if not value:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]
