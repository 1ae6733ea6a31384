"""One node's tasks: a queue, the running processes, their capacity — no MPI, no database.

Shared by worker ranks and the leader's in-process local worker. The node starts queued
tasks in order while the head fits (no backfill, so a task that needs the whole node is
not starved by a stream of small ones), notices exits through pidfds in ``epoll`` (so it
can sleep and still wake the instant a task ends), enforces each task's own wall time,
and kills on request: SIGTERM to the task's process group, SIGKILL after the grace.
Everything that happened is collected in :attr:`changes` for the next report.

A multi-rank task runs under the platform's launch prefix (``mpilaunch``) on the head
node; the other nodes of a multi-node task *hold* a whole node for it and run nothing
until the leader releases them. An app's preprocess and postprocess run in the task's
slot, before and after the run (``prepost``).

The end of a batch job (:meth:`Node.begin_stop`): from that instant the node starts
nothing, and a task that dies of a signal is *cut* (requeued without spending a retry),
not failed. A scheduler signals every process of the job at once and in any order, so a
task may die before this rank's own signal arrives: a death by a signal is therefore held
for ``signal_hold_s`` before it counts as an error, and becomes a cut if the stop comes
within the hold.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import time
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

from . import gpus as gpumod
from . import mpilaunch, pdeath, prepost, pypool, runner, stagein
from .platform import node_name
from .protocol import Assign, Changes, EndKind, Finished, Report, RunOrder, Started
from .resources import NodeResources

log = logging.getLogger(__name__)


class Node:
    def __init__(self, *, environ: Mapping[str, str] | None = None, db_path: str = "",
                 gpus: int = 0, die_with_parent: bool = True, kill_grace_s: float = 10.0,
                 signal_hold_s: float = 2.0, stop_grace_s: float = 3.0) -> None:
        env = os.environ if environ is None else environ
        self.vendor = gpumod.detect_vendor(env) if gpus else None
        self.res = NodeResources(devices=gpumod.node_devices(
            gpus, None, gpumod.inherited_ids(self.vendor, env)))
        self.host = node_name(env)  # as the scheduler names it: launch prefixes carry it
        self.holding: dict[int, RunOrder] = {}  # multi-node tasks headed elsewhere
        self.poked = False  # something changed that is not a start or an end (a release)
        self.extra_env: dict[str, str] = {}  # set by the worker: the task_api channel
        self._launcher: mpilaunch.MpiLauncher | None = None
        # Python tasks' warm interpreters (pypool), started with the first such task.
        self.python = pypool.PoolConfig(die_with_parent=die_with_parent)
        self.pool: pypool.PyPool | None = None
        self._launch_error = ""
        self.queue: deque[RunOrder] = deque()
        self.running: dict[int, runner.TaskProcess] = {}
        self.changes = Changes()
        self.acked = 0
        self.db_path = db_path
        self.die_with_parent = die_with_parent
        self.kill_grace_s = kill_grace_s
        self.signal_hold_s = signal_hold_s
        self.stop_grace_s = min(stop_grace_s, kill_grace_s)
        # Set by begin_stop, possibly from a signal handler: plain flags, read by step().
        self.stopping = False  # start nothing more
        self.cutting = False  # the job is ending: deaths are cut-offs, not failures
        self._held: list[_Held] = []  # signal deaths waiting to see whether a stop comes
        self._env = runner.base_environment(env)
        self._epoll = select.epoll()
        self._by_fd: dict[int, int] = {}
        self._wake_fd = -1
        self._watched_fds: set[int] = set()
        self._watch: set[int] = set()  # running tasks with a deadline or a pending SIGKILL
        self.started_total = 0
        self.finished_total = 0
        self.done_share = 0.0  # node shares finished so far: the node's pace
        # Starts per call, 0 = all that fit: the leader's own node starts a few at a time
        # so that answering the other ranks never waits for a burst of spawns.
        self.max_starts = 0
        if die_with_parent:
            pdeath.trampoline()  # built (once per user) now, not at the first task

    # -- state ------------------------------------------------------------------------
    @property
    def queued_share(self) -> float:
        return sum(s.need for s in self.queue)

    def free(self) -> float:
        """Free share counting queued tasks as taken (negative when over-assigned)."""
        return self.res.free - self.queued_share

    def busy(self) -> bool:
        return bool(self.running or self.queue or self.holding or self._held)

    def report(self, rank: int) -> Report:
        started, finished = self.changes.take()
        self.poked = False
        return Report(rank=rank, acked=self.acked, free=self.free(),
                      running=len(self.running) + len(self.holding), queued=len(self.queue),
                      started=started, finished=finished, done_share=self.done_share)

    # -- orders -----------------------------------------------------------------------
    def apply(self, msg: Assign) -> None:
        self.acked = max(self.acked, msg.seq)
        if not self.stopping:  # after the stop, new work is dropped (claims released)
            self.queue.extend(msg.tasks)
            for order in msg.hold:
                self._hold(order)
        for task_id in msg.release:
            self._unhold(task_id)
        if msg.kill:
            self.kill(msg.kill, EndKind.KILLED)

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

    def kill(self, ids: Iterable[int], kind: EndKind) -> None:
        """Stop these tasks. Queued ones are dropped without a report: they never started,
        so their claims are simply released when the batch job closes (or they are
        USER_KILLED already)."""
        wanted = set(ids)
        if not wanted:
            return
        if self.queue:
            self.queue = deque(s for s in self.queue if s.id not in wanted)
        for task_id in wanted & self.running.keys():
            self._stop(self.running[task_id], kind)

    def cut_all(self, kind: EndKind = EndKind.CUT) -> None:
        """Stop everything (drain at the end of the batch job)."""
        self.kill([s.id for s in self.queue] + list(self.running), kind)

    def begin_stop(self, cut: bool = True) -> None:
        """The batch job is ending (``cut``) or this node is being drained: start nothing
        from now on. Only sets flags, so a signal handler may call it; :meth:`step` drops
        the queue and settles held deaths."""
        self.stopping = True
        if cut:
            self.cutting = True

    def _stop(self, proc: runner.TaskProcess, kind: EndKind) -> None:
        ended = (proc.ended() if isinstance(proc, pypool.PyCall)  # a call: not our child
                 else runner.reap(proc) is not None)
        if proc.end_kind is None and ended:
            return  # it ended on its own before the stop came: its own outcome stands
        if proc.end_kind is None:
            proc.end_kind = kind
            # At the job's end the scheduler's own SIGKILL is near: a short grace leaves
            # the launcher time to write what happened and close its batch job.
            grace = self.stop_grace_s if self.cutting and kind == EndKind.CUT \
                else self.kill_grace_s
            proc.kill_at = time.monotonic() + grace
            self._watch.add(proc.order.id)
            runner.signal_group(proc, signal.SIGTERM)

    # -- the work ---------------------------------------------------------------------
    def step(self) -> bool:
        """Reap what ended, enforce time limits, start what fits; True if anything did."""
        if self.stopping and self.queue:
            self.queue.clear()  # never started: their claims go back when the job closes
        did = self.reap(0.0)
        if self._held:
            did = self._settle_held() or did
        if self._watch:
            self._check_deadlines()
        return self.start_ready() or did

    def start_ready(self) -> bool:
        if self.stopping:
            return False
        did = False
        budget = self.max_starts or len(self.queue)
        while self.queue and budget > 0:
            budget -= 1
            order = self.queue[0]
            if not self.res.fits(min(order.need, self.res.capacity), order.gpus):
                if order.gpus <= self.res.gpus:
                    break
                # More GPUs than this node has: it would wait forever, holding the queue.
                self.queue.popleft()
                now = time.time()
                self.changes.started.append(Started(order.id, order.epoch, now))
                self.started_total += 1
                self.changes.finished.append(Finished(
                    order.id, order.epoch, int(EndKind.ERROR), 127, now, now,
                    f"needs {order.gpus} GPUs on a node; this launcher's nodes have "
                    f"{self.res.gpus} (--gpus-per-node)"))
                self.finished_total += 1
                continue
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
                proc = runner.start(
                    order, env, die_with_parent=self.die_with_parent, timed=False,
                    argv=runner.script_argv(order.preprocess, order.env_script),
                    out_name=prepost.PRE_OUT[0], err_name=prepost.PRE_OUT[1])
                proc.phase = "pre"
            else:
                proc = self._start_run(order, env)
        except (runner.StartError, OSError, mpilaunch.LaunchError) as exc:
            now = time.time()
            self.changes.started.append(Started(order.id, order.epoch, now))
            self.started_total += 1
            self._end(order, Finished(order.id, order.epoch, int(EndKind.ERROR), 127, now, now,
                                     str(exc)), count=False)
            return
        except Exception as exc:  # anything one task's data provokes fails that task only
            self._not_started(order, f"cannot start the task: {exc}")
            return
        proc.env = env
        self._register(proc)

    def _not_started(self, order: RunOrder, why: str) -> None:
        """Fail a task that could not be started, with one line saying why (14.7)."""
        now = time.time()
        self.changes.started.append(Started(order.id, order.epoch, now))
        self.started_total += 1
        self._end(order, Finished(order.id, order.epoch, int(EndKind.REFUSED), 127, now, now,
                                 why.strip().split("\n", 1)[0][:500]), count=False)

    def _start_run(self, order: RunOrder, env: dict[str, str]) -> runner.TaskProcess:
        multi = order.num_nodes > 1 or order.ranks_per_node > 1  # mpilaunch.needs_prefix
        if order.python:  # a call in a warm interpreter, watched like a process
            if self.pool is None:
                self.pool = pypool.PyPool(self._env, self.python)
            proc: runner.TaskProcess = self.pool.start(order, env)
        else:
            proc = runner.start(order, env, die_with_parent=self.die_with_parent,
                                argv=runner.task_argv(order, self._prefix(order)) if multi
                                else None)
        self.changes.started.append(Started(order.id, order.epoch, proc.started_at))
        self.started_total += 1
        return proc

    def _prefix(self, order: RunOrder) -> list[str]:
        """The launch prefix of a multi-rank task (none for a plain one)."""
        if not mpilaunch.needs_prefix(order.num_nodes, order.ranks_per_node):
            return []
        if self._launcher is None and not self._launch_error:
            try:
                self._launcher = mpilaunch.choose_launcher(os.environ)
            except mpilaunch.LaunchError as exc:
                # Single-rank work still runs; only multi-rank tasks fail, with the reason.
                self._launch_error = str(exc)
                log.error("multi-rank tasks cannot start here: %s", exc)
            else:
                if not self._launcher.tested:
                    log.warning("launch prefix %r is untested (docs/mpi-tasks.md)",
                                self._launcher.kind)
        if self._launcher is None:
            raise runner.StartError(self._launch_error)
        hosts = order.hosts or (self.host,) * max(1, order.num_nodes)
        layout = dict(hosts=hosts, ranks_per_node=order.ranks_per_node,
                      threads_per_rank=order.threads, gpus_per_rank=order.gpus_per_rank)
        if order.env_script:  # the bare name, looked up on the PATH the script sets
            return mpilaunch.launch_prefix(self._launcher.kind, **layout)  # type: ignore[arg-type]
        return self._launcher.prefix(**layout)  # type: ignore[arg-type]

    def _register(self, proc: runner.TaskProcess) -> None:
        order = proc.order
        self.running[order.id] = proc
        self._by_fd[proc.pidfd] = order.id
        self._epoll.register(proc.pidfd, select.EPOLLIN)
        if proc.deadline:
            self._watch.add(order.id)

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` s, waking when a task ends; True if one did."""
        return self.reap(timeout)

    def watch(self, fd: int) -> None:
        """Also wake from :meth:`wait` when ``fd`` is readable (the task_api socket)."""
        self._watched_fds.add(fd)
        self._epoll.register(fd, select.EPOLLIN)

    def wake_on(self, fd: int) -> None:
        """Also wake from :meth:`wait` when ``fd`` (an eventfd) is signalled: the leader's
        database thread uses it to say a result is ready."""
        self._wake_fd = fd
        self._epoll.register(fd, select.EPOLLIN)

    def reap(self, timeout: float) -> bool:
        # epoll's resolution is 1 ms; round up so a short wait still sleeps, never spins.
        ms = 0 if timeout <= 0 else max(1, int(timeout * 1000 + 0.999))
        if not self._by_fd and self._wake_fd < 0 and not self._watched_fds:
            if ms:
                time.sleep(ms / 1000.0)
            return False
        events = self._epoll.poll(ms / 1000.0 if ms else 0)
        for fd, _mask in events:
            task_id = self._by_fd.get(fd)
            if task_id is not None:
                self._finish(self.running[task_id])
            elif fd == self._wake_fd:
                try:
                    os.eventfd_read(fd)
                except BlockingIOError:
                    pass
        return bool(events)

    def _finish(self, proc: runner.TaskProcess) -> None:
        rc = proc.reap() if isinstance(proc, pypool.PyCall) else runner.reap(proc)
        if rc is None:
            return
        ended = time.time()
        order = proc.order
        self._epoll.unregister(proc.pidfd)
        del self._by_fd[proc.pidfd]
        runner.close(proc)
        del self.running[order.id]
        self._watch.discard(order.id)
        if proc.end_kind is None and rc != 0:
            if self.cutting:
                proc.end_kind = EndKind.CUT  # the job's end took it down
            elif died_of_signal(rc):
                # The scheduler may be ending the job and this rank's signal be on its
                # way: decide in signal_hold_s (the slot stays taken meanwhile).
                self._held.append(_Held(time.monotonic() + self.signal_hold_s, proc, rc,
                                        ended))
                return
        self._conclude(proc, rc, ended)

    def _settle_held(self) -> bool:
        """Held signal deaths: cut if the stop came, errors once their hold is over."""
        now = time.monotonic()
        keep: list[_Held] = []
        for held in self._held:
            if self.cutting:
                held.proc.end_kind = EndKind.CUT
            elif now < held.until:
                keep.append(held)
                continue
            self._conclude(held.proc, held.rc, held.ended)
        settled = len(keep) < len(self._held)
        self._held = keep
        return settled

    def _conclude(self, proc: runner.TaskProcess, rc: int, ended: float) -> None:
        """What a phase's end means: the next phase, or the task's end on this node."""
        order = proc.order
        if proc.phase == "pre":
            self._after_pre(proc, rc, ended)
            return
        if proc.phase == "post":
            kind = proc.end_kind if proc.end_kind is not None else prepost.outcome(
                proc.run_kind, rc)
            tail = "" if kind == EndKind.DONE_POST else runner.output_tail(proc)
            # The run's own times: ended_at and the RUN_* event are the run's end.
            self._end(order, Finished(order.id, order.epoch, int(kind), proc.run_rc,
                                     proc.run_started, proc.run_ended, tail))
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
        self._end(order, Finished(order.id, order.epoch, int(kind), rc, proc.started_at, ended,
                                 tail))

    def _after_pre(self, proc: runner.TaskProcess, rc: int, ended: float) -> None:
        order = proc.order
        if proc.end_kind is not None or rc != 0 or self.cutting:
            # Stopped, or the preprocess failed: the task never ran (stopped: the report
            # changes nothing in the database, and it tells the leader the slot is free).
            kind = proc.end_kind if proc.end_kind is not None else (
                EndKind.CUT if rc == 0 else EndKind.PRE_FAILED)
            self._end(order, Finished(order.id, order.epoch, int(kind), rc, ended, ended,
                                     runner.output_tail(proc)))
            return
        try:
            run = self._start_run(order, proc.env or {})
        except (runner.StartError, OSError, mpilaunch.LaunchError) as exc:
            self.changes.started.append(Started(order.id, order.epoch, ended))
            self.started_total += 1
            self._end(order, Finished(order.id, order.epoch, int(EndKind.ERROR), 127, ended,
                                     ended, str(exc)))
            return
        except Exception as exc:  # that task's data, not this node: fail it alone
            self._not_started(order, f"cannot start the task: {exc}")
            return
        run.env = proc.env
        self._register(run)

    def _start_post(self, proc: runner.TaskProcess, kind: EndKind, rc: int,
                    ended: float) -> None:
        order = proc.order
        env = dict(proc.env or {})
        env.update(prepost.post_env(kind))
        try:
            post = runner.start(order, env, die_with_parent=self.die_with_parent, timed=False,
                                argv=runner.script_argv(order.postprocess, order.env_script),
                                out_name=prepost.POST_OUT[0], err_name=prepost.POST_OUT[1])
        except (runner.StartError, OSError) as exc:
            self._end(order, Finished(order.id, order.epoch, int(prepost.outcome(kind, 127)), rc,
                                     proc.started_at, ended, f"postprocess: {exc}"))
            return
        post.phase, post.run_kind, post.run_rc = "post", kind, rc
        post.run_started, post.run_ended, post.env = proc.started_at, ended, proc.env
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

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        for task_id in list(self._watch):
            proc = self.running[task_id]
            if proc.end_kind is None and proc.deadline and now >= proc.deadline:
                self._stop(proc, EndKind.TIMEOUT)
            elif proc.end_kind is not None and now >= proc.kill_at:
                runner.signal_group(proc, signal.SIGKILL)
                proc.kill_at = now + self.kill_grace_s

    def kill_everything_now(self) -> None:
        """SIGKILL every task group (on a crash, before MPI_Abort)."""
        for proc in self.running.values():
            runner.signal_group(proc, signal.SIGKILL)
        if self.pool is not None:
            self.pool.kill_all()

    def close(self) -> None:
        self.kill_everything_now()
        for proc in list(self.running.values()):
            runner.close(proc)
        if self.pool is not None:
            self.pool.close()
        self._epoll.close()


def died_of_signal(rc: int) -> bool:
    """A negative exit code is a death by that signal; 129-192 is how a shell reports
    one of its children's (128 + the signal's number)."""
    return rc < 0 or 128 < rc <= 192


class _Held(NamedTuple):
    until: float  # monotonic end of the hold
    proc: runner.TaskProcess
    rc: int
    ended: float


class NullNode(Node):
    """A node whose tasks end the moment they start, without a process: measures the
    leader and the protocol alone (``--null-runner``, benchmarks)."""

    def _start(self, order: RunOrder) -> None:
        now = time.time()
        self.changes.started.append(Started(order.id, order.epoch, now))
        self.changes.finished.append(
            Finished(order.id, order.epoch, int(EndKind.DONE), 0, now, now))
        self.done_share += order.need
        self.started_total += 1
        self.finished_total += 1
