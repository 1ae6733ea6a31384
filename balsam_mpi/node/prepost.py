"""An app's preprocess and postprocess on the task's node: what runs, and what its exit
code means for the task (legacy Balsam's rules, adapted to a launcher whose tasks have no
database connection of their own; docs/mpi-tasks.md, "Pre- and postprocessing").

- preprocess: once, before the task's first run (a claimed READY task, not a retry), in
  the task's directory; exit 0 → the run starts (READY → PREPROCESSED → RUNNING), else
  the task FAILs without running.
- postprocess after RUN_DONE: exit 0 → POSTPROCESSED → JOB_FINISHED, else FAILED.
- postprocess after RUN_ERROR (``postprocess_on_error``, ``BALSAM_JOB_ERROR=TRUE``) or
  RUN_TIMEOUT (``postprocess_on_timeout``, ``BALSAM_JOB_TIMEOUT=TRUE``) is the error or
  timeout handler, which decides: exit 0 → handled, POSTPROCESSED → JOB_FINISHED; exit
  75 (EX_TEMPFAIL) → retry, RESTART_READY while the task's retry counter allows, else
  FAILED; any other exit → FAILED. (Legacy handlers called ``update_state`` through their
  own database connection and a task left in RUN_ERROR counted as FAILED; here the exit
  code carries the decision, so thousands of handlers open no connections.)
"""

from __future__ import annotations

from ..protocol import EndKind, Finished, RunOrder
from . import runner

PRE_OUT = ("preprocess.out", "preprocess.err")
POST_OUT = ("postprocess.out", "postprocess.err")
RETRY_EXIT = 75

_HANDLED = {EndKind.DONE: EndKind.DONE_POST, EndKind.ERROR: EndKind.ERROR_HANDLED,
            EndKind.TIMEOUT: EndKind.TIMEOUT_HANDLED}
_RETRY = {EndKind.DONE: EndKind.DONE_POST_FAILED, EndKind.ERROR: EndKind.ERROR_RETRY,
          EndKind.TIMEOUT: EndKind.TIMEOUT_RETRY}
_FAILED = {EndKind.DONE: EndKind.DONE_POST_FAILED, EndKind.ERROR: EndKind.ERROR_HANDLER_FAILED,
           EndKind.TIMEOUT: EndKind.TIMEOUT_HANDLER_FAILED}


def wants_post(order: RunOrder, kind: EndKind) -> bool:
    """Whether the app's postprocess runs after a run that ended this way."""
    if not order.postprocess:
        return False
    return (kind == EndKind.DONE or (kind == EndKind.ERROR and order.post_on_error)
            or (kind == EndKind.TIMEOUT and order.post_on_timeout))


def post_env(kind: EndKind) -> dict[str, str]:
    if kind == EndKind.ERROR:
        return {"BALSAM_JOB_ERROR": "TRUE"}
    if kind == EndKind.TIMEOUT:
        return {"BALSAM_JOB_TIMEOUT": "TRUE"}
    return {}


def outcome(run_kind: EndKind, post_rc: int) -> EndKind:
    """The reported kind once the postprocess of a run that ended ``run_kind`` exited."""
    if post_rc == 0:
        return _HANDLED[run_kind]
    if post_rc == RETRY_EXIT:
        return _RETRY[run_kind]
    return _FAILED[run_kind]


# -- the phases around a run, on the node ------------------------------------------------
def start_pre(order: RunOrder, env: dict[str, str], die_with_parent: bool
              ) -> runner.TaskProcess:
    """The app's preprocess, in the task's slot, before its first run."""
    proc = runner.start(order, env, die_with_parent=die_with_parent, timed=False,
                        argv=runner.script_argv(order.preprocess, order.env_script),
                        out_name=PRE_OUT[0], err_name=PRE_OUT[1])
    proc.phase = "pre"
    return proc


def pre_ended(pre: runner.TaskProcess, rc: int, ended: float, cutting: bool
              ) -> Finished | None:
    """None if the run may start now; else the report of a task that never ran (its
    preprocess failed, or it was stopped: then the report changes nothing in the
    database, and it tells the leader the slot is free)."""
    if pre.end_kind is None and rc == 0 and not cutting:
        return None
    kind = pre.end_kind if pre.end_kind is not None else (
        EndKind.CUT if rc == 0 else EndKind.PRE_FAILED)
    order = pre.order
    return Finished(order.id, order.epoch, int(kind), rc, ended, ended,
                    runner.output_tail(pre))


def start_post(run: runner.TaskProcess, kind: EndKind, rc: int, ended: float,
               die_with_parent: bool) -> runner.TaskProcess:
    """The app's postprocess after a run that ended ``kind`` with ``rc`` (kept for the
    report, with the run's own times)."""
    order = run.order
    env = dict(run.env or {})
    env.update(post_env(kind))
    post = runner.start(order, env, die_with_parent=die_with_parent, timed=False,
                        argv=runner.script_argv(order.postprocess, order.env_script),
                        out_name=POST_OUT[0], err_name=POST_OUT[1])
    post.phase, post.run_kind, post.run_rc = "post", kind, rc
    post.run_started, post.run_ended, post.env = run.started_at, ended, run.env
    return post


def post_ended(post: runner.TaskProcess, rc: int) -> Finished:
    """The task's report once its postprocess exited ``rc``: the run's own times (the
    task's ended_at and RUN_* event are the run's end), the kind the script decided."""
    kind = post.end_kind if post.end_kind is not None else outcome(post.run_kind, rc)
    order = post.order
    return Finished(order.id, order.epoch, int(kind), post.run_rc, post.run_started,
                    post.run_ended, "" if kind == EndKind.DONE_POST
                    else runner.output_tail(post))
