"""The reports' fast path (run_steps, migration 0010) against a direct computation.

Random histories are written the way a project writes them: UPDATEs of tasks through the
real triggers, from two sessions (two writers of run_steps), with tasks retried, timed
out, killed, requeued by a lost batch job's sweep, left running, modified between runs,
deleted, and with events pruned. The reports must give what pairing each task's events
(in id order) and clipping the runs to the jobs' lives, the window and the bins gives —
also for events written after a report was last computed. The report's SQL reads
run_steps where it can; the oracle below reads only task_events and tasks.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import psycopg
import pytest

from balsam_mpi.base.project import Project
from balsam_mpi.dbctl.admin import admin_connect
from balsam_mpi.reports import history, tables
from balsam_mpi.reports.history import BatchJob, Filters, History, Window

Conn = psycopg.Connection[Any]
DONE = {"RUN_DONE", "POSTPROCESSED", "JOB_FINISHED"}
FAILED = {"RUN_ERROR", "RUN_TIMEOUT", "FAILED"}


@pytest.fixture()
def writers(pg_project: Project, dbname: str) -> Iterator[list[Conn]]:
    """Two superuser sessions with the triggers on: two backends, two writers."""
    info = pg_project.read_server_info()
    with admin_connect(pg_project, info, dbname) as one, \
            admin_connect(pg_project, info, dbname) as two:
        yield [one, two]


@dataclass
class Run:
    job: int
    start: float
    end: float | None  # None: still open (the task is RUNNING now)
    end_state: str | None
    task: int
    workflow: str
    owner: str
    w: float


def _runs(conn: Conn) -> list[Run]:
    """Every run, by pairing each task's RUNNING event with the next event that leaves
    RUNNING (ids in order), weighed by the task as it is now; deleted tasks drop out."""
    rows = conn.execute(
        "SELECT e.task_id, e.from_state::text, e.to_state::text, "
        "       date_part('epoch', e.at), e.batch_job_id, t.workflow, t.owner, "
        "       t.num_nodes::float8 / t.node_packing_count, t.state::text "
        "  FROM task_events e JOIN tasks t ON t.id = e.task_id "
        " WHERE e.batch_job_id IS NOT NULL "
        "   AND (e.to_state = 'RUNNING' OR e.from_state = 'RUNNING') "
        " ORDER BY e.task_id, e.id").fetchall()
    runs: list[Run] = []
    open_runs: dict[int, Run] = {}
    for task, src, dst, when, job, workflow, owner, w, _state in rows:
        if src == "RUNNING" and task in open_runs:
            run = open_runs.pop(task)
            run.end, run.end_state = float(when), dst
        if dst == "RUNNING":
            run = Run(job, float(when), None, None, task, workflow, owner, float(w))
            open_runs[task] = run
            runs.append(run)
    now_running = {r[0] for r in conn.execute("SELECT id FROM tasks WHERE state = 'RUNNING'")}
    # a RUNNING event without its end whose task is no longer RUNNING (its end event
    # pruned): the reports never saw an end, and neither does this
    return [r for r in runs if r.end is not None or r.task in now_running]


def _clip(x: float, lo: float, hi: float) -> float:
    return min(max(x, lo), hi)


@dataclass
class Expected:
    busy: np.ndarray[Any, np.dtype[np.float64]]
    done: np.ndarray[Any, np.dtype[np.float64]]
    failed: np.ndarray[Any, np.dtype[np.float64]]
    first: np.ndarray[Any, np.dtype[np.float64]]
    last: np.ndarray[Any, np.dtype[np.float64]]
    usage: dict[tuple[int, str, str], tuple[float, int, int]]


def _expected(runs: list[Run], jobs: list[BatchJob], window: Window,
              filters: Filters) -> Expected:
    """Busy node-seconds per job and bin by overlapping each run with each bin (a bin's
    total cannot be negative)."""
    index = {j.id: i for i, j in enumerate(jobs)}
    life = {j.id: (j.started_at.timestamp(), j.alive_until.timestamp())  # type: ignore[union-attr]
            for j in jobs}
    e0, e1, width, nb = window.t0.timestamp(), window.t1.timestamp(), window.width, window.nbins
    starts, ends = window.starts(), window.ends()
    shape = (len(jobs), nb)
    out = Expected(np.zeros(shape), np.zeros(shape), np.zeros(shape),
                   np.full(len(jobs), np.nan), np.full(len(jobs), np.nan), {})
    usage: dict[tuple[int, str, str], list[float]] = defaultdict(lambda: [0.0, 0, 0])
    for run in runs:
        if run.job not in index or filters.workflow not in (None, run.workflow) \
                or filters.owner not in (None, run.owner):
            continue
        i = index[run.job]
        s, e = life[run.job]
        a = _clip(run.start, s, e)
        b = _clip(run.end if run.end is not None else e, s, e)
        xa, xb = _clip(a, e0, e1) - e0, _clip(b, e0, e1) - e0
        # the run's overlap with each bin; signed, as the reports' steps are, for a run
        # whose end was written at the clock before the start its node reported
        out.busy[i] += run.w * (np.clip(xb, starts, ends) - np.clip(xa, starts, ends))
        key = (run.job, run.workflow, run.owner)
        usage[key][0] += run.w * (xb - xa)
        if e0 <= a <= e1:
            out.first[i] = np.fmin(out.first[i], xa)
        if xb > 0:
            out.last[i] = np.fmax(out.last[i], xb)
        if run.end is not None and e0 <= b <= e1:
            k = min(math.floor(xb / width), nb - 1)
            if run.end_state in DONE:
                out.done[i, k] += 1
                usage[key][1] += 1
            elif run.end_state in FAILED:
                out.failed[i, k] += 1
                usage[key][2] += 1
    out.busy = np.clip(out.busy, 0.0, None)
    out.usage = {k: (v[0], int(v[1]), int(v[2])) for k, v in usage.items()}
    return out


# Times are epoch seconds in float8 (about 2e-7 s apart at today's epochs) and the two
# sides add them in different orders: they agree to well under a microsecond per step,
# so to 1e-4 node-seconds per bin; any step counted wrong is off by far more.
def _check(conn: Conn, filters: Filters) -> History:
    h = history.history(conn, filters)
    want = _expected(_runs(conn), h.jobs, h.window, filters)
    assert h.busy == pytest.approx(want.busy, rel=1e-9, abs=1e-4), filters
    assert np.array_equal(h.done, want.done), filters
    assert np.array_equal(h.failed, want.failed), filters
    assert np.allclose(h.first_start, want.first, atol=1e-4, equal_nan=True), filters
    assert np.allclose(h.last_end, want.last, atol=1e-4, equal_nan=True), filters
    if filters.bin_seconds is None:
        _, rows = tables.usage(conn, filters)
        got = {(r.job_id, r.workflow, r.owner): (r.node_seconds, r.done, r.failed)
               for r in rows}
        # (not the live job: its end is the time of each call, `now`)
        latest = max(x.alive_until for x in h.jobs if x.alive_until)
        live = {j.id for j in h.jobs if j.state == "RUNNING" and j.alive_until == latest}
        expected = {k: (max(0.0, v[0]), v[1], v[2]) for k, v in want.usage.items()
                    if k[0] in {j.id for j in h.jobs} - live}
        got = {k: v for k, v in got.items() if k[0] not in live}
        assert got.keys() == expected.keys(), filters
        for key, (seconds, done, failed) in got.items():
            assert seconds == pytest.approx(expected[key][0], rel=1e-9, abs=1e-4), key
            assert (done, failed) == expected[key][1:], key
    return h


class RandomHistory:
    """Writes a random history through the real triggers, from two sessions."""

    def __init__(self, writers: list[Conn], rng: random.Random) -> None:
        self.w = writers
        self.rng = rng
        su = writers[0]
        self.now = su.execute("SELECT date_part('epoch', clock_timestamp())").fetchone()[0]
        self.app = su.execute("INSERT INTO apps (name, command) VALUES ('sim', 'true') "
                              "RETURNING id").fetchone()[0]
        self.base = self.now - 3000.0
        self.jobs: dict[int, tuple[float, float]] = {}

    def at(self, t: float) -> datetime:
        return datetime.fromtimestamp(t).astimezone()

    def job(self, start: float, end: float | None, state: str, heartbeat: float,
            lease: float = 600) -> int:
        job = self.w[0].execute(
            'INSERT INTO batch_jobs ("user", host, nodes, ranks, state, lease_sec, '
            "started_at, heartbeat_at, ended_at, wall_time_min) "
            "VALUES ('alice', 'h', 8, 8, %s, %s, %s, %s, %s, 60) RETURNING id",
            (state, lease, self.at(self.base + start), self.at(self.base + heartbeat),
             None if end is None else self.at(self.base + end))).fetchone()[0]
        self.jobs[job] = (start, end if end is not None else 3000.0)
        return int(job)

    def tasks(self, n: int) -> list[int]:
        rng = self.rng
        rows = [(rng.choice("abc"), rng.choice(["alice", "bob"]), rng.choice([1, 1, 2]),
                 rng.choice([1, 2, 4])) for _ in range(n)]
        return [r[0] for r in self.w[0].execute(
            "INSERT INTO tasks (workflow, app_id, state, owner, num_nodes, node_packing_count) "
            "SELECT w, %s, 'READY', o, n, p FROM unnest(%s::text[], %s::text[], %s::int[], "
            "%s::int[]) AS x(w, o, n, p) RETURNING id",
            (self.app, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
             [r[3] for r in rows])).fetchall()]

    def writer(self) -> Conn:
        return self.rng.choice(self.w)

    def start(self, ids: list[int], job: int) -> dict[int, float]:
        """One UPDATE, as a flush: each task RUNNING at its own time, some of them outside
        the job's life (clipped by the reports)."""
        s, e = self.jobs[job]
        when = {t: self.rng.uniform(s - 15, e + 5) for t in ids}
        self.writer().execute(
            "UPDATE tasks t SET state = 'RUNNING', batch_job_id = %s, started_at = x.at, "
            "claimed_at = x.at FROM unnest(%s::bigint[], %s::timestamptz[]) AS x(id, at) "
            "WHERE t.id = x.id",
            (job, list(when), [self.at(self.base + v) for v in when.values()]))
        return when

    def end(self, ends: dict[int, tuple[str, float]]) -> None:
        """One UPDATE ending runs: RUN_* timed from ended_at, the rest at the clock."""
        if ends:
            self.writer().execute(
                "UPDATE tasks t SET state = x.state::task_state, ended_at = x.at "
                "FROM unnest(%s::bigint[], %s::text[], %s::timestamptz[]) AS x(id, state, at) "
                "WHERE t.id = x.id",
                (list(ends), [v[0] for v in ends.values()],
                 [self.at(self.base + v[1]) for v in ends.values()]))

    def move(self, ids: list[int], state: str) -> None:
        if ids:
            self.writer().execute("UPDATE tasks SET state = %s WHERE id = ANY(%s)",
                                  (state, ids))

    def wave(self, jobs: list[int], pool: list[int]) -> None:
        """Start up to 20 runnable tasks in random jobs and end most of them somehow."""
        rng = self.rng
        ready = [r[0] for r in self.w[0].execute(
            "SELECT id FROM tasks WHERE id = ANY(%s) AND state IN ('READY', 'RESTART_READY') "
            "ORDER BY id", (pool,))]
        rng.shuffle(ready)
        for job in jobs:
            picked, ready = ready[:rng.randint(3, 10)], ready[10:]
            started = self.start(picked, job) if picked else {}
            ends: dict[int, tuple[str, float]] = {}
            killed, requeued, failed_for_good = [], [], []
            for tid, t in started.items():
                roll = rng.random()
                if roll < 0.45:
                    ends[tid] = ("RUN_DONE", t + rng.uniform(0.001, 40))
                elif roll < 0.6:
                    ends[tid] = ("RUN_ERROR", t + rng.uniform(0.001, 30))
                elif roll < 0.68:
                    ends[tid] = ("RUN_TIMEOUT", t + rng.uniform(1, 30))
                elif roll < 0.76:
                    killed.append(tid)
                elif roll < 0.84:
                    requeued.append(tid)  # the lease sweep of a lost job
                elif roll < 0.9:
                    failed_for_good.append(tid)
                # else: still running
            self.end(ends)
            self.move(killed, "USER_KILLED")
            self.move(requeued, "READY")
            self.move(failed_for_good, "FAILED")
            done = [t for t, v in ends.items() if v[0] == "RUN_DONE"]
            self.move(done, "JOB_FINISHED")
            self.move([t for t, v in ends.items() if v[0] != "RUN_DONE"], "RESTART_READY")


