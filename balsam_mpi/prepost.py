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

from .protocol import EndKind, RunOrder

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
