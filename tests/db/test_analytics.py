"""Utilization, throughput and per-job figures on synthetic histories computed by hand."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import psycopg
import pytest

from balsam_mpi.base.errors import NotFound, UsageError
from balsam_mpi.reports import history
from balsam_mpi.reports.history import Filters

from . import test_analytics_build as build
from .test_analytics_build import Builder, at

Conn = psycopg.Connection[Any]
admin = build.admin  # the fixture that writes histories as the database superuser


def _three_quarters(b: Builder) -> int:
    """2 nodes for 100 s. A holds a whole node for 100 s; B and C share the other node
    (packing 2: half a node each) for 60 s and 40 s: busy = 100 + 30 + 20 = 150 of 200."""
    job = b.job(2, 0, 100, submitted=-30)
    b.finished_task(job, 0, 100)
    b.finished_task(job, 0, 60, packing=2)
    b.finished_task(job, 0, 40, packing=2)
    return job


def test_two_nodes_known_spans_is_exactly_75_percent(conn: Conn, admin: Conn) -> None:
    b = Builder(admin)
    _three_quarters(b)
    h = history.history(conn, Filters(bin_seconds=10))
    assert h.utilization() == pytest.approx(0.75, abs=1e-12)
    assert h.window.nbins == 10
    # 2 busy nodes until 40 s, 1.5 until 60 s, then 1
    expected = [1.0] * 4 + [0.75] * 2 + [0.5] * 4
    assert np.allclose(h.utilization_series(), expected)
    assert np.allclose(h.total_alive(), [20.0] * 10)
    assert float(h.busy.sum()) == pytest.approx(150.0)


def test_bins_that_do_not_divide_the_range(conn: Conn, admin: Conn) -> None:
    b = Builder(admin)
    _three_quarters(b)
    h = history.history(conn, Filters(bin_seconds=30))
    # bins [0,30) [30,60) [60,90) [90,100): the last one is 10 s long
    assert h.window.nbins == 4
    assert np.allclose(h.window.lengths(), [30, 30, 30, 10])
    # A 30 s; B 30 s at half a node; C 10 s at half a node in [30, 60)
    assert np.allclose(h.total_busy(), [60, 30 + 15 + 5, 30, 10])
    assert h.utilization() == pytest.approx(0.75)


def test_window_clips_runs(conn: Conn, admin: Conn) -> None:
    b = Builder(admin)
    _three_quarters(b)
    h = history.history(conn, Filters(since=at(50), until=at(100)))
    # in [50, 100]: A 50, B 10 s at half a node = 5 -> 55 of 2 x 50
    assert h.utilization() == pytest.approx(0.55)


def test_retried_task_counts_every_run(conn: Conn, admin: Conn) -> None:
    b = Builder(admin)
    job = b.job(1, 0, 100)
    tid = b.task(job=job)
    b.run(tid, job, 0, 30, end_state="RUN_ERROR")
    b.event(tid, "RUN_ERROR", "RESTART_READY", 31, job)
    b.run(tid, job, 50, 80, src="RESTART_READY")
    h = history.history(conn, Filters())
    assert h.utilization() == pytest.approx(0.6)
    assert (int(h.done.sum()), int(h.failed.sum())) == (1, 1)


def test_run_cut_off_by_a_lost_job_ends_at_its_last_heartbeat(
        conn: Conn, admin: Conn) -> None:
    b = Builder(admin)
    job = b.job(1, 0, 70, state="LOST", heartbeat=40)
    tid = b.task(state="READY")
    b.run(tid, job, 10)
    b.event(tid, "RUNNING", "READY", 70, job)  # requeued by another leader later on
    h = history.history(conn, Filters())
    # the job held its node 0-40 s (last heartbeat); the run was busy 10-40 s
    assert float(h.alive.sum()) == pytest.approx(40.0)
    assert h.utilization() == pytest.approx(0.75)
    assert (int(h.done.sum()), int(h.failed.sum())) == (0, 0)


def test_open_run_of_a_dead_running_job_ends_at_heartbeat_plus_lease(
        conn: Conn, admin: Conn) -> None:
    b = Builder(admin)
    job = b.job(1, 0, None, state="RUNNING", heartbeat=100, lease=20)
    tid = b.task(state="RUNNING", job=job)
    b.run(tid, job, 20)
    h = history.history(conn, Filters())
    assert h.window.t1 == at(120)
    assert h.utilization() == pytest.approx(100 / 120)


def test_open_run_of_a_finished_job_ends_with_the_job(conn: Conn, admin: Conn) -> None:
    b = Builder(admin)
    job = b.job(2, 0, 50)
    tid = b.task(state="RUNNING", job=job, num_nodes=2)
    b.run(tid, job, 10)
    assert history.history(conn, Filters()).utilization() == pytest.approx(0.8)


def test_overlapping_jobs_share_the_denominator(conn: Conn, admin: Conn) -> None:
    b = Builder(admin)
    j1 = b.job(2, 0, 100)
    j2 = b.job(1, 50, 150, user="bob")
    b.finished_task(j1, 0, 100, num_nodes=2)
    b.finished_task(j2, 100, 150)
    h = history.history(conn, Filters(bin_seconds=50))
    assert np.allclose(h.utilization_series(), [1.0, 2 / 3, 1.0])
    per_job = h.job_utilization_series()
    assert np.allclose(per_job[0][:2], [1.0, 1.0]) and math.isnan(per_job[0][2])
    assert math.isnan(per_job[1][0]) and np.allclose(per_job[1][1:], [0.0, 1.0])
    assert h.utilization() == pytest.approx(250 / 300)
    only_bob = history.history(conn, Filters(user="bob"))
    assert [j.id for j in only_bob.jobs] == [j2]
    assert only_bob.utilization() == pytest.approx(0.5)
    only_j1 = history.history(conn, Filters(batch_job=j1))
    assert only_j1.utilization() == pytest.approx(1.0)


def test_workflow_and_owner_filters_select_tasks(conn: Conn, admin: Conn) -> None:
    b = Builder(admin)
    job = b.job(2, 0, 100)
    b.finished_task(job, 0, 100, workflow="big", owner="alice")
    b.finished_task(job, 0, 50, workflow="small", owner="bob")
    assert history.history(conn, Filters(workflow="big")).utilization() == pytest.approx(0.5)
    assert history.history(conn, Filters(owner="bob")).utilization() == pytest.approx(0.25)


def test_throughput_bins_and_cumulative(conn: Conn, admin: Conn) -> None:
    b = Builder(admin)
    job = b.job(1, 0, 60)
    ends = [5, 8, 12, 15, 18, 19, 41, 59]
    for i, end in enumerate(ends):
        b.finished_task(job, end - 1, end, workflow=f"w{i % 2}")
    failed = b.task(state="RUN_ERROR", job=job)
    b.run(failed, job, 20, 25, end_state="RUN_ERROR")
    h = history.history(conn, Filters(bin_seconds=10))
    assert h.total_done().tolist() == [2, 4, 0, 0, 1, 1]
    assert h.total_failed().tolist() == [0, 0, 1, 0, 0, 0]
    assert np.cumsum(h.total_done()).tolist() == [2, 6, 6, 6, 7, 8]


def test_per_job_figures(conn: Conn, admin: Conn) -> None:
    b = Builder(admin)
    job = b.job(2, 0, 100, submitted=-30)
    b.finished_task(job, 7, 70)
    failed = b.task(state="RUN_ERROR", job=job, num_nodes=2)
    b.run(failed, job, 10, 20, end_state="RUN_ERROR")
    (row,) = history.history(conn, Filters()).job_rows()
    assert row["id"] == job and row["nodes"] == 2
    assert row["wall_seconds"] == pytest.approx(100)
    assert row["queue_seconds"] == pytest.approx(30)
    assert row["first_task_seconds"] == pytest.approx(7)
    assert row["idle_tail_seconds"] == pytest.approx(30)
    assert row["busy_node_hours"] == pytest.approx((63 + 20) / 3600)
    assert row["node_hours"] == pytest.approx(200 / 3600)
    assert row["utilization"] == pytest.approx(83 / 200)
    assert (row["done"], row["failed"]) == (1, 1)


def test_real_triggers_and_bulk_updates(conn: Conn, admin: Conn) -> None:
    """The launcher's path: bulk UPDATEs whose events the triggers time from started_at and
    ended_at, then RUN_DONE -> JOB_FINISHED at the flush's clock."""
    b = Builder(admin, triggers=True)
    job = b.job(2, 0, 100)
    admin.execute("INSERT INTO tasks (workflow, app_id, state, node_packing_count) "
                 "SELECT 'w', %s, 'READY', p FROM unnest(ARRAY[1, 2, 2]) AS p", (b.app("sim"),))
    ids = [r[0] for r in admin.execute("SELECT id FROM tasks ORDER BY id").fetchall()]
    admin.execute("UPDATE tasks SET state = 'RUNNING', batch_job_id = %s, started_at = %s, "
                 "claimed_at = %s WHERE id = ANY(%s)", (job, at(0), at(0), ids))
    for tid, end in zip(ids, (100, 60, 40), strict=True):
        admin.execute("UPDATE tasks SET state = 'RUN_DONE', ended_at = %s, exit_code = 0 "
                     "WHERE id = %s", (at(end), tid))
    admin.execute("UPDATE tasks SET state = 'JOB_FINISHED' WHERE id = ANY(%s)", (ids,))
    h = history.history(conn, Filters())
    assert h.utilization() == pytest.approx(0.75)
    assert int(h.done.sum()) == 3


def test_empty_project_and_unstarted_jobs(conn: Conn, admin: Conn) -> None:
    h = history.history(conn, Filters())
    assert h.utilization() is None and h.jobs == [] and h.job_rows() == []
    b = Builder(admin)
    queued = b.job(4, None, state="QUEUED", submitted=0)
    h = history.history(conn, Filters(batch_job=queued))
    assert h.jobs == [] and h.utilization() is None


def test_bad_selection(conn: Conn, admin: Conn) -> None:
    with pytest.raises(NotFound, match="no batch job 999"):
        history.history(conn, Filters(batch_job=999))
    b = Builder(admin)
    _three_quarters(b)
    with pytest.raises(UsageError, match="--bin"):
        history.history(conn, Filters(bin_seconds=0.0001))
    with pytest.raises(UsageError, match="not after its start"):
        history.history(conn, Filters(since=at(50), until=at(10)))