def _filters(h: RandomHistory, rng: random.Random, jobs: list[int]) -> list[Filters]:
    base = h.base
    since = h.at(base + rng.uniform(0, 1500))
    until = since + timedelta(seconds=rng.uniform(30, 1500))
    return [
        Filters(),
        Filters(bin_seconds=7),
        Filters(bin_seconds=10),
        Filters(bin_seconds=rng.choice([3.5, 25, 60, 300])),
        Filters(since=since, until=until),
        Filters(since=since, until=until, bin_seconds=10),
        Filters(workflow="a"),
        Filters(owner="bob", bin_seconds=20),
        Filters(batch_job=rng.choice(jobs)),
        Filters(batch_job=jobs[0], workflow="b", since=since),
    ]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fast_path_agrees_with_the_events_on_a_random_history(
        conn: Conn, writers: list[Conn], seed: int) -> None:
    rng = random.Random(seed)
    h = RandomHistory(writers, rng)
    # jobs: finished (its life not on 10 s boundaries), lost, and still running
    jobs = [h.job(100.123, 1400.777, "FINISHED", 1400.777),
            h.job(700.5, None, "LOST", 2100.25),
            h.job(1200.01, 1900.99, "FINISHED", 1900.99),
            h.job(2400.3, None, "RUNNING", 2800.0, lease=5.5),  # dead: ends at 2805.5
            h.job(2500.7, None, "RUNNING", 3000.0)]  # alive: ends now, at each report
    pool = h.tasks(120)
    for _ in range(3):
        h.wave(jobs, pool)
    for f in _filters(h, rng, jobs):
        _check(conn, f)

    # after the report: more runs (retries), tasks changed between runs, a task deleted,
    # events pruned
    su = writers[0]
    for _ in range(2):
        h.wave(jobs, pool)
    su.execute("UPDATE tasks SET state = 'READY' WHERE id = ANY(%s) AND state = 'FAILED'",
               (pool,))
    ran = [r[0] for r in su.execute(
        "SELECT DISTINCT task_id FROM task_events WHERE to_state = 'RUNNING' "
        "AND task_id = ANY(%s) ORDER BY 1", (pool,))]
    idle = [r[0] for r in su.execute(
        "SELECT id FROM tasks WHERE id = ANY(%s) AND state IN ('READY', 'RESTART_READY') "
        "AND id IN (SELECT task_id FROM task_events WHERE to_state = 'RUNNING') ORDER BY id",
        (pool,))]
    assert len(idle) >= 3 and len(ran) >= 3
    su.execute("UPDATE tasks SET workflow = 'c', num_nodes = 3 WHERE id = %s", (idle[0],))
    su.execute("UPDATE tasks SET node_packing_count = 8 WHERE id = %s", (idle[1],))
    su.execute("DELETE FROM task_deps WHERE child_id = %s OR parent_id = %s",
               (idle[2], idle[2]))
    su.execute("DELETE FROM tasks WHERE id = %s", (idle[2],))
    finished = [r[0] for r in su.execute(
        "SELECT id FROM tasks WHERE id = ANY(%s) AND state = 'JOB_FINISHED' ORDER BY id",
        (pool,))]
    su.execute("DELETE FROM task_events WHERE task_id = ANY(%s)", (finished[:3],))
    h.wave(jobs, pool)
    for f in _filters(h, rng, jobs):
        _check(conn, f)

    # the rows kept by the triggers, summed over writers, are what rebuilding them from
    # the events gives, wherever a bucket is not marked dirty
    kept, dirty = _clean_rows(su)
    writer_ids = {r[0] for r in su.execute("SELECT DISTINCT writer FROM run_steps")}
    assert len(writer_ids) == 2 and len(kept) > 20
    with su.transaction():
        su.execute("SELECT run_steps_rebuild()")
        rebuilt, _ = _clean_rows(su, dirty)
        raise psycopg.Rollback()
    assert kept.keys() == rebuilt.keys()
    for key, row in kept.items():
        want = rebuilt[key]
        assert row[:6] == pytest.approx(want[:6], rel=1e-9, abs=1e-4), key
        assert np.allclose(row[6:], want[6:], atol=1e-4, equal_nan=True), key


