"""One node's tasks: a queue, the running processes, their capacity — no MPI, no database.

Shared by worker ranks and the leader's in-process local worker. The node starts queued
tasks in order while the head fits (no backfill: a task that needs the whole node is not
starved by small ones), notices exits through pidfds in ``epoll`` (it sleeps and still
wakes the instant a task ends), enforces each task's wall time, and kills on request
(``stops``). What happened is collected in :attr:`changes` for the next report.

A task's path, top-down in this file: an order arrives (:meth:`Node.apply` from a worker's
ASSIGN, :meth:`Node.enqueue` on the leader), waits in the queue, starts when it fits
(stage-in, then the app's preprocess or the run: ``prepost``, ``runner``, a warm
interpreter for a Python task: ``pypool``, a launch prefix for a multi-rank task:
``mpilaunch``), its exit is noticed (``procwatch``), then the next phase starts or the
task's end goes into :attr:`changes` for the next report. The other nodes of a multi-node
task *hold* a whole node for it and run nothing until the leader releases them.

The end of a batch job (:meth:`Node.begin_stop`): from that instant the node starts
nothing, and a task that dies of a signal is *cut*, not failed (``deaths``: why such a
death is held for ``signal_hold_s`` first).
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType

from ..base.platform import node_name
from ..protocol import Assign, Changes, EndKind, Finished, Report, RunOrder, Started
from . import gpus as gpumod
from . import mpilaunch, prepost, pypool, runner, shmleft, stagein, taskplace, trampoline
from .ahead import PER_WAIT, Ahead
from .deaths import Death, HeldDeaths, died_of_signal, signal_note
from .procwatch import ProcWatch
from .pystart import PyStart
from .resources import EPS, NodeResources
from .stops import Stops

log = logging.getLogger(__name__)


class Node(Stops, PyStart):
    def __init__(self, *, environ: Mapping[str, str] | None = None, db_path: str = "",
                 gpus: int = 0, die_with_parent: bool = True, kill_grace_s: float = 10.0,
                 signal_hold_s: float = 2.0, stop_grace_s: float = 3.0,
                 python: pypool.PoolConfig | None = None) -> None:
        env = os.environ if environ is None else environ
        self.vendor = gpumod.detect_vendor(env) if gpus else None
        self.res = NodeResources(devices=gpumod.node_devices(
            gpus, None, gpumod.inherited_ids(self.vendor, env)))
        self.host = node_name(env)  # as the scheduler names it: launch prefixes carry it
        self.prefixes = mpilaunch.Prefixes(self.host)  # for multi-rank tasks
        self.holding: dict[int, RunOrder] = {}  # multi-node tasks headed elsewhere
        self.poked = False  # something changed that is not a start or an end (a release)
        self.extra_env: dict[str, str] = {}  # the task_api channel's (node/channel.py)
        # Python tasks' warm interpreters (pypool), started with the first such task.
        self.python = python or pypool.PoolConfig(die_with_parent=die_with_parent)
        self.pool: pypool.PyPool | None = None
        self.queue: deque[RunOrder] = deque()
        self.running: dict[int, runner.TaskProcess] = {}
        self.changes = Changes()
        self.returned: list[int] = []  # recalled queued tasks given back, for the report
        self.acked = 0
        self.db_path = db_path
        self.die_with_parent = die_with_parent
        self.kill_grace_s = kill_grace_s
        self.stop_grace_s = min(stop_grace_s, kill_grace_s)
        # Set by begin_stop, possibly from a signal handler: plain flags, read by step().
        self.stopping = False  # start nothing more
        self.cutting = False  # the job is ending: deaths are cut-offs, not failures
        self._held = HeldDeaths(signal_hold_s)  # deaths waiting to see whether a stop comes
        self._env = runner.base_environment(env)
        self.procs = ProcWatch()  # what wait() sleeps on
        self.ahead = Ahead()  # queued tasks' directories, opened while the node waits
        self._watch: set[int] = set()  # running tasks with a deadline or a pending SIGKILL
        # MPI files that killed jobs left (MPICH's, Open MPI's): swept at the first step,
        # and after a task ends badly, before a later task's mpiexec gets their pid
        # (shmleft.py, ompileft.py).
        self.shm = shmleft.Sweeper()
        self.started_total = 0
        self.finished_total = 0
        self.done_share = 0.0  # node shares finished so far: the node's pace
        # Starts per call, 0 = all that fit: the leader's own node starts a few at a time
        # so that answering the other ranks never waits for a burst of spawns.
        self.max_starts = 0
        # Seconds of starting per call, 0 = no bound: a worker's REPORTs are its proof of
        # life to its leader and its watchdog, so a wave of starts on a slow file system
        # (a directory and two files each) must not hold them back (worker.py).
        self.start_budget_s = 0.0
        if die_with_parent:
            trampoline.trampoline()  # built (once per user) now, not at the first task

    def __enter__(self) -> Node:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- state ------------------------------------------------------------------------
    @property
    def queued_share(self) -> float:
        return sum(s.need for s in self.queue)

    def free(self) -> float:
        """Free share counting queued tasks as taken (negative when over-assigned)."""
        return self.res.free - self.queued_share

    def busy(self) -> bool:
        return bool(self.running or self.queue or self.holding or self._held)

    def wants_work(self) -> bool:
        """A share free, nothing queued for it (or a hold): an ASSIGN is wanted soon."""
        return bool(self.holding) or (not self.queue and self.res.free > EPS)

    def report(self, rank: int) -> Report:
        started, finished = self.changes.take()
        self.poked = False
        returned, self.returned = tuple(self.returned), []
        return Report(rank=rank, acked=self.acked, free=self.free(),
                      running=len(self.running) + len(self.holding), queued=len(self.queue),
                      started=started, finished=finished, done_share=self.done_share,
                      returned=returned)

    # -- orders -----------------------------------------------------------------------
    def apply(self, msg: Assign) -> None:
        """A worker's ASSIGN (the leader's own node gets the same through enqueue/kill)."""
        self.acked = max(self.acked, msg.seq)
        self.enqueue(msg.tasks)
        if not self.stopping:  # after the stop, new work is dropped (claims released)
            for order in msg.hold:
                self._hold(order)
        for task_id in msg.release:
            self._unhold(task_id)
        if msg.kill:
            self.kill(msg.kill, EndKind.KILLED)
        if msg.recall:
            # Applied before the next step starts anything, so a task given back never
            # starts here; the report says which came back (the rest had started).
            self.returned.extend(o.id for o in self.give_back(msg.recall))
            self.poked = True

    def give_back(self, ids: Iterable[int]) -> list[RunOrder]:
        """Drop these tasks from the queue if they have not started; returns the orders
        dropped (the leader places them on other nodes)."""
        wanted = set(ids)
        back = [o for o in self.queue if o.id in wanted]
        if back:
            self.queue = deque(o for o in self.queue if o.id not in wanted)
        return back

    def enqueue(self, orders: Iterable[RunOrder]) -> None:
        """Queue these tasks; the next :meth:`step` starts what fits. After the stop new
        work is dropped (its claims are released when the batch job closes)."""
        if not self.stopping:
            self.queue.extend(orders)

    def _hold(self, order: RunOrder) -> None:
        """Keep this whole node (and the task's GPUs here) for a task headed elsewhere."""
        self.holding[order.id] = order
        if self.res.fits(self.res.capacity, order.gpus):
            self.res.take(order.id, self.res.capacity, order.gpus)
        else:  # the leader places holds on idle nodes only; never expected
            log.warning("task %s: asked to hold a node that is not free", order.id)

    def _unhold(self, task_id: int) -> None:
        if self.holding.pop(task_id, None) is not None:
            self.poked = True
            if self.res.holds(task_id):
                self.res.release(task_id)

    # -- the work ---------------------------------------------------------------------
    def step(self) -> bool:
        """Reap what ended, enforce time limits, start what fits; True if anything did."""
        if self.stopping and self.queue:
            self.queue.clear()  # never started: their claims go back when the job closes
        did = self.reap(0.0)
        if self._held:
            for death in self._held.settle(self.cutting):
                self._conclude(*death)
                did = True
        if self._watch:
            self._check_deadlines()
        if self.pool is not None:
            self.pool.outputs.tick(time.monotonic())
        if self.shm.due >= 0:
            self.shm.tick(time.monotonic())
        return self.start_ready() or did

    def start_ready(self) -> bool:
        if self.stopping:
            return False
        did = False
        budget = self.max_starts or len(self.queue)
        until = time.monotonic() + self.start_budget_s if self.start_budget_s else None
        while self.queue and budget > 0:
            if did and until is not None and time.monotonic() >= until:
                break  # the rest next call, after this rank has had its turn
            budget -= 1
            order = self.queue[0]
            if not self.res.fits(min(order.need, self.res.capacity), order.gpus):
                if order.gpus <= self.res.gpus:
                    break
                # More GPUs than this node has: it would wait forever, holding the queue.
                self.queue.popleft()
                self._not_started(order, EndKind.ERROR, f"needs {order.gpus} GPUs on a "
                                  f"node; this launcher's nodes have {self.res.gpus} "
                                  "(--gpus-per-node)", release=False)
                continue
            if order.python and not self.python_ready():
                break  # its zygote is still importing python_preload
            self.queue.popleft()
            self._start(order)
            did = True
        return did

    def _start(self, order: RunOrder) -> None:
        need = min(order.need, self.res.capacity)  # a task never needs more than a node
        gpu_ids = self.res.take(order.id, need, order.gpus)
        try:
            env = runner.task_environment(self._env, order, self.db_path, gpu_ids,
                                          self.vendor, self.extra_env)
            if order.inputs:
                stagein.link_inputs(Path(order.cwd), [Path(d) for d in order.parent_dirs],
                                    order.inputs)
            if order.preprocess:
                proc = prepost.start_pre(order, env, self.die_with_parent)
            else:
                proc = self._start_run(order, env)
        except (runner.StartError, OSError, mpilaunch.LaunchError) as exc:
            self._not_started(order, EndKind.ERROR, str(exc))
            return
        except Exception as exc:  # anything one task's data provokes fails that task only
            self._not_started(order, EndKind.REFUSED, f"cannot start the task: {exc}")
            return
        proc.env = env
        self._register(proc)

    def _not_started(self, order: RunOrder, kind: EndKind, why: str, *,
                     at: float | None = None, count: bool = False,
                     release: bool = True) -> None:
        """A task that could not start: its start and its end at once, with exit code 127
        and one line saying why."""
        now = time.time() if at is None else at
        self.changes.started.append(Started(order.id, order.epoch, now))
        self.started_total += 1
        if kind == EndKind.REFUSED:  # a hostile row's text: one line, bounded
            why = why.strip().split("\n", 1)[0][:500]
        fin = Finished(order.id, order.epoch, int(kind), 127, now, now, why)
        if release:
            self._end(order, fin, count=count)
        else:  # it never took its share of the node
            self.changes.finished.append(fin)
            self.finished_total += 1

    def _start_run(self, order: RunOrder, env: dict[str, str]) -> runner.TaskProcess:
        """The run itself: a call in a warm interpreter (watched like a process), a
        process, or a multi-rank task under its launch prefix."""
        opened = self.ahead.take(order)  # raises what opening it ahead raised
        if order.python:
            proc: runner.TaskProcess = self._python_pool().start(order, env, opened)
        else:
            try:
                prefix = self.prefixes.of(order)
            except BaseException:
                taskplace.close(opened)
                raise
            proc = runner.start(order, env, die_with_parent=self.die_with_parent,
                                argv=runner.task_argv(order, prefix) if prefix else None,
                                opened=opened)
        self.changes.started.append(Started(order.id, order.epoch, proc.started_at))
        self.started_total += 1
        return proc

    def _register(self, proc: runner.TaskProcess) -> None:
        order = proc.order
        self.running[order.id] = proc
        self.procs.add_task(proc.pidfd, order.id)
        if proc.deadline:
            self._watch.add(order.id)

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` s, waking when a task ends; True if anything woke it.
        Idle time goes first to the next tasks' directories (``ahead``), one at a time
        while nothing ends: a slot that frees then starts its task at once."""
        ahead = self.ahead
        spared = self._fork_spares(timeout)  # before the first Python call (pystart)
        if spared is not None:
            return spared
        if not self.stopping and (self.queue or ahead.ready):
            for _ in range(PER_WAIT):
                if not ahead.prepare(self.queue):
                    break
                if self.reap(0.0):
                    return True
        return self.reap(timeout)

    def reap(self, timeout: float) -> bool:
        ended, woke = self.procs.wait(timeout)
        for task_id in ended:
            self._finish(self.running[task_id])
        return woke

    def _finish(self, proc: runner.TaskProcess) -> None:
        rc = proc.reap() if isinstance(proc, pypool.PyCall) else runner.reap(proc)
        if rc is None:
            return
        ended = time.time()
        order = proc.order
        self.procs.remove_task(proc.pidfd)
        runner.close(proc)
        del self.running[order.id]
        self._watch.discard(order.id)
        if rc != 0 and not isinstance(proc, pypool.PyCall):
            self.shm.ended_badly(time.monotonic())
        if proc.end_kind is None and rc != 0:
            if self.cutting:
                proc.end_kind = EndKind.CUT  # the job's end took it down
            elif died_of_signal(rc):
                # The scheduler may be ending the job and this rank's signal be on its
                # way: decide in signal_hold_s (the slot stays taken meanwhile).
                self._held.hold(Death(proc, rc, ended))
                return
        self._conclude(proc, rc, ended)

    def _conclude(self, proc: runner.TaskProcess, rc: int, ended: float) -> None:
        """What a phase's end means: the next phase, or the task's end on this node."""
        order = proc.order
        if proc.phase == "pre":
            never_ran = prepost.pre_ended(proc, rc, ended, self.cutting)
            if never_ran is not None:
                self._end(order, never_ran)
            else:
                self._after_pre(proc, ended)
            return
        if proc.phase == "post":
            self._end(order, prepost.post_ended(proc, rc))
            return
        kind = proc.end_kind if proc.end_kind is not None else (
            EndKind.DONE if rc == 0 else EndKind.ERROR)
        if kind in (EndKind.DONE, EndKind.ERROR, EndKind.TIMEOUT) and prepost.wants_post(
                order, kind):
            if not self.cutting:
                self._start_post(proc, kind, rc, ended)
                return
            # No time left for the postprocess: the task runs again in a later job.
            kind = EndKind.CUT
        tail = "" if kind == EndKind.DONE else runner.output_tail(proc)
        if kind == EndKind.ERROR and rc < 0 and not isinstance(proc, pypool.PyCall):
            tail = signal_note(tail, -rc)  # (a Python call's death has its own line)
        self._end(order, Finished(order.id, order.epoch, int(kind), rc, proc.started_at,
                                  ended, tail))

    def _after_pre(self, pre: runner.TaskProcess, ended: float) -> None:
        order = pre.order
        try:
            run = self._start_run(order, pre.env or {})
        except (runner.StartError, OSError, mpilaunch.LaunchError) as exc:
            self._not_started(order, EndKind.ERROR, str(exc), at=ended, count=True)
            return
        except Exception as exc:  # that task's data, not this node: fail it alone
            self._not_started(order, EndKind.REFUSED, f"cannot start the task: {exc}")
            return
        run.env = pre.env
        self._register(run)

    def _start_post(self, run: runner.TaskProcess, kind: EndKind, rc: int,
                    ended: float) -> None:
        order = run.order
        try:
            post = prepost.start_post(run, kind, rc, ended, self.die_with_parent)
        except (runner.StartError, OSError) as exc:
            self._end(order, Finished(order.id, order.epoch, int(prepost.outcome(kind, 127)),
                                      rc, run.started_at, ended, f"postprocess: {exc}"))
            return
        self._register(post)

    def _end(self, order: RunOrder, fin: Finished, count: bool = True) -> None:
        """The task is over on this node: free its slot and report how it ended."""
        self.res.release(order.id)
        if count:
            self.done_share += order.need
        if order.python and self.pool is not None:
            fin = self.pool.finished(fin)  # with its return value, when it finished
        self.changes.finished.append(fin)
        self.finished_total += 1

    def close(self) -> None:
        self.kill_everything_now()
        for proc in list(self.running.values()):
            runner.close(proc)
        self.ahead.close()
        if self.pool is not None:
            self.pool.close()
        self.procs.close()

