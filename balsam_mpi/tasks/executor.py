"""A ``concurrent.futures.Executor`` over a project: each call is a task in the database.

    from balsam_mpi.tasks.executor import Executor
    with Executor(workflow="fit") as ex:               # the project of $BALSAM_DB_PATH
        f = ex.submit("mypkg.models:fit", alpha=0.1)   # a task of the app with that path
        print(f.result())                              # when a launcher has run it
        for y in ex.map("mypkg.models:fit", [{"alpha": a} for a in (0.1, 0.2)]):
            print(y)

``submit(fn_path, **kwargs)`` adds a task of the Python app whose import path is
``fn_path`` — apps are written by the owner and ``--app-admin`` members only, so the app
must exist (one line names the command that adds it) — and returns a future that resolves
when the task ends, wherever it runs: batch jobs do the work, and the script may run on a
login node. Keyword arguments only, as JSON. ``map`` adds all its calls in one
transaction. ``Future.cancel()`` kills a task whose future is not yet running;
``TaskFuture.kill()`` kills it whatever its future says.

One watcher thread per executor LISTENs on its own connection (tasks/waiting.py): it reads the
state of each new task once, afterwards the tasks a notification names, and all pending
ones every ``waiting.REREAD_S``. No table is polled more often than that. ``running()``
comes from those reads (see :class:`TaskFuture`).
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ..base import db
from ..base.errors import BalsamError, NotFound, ServerError, UsageError
from .pyapps import check_path
from .waiting import ENDED, Listener, Outcome, Reread, TaskFailed

if TYPE_CHECKING:
    from .client import Client

log = logging.getLogger(__name__)
# How often an idle watcher looks at its stop flag. Members may not call pg_notify (0007),
# so a shutdown cannot wake it through the database; a timeout reads nothing.
STOP_CHECK_S = 0.5


# A task in one of these states has started (a RESTART_READY one ran and waits to run
# again): its future is running, as a call an executor's worker has taken.
STARTED = frozenset({"RUNNING", "RUN_DONE", "POSTPROCESSED", "RUN_ERROR", "RUN_TIMEOUT",
                     "RESTART_READY"})


class TaskFuture(cf.Future[Any]):
    """A task's future.

    ``running()`` is true once the executor's watcher has read the task in a started
    state (RUNNING or later), and stays true until it ends. The watcher reads a pending
    task when it is added, when a notification names it (only ends are notified) and
    every ``waiting.REREAD_S`` (15 s): so ``running()`` turns true up to about 15 s after
    the task starts, and a task that ends sooner goes from pending to done without it.

    ``cancel()`` is concurrent.futures' for a running future: False, the task left
    alone. A future not (yet) seen running is cancelled by killing its task (which may
    have started within the last read interval); False if the task had ended.
    ``kill()`` kills the task whatever the future says; the future then fails with
    TaskFailed (USER_KILLED).
    """

    def __init__(self, task_id: int, kill: Callable[[int], bool],
                 recheck: Callable[[int], None]) -> None:
        super().__init__()
        self.task_id = task_id
        self._kill = kill
        self._recheck = recheck
        self.cancelling = False  # the kill is on its way: its USER_KILLED is ours
        # A cancel and the watcher's move to running take turns: a future the watcher
        # marked running while the cancel's kill was on its way would be a killed task
        # whose cancel() said False and whose USER_KILLED was left to that cancel.
        self._turn = threading.Lock()

    def cancel(self) -> bool:
        with self._turn:
            if self.done() or self.running():
                return False
            # Set before the kill: the watcher may see the kill's USER_KILLED before this
            # thread gets back, and must leave that end to the cancel.
            self.cancelling = True
            try:
                killed = self._kill(self.task_id)
            except BaseException:
                # Left set, a later USER_KILLED (another kill) would be left to this cancel.
                self.cancelling = False
                self._recheck(self.task_id)
                raise
            if not killed:
                self.cancelling = False
                self._recheck(self.task_id)  # an end the watcher left to us is read again
                return False  # ended already: its outcome is on its way
            if not super().cancel():
                return False
            # What an executor's worker does with a cancelled item: cf.wait and
            # cf.as_completed count a future done only once this is called.
            self.set_running_or_notify_cancel()
            return True

    def kill(self) -> bool:
        """Kill the task, running or not; False if it had ended. Its future fails with
        TaskFailed (USER_KILLED) once the watcher hears of it."""
        return bool(self._kill(self.task_id))

    def mark_running(self) -> None:
        """The watcher read the task started. Skipped while a cancel holds the turn (the
        next read tries again, should the task still run)."""
        if not self._turn.acquire(blocking=False):
            return
        try:
            if not self.done() and not self.running():
                self.set_running_or_notify_cancel()
        except RuntimeError:
            pass  # settled by another thread between the look and the move
        finally:
            self._turn.release()


class Executor(cf.Executor):
    def __init__(self, client: Client | None = None, *, project: Any = None,
                 workflow: str = "executor", **task_fields: Any) -> None:
        """``client`` (or a new one for ``project``); every task gets ``workflow`` and
        ``task_fields`` (e.g. node_packing_count, wall_time_min, tags)."""
        if client is None:
            from .client import Client

            client = Client(project)
            self._own = True
        else:
            self._own = False
        self.client = client
        self.workflow = workflow
        self.fields = dict(task_fields)
        self._apps: dict[str, str] = {}
        self._lock = threading.Lock()
        # The client's one connection carries one transaction at a time: submits come
        # from any thread (a done-callback's from the watcher's), cancels too.
        self._client_lock = threading.RLock()
        self._start_lock = threading.Lock()  # the first submits start one watcher
        self._futures: dict[int, TaskFuture] = {}
        self._new: list[int] = []
        self._stopping = False
        self._closed = False
        self._watcher: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # -- adding ----------------------------------------------------------------------
    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> TaskFuture:
        if args:
            raise UsageError("params: a Python task takes keyword arguments only "
                             f"(JSON): submit({fn!r}, name=value, …)")
        return self._add(fn, [kwargs])[0]

    def map(self, fn: Any, *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int = 1) -> Iterator[Any]:
        """One task per item of one iterable of keyword-argument mappings, added in one
        transaction; their results in order (the first failure raises TaskFailed)."""
        if len(iterables) != 1:
            raise UsageError("map: give one iterable of keyword-argument mappings, "
                             "e.g. map('pkg.mod:fn', [{'x': 1}, {'x': 2}])")
        calls = list(iterables[0])
        for i, kw in enumerate(calls):
            if not isinstance(kw, Mapping):
                raise UsageError(f"map item {i}: must be a mapping of keyword arguments, "
                                 f"got {kw!r}")
        # As concurrent.futures has it, the timeout counts from this call, not from the
        # first next(): the generator below would start it only when first iterated.
        end = None if timeout is None else time.monotonic() + timeout
        futures = self._add(fn, [dict(kw) for kw in calls])
        return _in_order(futures, end)

    def _add(self, fn: Any, calls: list[dict[str, Any]]) -> list[TaskFuture]:
        if self._closed:
            raise RuntimeError("cannot submit to an executor after shutdown")
        self._check_watcher()
        with self._client_lock:
            app = self._app(fn)
        self._ensure_watcher()  # first: a submit that cannot be watched adds no task
        with self._client_lock:
            ids = self.client.add_tasks([{**self.fields, "app": app,
                                          "workflow": self.workflow, "params": kw}
                                         for kw in calls])
        futures = [TaskFuture(i, self._kill_one, self._recheck) for i in ids]
        with self._lock:
            for f in futures:
                self._futures[f.task_id] = f
                if self._error is not None:  # it stopped since the check: say why here
                    _resolve_error(f, self._error)
            self._new.extend(ids)
        return futures

    def _check_watcher(self) -> None:
        """Refuse to add tasks whose futures nobody would resolve."""
        with self._lock:
            error = self._error
        if error is not None:
            raise BalsamError(f"this executor cannot watch tasks any more ({error}); the "
                              "tasks it added are not affected: use a new Executor"
                              ) from error

    def _app(self, fn: Any) -> str:
        """The app whose import path is ``fn`` (checked once per path)."""
        path = check_path(fn, "fn_path")
        name = self._apps.get(path)
        if name is None:
            found = self.client.app_calling(path)
            if found is None:
                raise UsageError(f"fn_path: no app calls {path}; the project owner (or an "
                                 f"--app-admin member) must add one: balsam-mpi app add "
                                 f"NAME --python {path}")
            name = self._apps[path] = found
        return name

    def _kill_one(self, task_id: int) -> bool:
        with self._client_lock:
            return bool(self.client.kill([task_id]))

    def _recheck(self, task_id: int) -> None:
        with self._lock:
            self._new.append(task_id)

    # -- the watcher -----------------------------------------------------------------
    def _ensure_watcher(self) -> None:
        with self._start_lock:
            if self._watcher is None:
                self._watcher = threading.Thread(target=self._watch,
                                                 name="balsam-executor", daemon=True)
                self._watcher.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def _watch(self) -> None:
        listener = Listener(lambda: db.connect(self.client.project, autocommit=True,
                                               application_name="balsam_mpi-executor"))
        try:
            listener.open()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        pending: set[int] = set()
        reread = Reread()
        try:
            while True:
                with self._lock:
                    new, self._new = self._new, []
                    stopping = self._stopping
                    pending.update(i for i in new if i in self._futures)
                    for i in [i for i in pending if self._futures[i].done()]:
                        self._forget(i, pending)  # cancelled, or failed by _add
                if stopping and not pending:
                    return
                try:
                    if new:  # each new task is read once; after that, only when notified
                        self._settle(listener, new, pending)
                    # Bounded, to see a shutdown; what ended unannounced (a notification
                    # skipped while the server's queue was crowded) is read every REREAD_S.
                    hinted = listener.sleep(STOP_CHECK_S)
                    ask = reread.due(pending) or (hinted or set()) & pending
                    if ask:
                        self._settle(listener, ask, pending)
                except ServerError as exc:
                    # Wherever the connection dropped, what ended meanwhile is unknown:
                    # every pending task is read again, as new, by the next round (inside
                    # this try, so a drop during that read is recovered from as well).
                    listener.recover(exc, None)
                    with self._lock:
                        self._new.extend(pending)
        except BaseException as exc:  # never leave futures hanging
            log.error("executor watcher failed: %s", exc)
            with self._lock:
                # Futures added from now on would have no watcher: _add refuses them.
                self._error = exc
                futures = list(self._futures.values())
            for f in futures:  # unlocked: a done-callback may submit (and so take it)
                _resolve_error(f, exc)
        finally:
            listener.close()

    def _settle(self, listener: Listener, ids: Iterable[int], pending: set[int]) -> None:
        with self._lock:  # a recheck may name a future already settled and forgotten
            futures = {i: self._futures[i] for i in ids if i in self._futures}
        outcomes = listener.read(list(futures))
        for i, f in futures.items():
            o = outcomes.get(i)
            if o is None:
                _resolve_error(f, NotFound(f"task {i} was deleted before it ended"))
            elif o.state not in ENDED:
                if o.state in STARTED:
                    f.mark_running()
                continue
            elif not _resolve(f, o):
                continue
            with self._lock:
                self._forget(i, pending)

    def _forget(self, task_id: int, pending: set[int]) -> None:
        """Drop a settled future (the lock held): it is its caller's alone now. Kept, a
        driver that runs for days would hold every future and result it ever had."""
        pending.discard(task_id)
        del self._futures[task_id]

    # -- the end ---------------------------------------------------------------------
    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._closed = True
        with self._lock:
            futures = list(self._futures.values())
        if cancel_futures:
            for f in futures:
                f.cancel()
        if wait:
            cf.wait(futures)
        with self._lock:
            self._stopping = True
        if self._watcher is not None and wait:
            self._watcher.join()  # it sees the flag within STOP_CHECK_S
        if self._own and wait:
            with self._client_lock:
                self.client.close()


def _resolve(f: TaskFuture, o: Outcome) -> bool:
    """Settle ``f`` with its task's end; False if that end is left to a cancel."""
    if f.cancelling and o.state == "USER_KILLED":
        return False  # the cancel that killed it makes it cancelled
    try:
        if o.ok:
            f.set_result(o.result)
        else:
            f.set_exception(TaskFailed(o))
    except cf.InvalidStateError:
        pass  # cancelled meanwhile
    return True


def _resolve_error(f: TaskFuture, exc: BaseException) -> None:
    try:
        f.set_exception(exc)
    except cf.InvalidStateError:
        pass


def _in_order(futures: list[TaskFuture], end: float | None) -> Iterator[Any]:
    for f in futures:
        yield f.result(None if end is None else max(0.0, end - time.monotonic()))