def _clean_rows(su: Conn, dirty: set[tuple[int, int]] | None = None
                ) -> tuple[dict[tuple[Any, ...], tuple[float, ...]], set[tuple[int, int]]]:
    """run_steps summed over writers per (job, bucket, workflow, owner), leaving out the
    buckets marked dirty (or those given)."""
    if dirty is None:
        dirty = {(r[0], r[1]) for r in su.execute(
            "SELECT batch_job_id, bucket FROM run_steps WHERE dirty")}
    rows = su.execute(
        "SELECT batch_job_id, bucket, workflow, owner, sum(level_change), sum(moment), "
        "       sum(starts), sum(ends), sum(done), sum(failed), min(first_start), "
        "       max(last_end) "
        "  FROM run_steps WHERE NOT dirty GROUP BY 1, 2, 3, 4").fetchall()
    return ({tuple(r[:4]): tuple(float("nan") if v is None else float(v) for v in r[4:])
             for r in rows if (r[0], r[1]) not in dirty}, dirty)


def test_a_bin_holding_only_an_open_runs_end_counts_no_run_done(
        conn: Conn, writers: list[Conn]) -> None:
    """A task still RUNNING in a dead job: its run ends at the job's end (heartbeat +
    lease), an end with no state of its own. In a bin with nothing else it counted NULL
    runs done and failed (NaN in the report), not 0 — found once by the random history
    above, when a running job's end ("now") fell inside the window."""
    h = RandomHistory(writers, random.Random(7))
    job = h.job(100.0, None, "RUNNING", 2000.0, lease=5.0)  # dead: ends at 2005
    [task] = h.tasks(1)
    h.start([task], job)  # and never ends
    h.w[0].execute("UPDATE tasks SET started_at = %s WHERE id = %s",
                   (h.at(h.base + 1990.0), task))
    got = _check(conn, Filters(bin_seconds=7))
    assert not np.isnan(got.done).any() and not np.isnan(got.failed).any()
    assert got.done.sum() == 0 and got.failed.sum() == 0
