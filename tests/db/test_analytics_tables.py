"""Usage per user and workflow, latency per stage, failure groups, the batch-job list."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from balsam_mpi.reports import tables as tables
from balsam_mpi.reports.history import Filters

from . import test_analytics_build as build
from .test_analytics_build import Builder, at

Conn = psycopg.Connection[Any]
admin = build.admin  # the fixture that writes histories as the database superuser


def test_usage_splits_by_job_user_and_by_owner(conn: Conn, admin: Conn) -> None:
    b = Builder(admin)
    alice_job = b.job(2, 0, 3600, user="alice")
    bob_job = b.job(1, 0, 3600, user="bob")
    # alice's allocation runs 1 node-hour of bob's work and 0.5 of her own
    b.finished_task(alice_job, 0, 3600, owner="bob", workflow="sweep")
    b.finished_task(alice_job, 0, 1800, owner="alice", workflow="sweep")
    # bob's allocation runs 0.25 node-hour of alice's work (two half-node tasks, 30 min)
    b.finished_task(bob_job, 0, 1800, owner="alice", workflow="post", packing=2)
    b.finished_task(bob_job, 0, 1800, owner="alice", workflow="post", packing=2)
    _, rows = tables.usage(conn, Filters())
    summary = tables.usage_summary(rows)
    by_job_user = {r["job_user"]: r["busy_node_hours"] for r in summary["by_job_user"]}
    by_owner = {r["owner"]: r["busy_node_hours"] for r in summary["by_owner"]}
    by_workflow = {r["workflow"]: (r["busy_node_hours"], r["done"])
                   for r in summary["by_workflow"]}
    pairs = {(r["job_user"], r["owner"]): r["busy_node_hours"]
             for r in summary["by_job_user_and_owner"]}
    assert by_job_user == pytest.approx({"alice": 1.5, "bob": 0.5})
    assert by_owner == pytest.approx({"alice": 1.0, "bob": 1.0})
    assert by_workflow["sweep"] == pytest.approx((1.5, 2))
    assert by_workflow["post"] == pytest.approx((0.5, 2))
    assert pairs == pytest.approx({("alice", "bob"): 1.0, ("alice", "alice"): 0.5,
                                   ("bob", "alice"): 0.5})


def test_latency_stages(conn: Conn, admin: Conn) -> None:
    b = Builder(admin)
    job = b.job(1, 0, 100, submitted=-40)
    for i, (ready, claimed, start, end) in enumerate([(0, 2, 3, 13), (0, 4, 6, 26)]):
        tid = b.task(state="JOB_FINISHED", job=job, claimed=claimed, started=start,
                     ended=end, workflow=f"w{i}")
        b.event(tid, "CREATED", "READY", ready)
        b.run(tid, job, start, end)
    result = tables.latency(conn, Filters())
    stages = {s["stage"]: s for s in result["stages"]}
    assert stages["ready_to_claimed"]["mean"] == pytest.approx(3)
    assert stages["claimed_to_running"]["mean"] == pytest.approx(1.5)
    assert stages["running_to_done"]["mean"] == pytest.approx(15)
    assert stages["running_to_done"]["max"] == pytest.approx(20)
    assert stages["ready_to_done"]["p50"] == pytest.approx(19.5)
    assert stages["batch_job_queued_to_started"]["mean"] == pytest.approx(40)
    assert all(s["count"] == 2 for s in result["stages"][:4])


def test_failures_grouped(conn: Conn, admin: Conn) -> None:
    b = Builder(admin)
    j1 = b.job(1, 0, 100, host="nid001")
    j2 = b.job(1, 0, 100, host="nid002")
    tail = "\n  ValueError: bad input\nTraceback (most recent call last):\n  ...\n"
    for _ in range(3):
        b.task(state="RUN_ERROR", app="sim", exit_code=1, tail=tail, job=j1, ended=10)
    b.task(state="FAILED", app="sim", exit_code=1, tail=tail, job=j1, ended=20)
    b.task(state="RUN_ERROR", app="sim", exit_code=1, tail=tail, job=j2, ended=30)
    b.task(state="RUN_TIMEOUT", app="post", exit_code=None, tail="", job=j2, ended=40)
    b.task(state="JOB_FINISHED", app="sim", exit_code=0, job=j1, ended=50)
    result = tables.failures(conn, Filters())
    groups = [(g["tasks"], g["app"], g["state"], g["exit_code"], g["host"], g["first_line"])
              for g in result["groups"]]
    assert groups == [
        (3, "sim", "RUN_ERROR", 1, "nid001", "ValueError: bad input"),
        (1, "post", "RUN_TIMEOUT", None, "nid002", ""),
        (1, "sim", "FAILED", 1, "nid001", "ValueError: bad input"),
        (1, "sim", "RUN_ERROR", 1, "nid002", "ValueError: bad input"),
    ]
    assert result["failed_tasks"] == 6
    assert len(result["groups"][0]["example_ids"]) == 3
    only_j2 = tables.failures(conn, Filters(batch_job=j2))
    assert only_j2["failed_tasks"] == 2
    late = tables.failures(conn, Filters(since=at(25)))
    assert late["failed_tasks"] == 2


def test_python_failures_are_grouped_by_their_exception(conn: Conn, admin: Conn) -> None:
    """Every Python traceback begins with the same line: the groups are by the exception
    (the last, when one was raised while handling another)."""
    b = Builder(admin)
    job = b.job(1, 0, 100, host="nid001")
    frames = 'Traceback (most recent call last):\n  File "m.py", line 3, in f\n    g()\n'
    value = frames + "ValueError: bad x\n  (more of the message)\n"
    memory = "warming up\n" + frames + "MemoryError\n"
    chained = (frames + "KeyError: 'k'\n\nDuring handling of the above exception, another "
               "exception occurred:\n\n" + frames + "RuntimeError: no k\n")
    for tail in (value, value, memory, chained):
        b.task(state="FAILED", app="py", exit_code=1, tail=tail, job=job, ended=10)
    groups = [(g["tasks"], g["first_line"]) for g in tables.failures(conn, Filters())["groups"]]
    assert groups == [(2, "ValueError: bad x"), (1, "MemoryError"), (1, "RuntimeError: no k")]


def test_list_jobs(conn: Conn, admin: Conn) -> None:
    b = Builder(admin)
    done = b.job(2, 0, 100, user="alice")
    running = b.job(4, 50, None, state="RUNNING", heartbeat=60, user="bob",
                    scheduler_job_id="123.pbs")
    b.task(state="RUNNING", job=running)
    rows = tables.list_jobs(conn)
    assert [r["id"] for r in rows] == [running, done]
    assert rows[0]["running_tasks"] == 1 and rows[0]["scheduler_job_id"] == "123.pbs"
    assert [r["id"] for r in tables.list_jobs(conn, state="FINISHED")] == [done]
    assert [r["id"] for r in tables.list_jobs(conn, user="bob")] == [running]
    assert len(tables.list_jobs(conn, limit=1)) == 1
