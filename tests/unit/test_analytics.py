"""Pure parts of the analytics: parsing, windows, ratios, sparklines, tables, payloads."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from balsam_mpi.base.errors import UsageError
from balsam_mpi.reports import render as render
from balsam_mpi.reports.history import BatchJob, Filters, History, Window, ratio, scalar_ratio
from balsam_mpi.reports.timefmt import (
    auto_bin,
    bin_label,
    iso,
    parse_duration,
    parse_time,
    short_duration,
)

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("text, seconds", [
    ("10s", 10), ("5m", 300), ("1.5h", 5400), ("2d", 172800), ("250ms", 0.25), ("30", 30),
    (" 2 min ", 120), ("1w", 604800), ("10S", 10),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "ten", "10 parsecs", "-5s", "0", "1e3s", "s"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(UsageError, match="--bin"):
        parse_duration(text)


def test_parse_time_forms() -> None:
    assert parse_time("2026-01-01T00:00:00Z", "--since") == T0
    assert parse_time("2026-01-01T02:00:00+02:00", "--since") == T0
    assert parse_time("now", "--until", now=NOW) == NOW
    assert parse_time("2h", "--since", now=NOW) == NOW - timedelta(hours=2)
    assert parse_time("-90m", "--since", now=NOW) == NOW - timedelta(minutes=90)
    assert parse_time("1d ago", "--since", now=NOW) == NOW - timedelta(days=1)
    naive = parse_time("2026-01-01T00:00", "--since")
    assert naive.tzinfo is not None  # read as local time
    today = parse_time("today", "--since", now=NOW)
    assert today.astimezone().hour == 0 and today <= NOW


@pytest.mark.parametrize("text", ["yesterday-ish", "2026-13-01", "12:00 tomorrow", ""])
def test_parse_time_rejects(text: str) -> None:
    with pytest.raises(UsageError, match="--since .* is not a time"):
        parse_time(text, "--since")


def test_auto_bin_and_labels() -> None:
    assert auto_bin(100) == 2  # 50 bins
    assert auto_bin(3600) == 60
    assert auto_bin(86400) == 1800
    assert auto_bin(10) == 0.2
    assert auto_bin(10**9) == 604800
    assert [bin_label(x) for x in (10, 60, 90, 3600, 86400, 0.5)] == \
        ["10s", "1m", "90s", "1h", "1d", "0.5s"]
    assert short_duration(None) == "-" and short_duration(float("nan")) == "-"
    assert short_duration(3.25) == "3.2s" and short_duration(245) == "4m05s"
    assert short_duration(7800) == "2h10m" and short_duration(3 * 86400 + 4 * 3600) == "3d4h"
    assert iso(T0) == "2026-01-01T00:00:00Z" and iso(None) is None


def test_window_bins_cover_the_range_with_a_short_last_bin() -> None:
    w = Window(T0, T0 + timedelta(seconds=95), 10.0)
    assert w.nbins == 10
    assert w.lengths().tolist() == [10.0] * 9 + [5.0]
    assert w.start_times()[-1] == T0 + timedelta(seconds=90)
    assert Window(T0, T0 + timedelta(seconds=100), 10.0).nbins == 10


def test_ratio_is_undefined_where_nothing_was_held() -> None:
    out = ratio(np.array([1.0, 0.0, 2.0]), np.array([2.0, 0.0, 2.0]))
    assert out[0] == 0.5 and math.isnan(out[1]) and out[2] == 1.0
    assert scalar_ratio(1.0, 0.0) is None and scalar_ratio(3.0, 4.0) == 0.75


def test_sparkline() -> None:
    assert render.sparkline(np.array([0.0, 0.5, 1.0]), top=1.0) == "▁▅█"
    assert render.sparkline(np.array([np.nan, 1.0]), top=1.0) == " █"
    assert render.sparkline(np.array([0.0, 0.0])) == "▁▁"
    assert len(render.sparkline(np.linspace(0, 1, 1000), top=1.0, width=60)) == 60
    assert render.sparkline(np.array([])) == ""


def test_table_aligns_numbers_right() -> None:
    text = render.table(["name", "n"], [["a", 1], ["bbb", 100]])
    assert text.splitlines() == ["name    n", "a       1", "bbb   100"]


def _history() -> History:
    """By hand: one 2-node job, 2 bins of 10 s, busy 20 then 10 node-seconds."""
    job = BatchJob(7, "local", None, "alice", "h", 2, 2, "FINISHED", None, None, T0, None,
                   T0 + timedelta(seconds=20), None, T0 + timedelta(seconds=20))
    w = Window(T0, T0 + timedelta(seconds=20), 10.0)
    return History(w, [job], busy=np.array([[20.0, 10.0]]), alive=np.array([[20.0, 20.0]]),
                   done=np.array([[1.0, 2.0]]), failed=np.array([[0.0, 1.0]]),
                   first_start=np.array([0.0]), last_end=np.array([15.0]), filters=Filters())


def test_payloads_and_csv_from_a_history() -> None:
    h = _history()
    util = render.utilization_payload(h)
    assert util["utilization"] == 0.75
    assert [s["utilization"] for s in util["series"]] == [1.0, 0.5]
    assert util["series"][1]["busy_nodes"] == 1.0 and util["series"][1]["nodes"] == 2.0
    json.dumps(util)  # serialisable: no NaN, no numpy scalars
    (row,) = util["batch_jobs"]
    assert row["idle_tail_seconds"] == 5.0 and row["first_task_seconds"] == 0.0
    tp = render.throughput_payload(h)
    assert [s["cumulative_done"] for s in tp["series"]] == [1, 3]
    assert tp["done_per_minute"] == pytest.approx(9.0)
    assert render.utilization_csv(h).splitlines()[1].startswith("2026-01-01T00:00:00Z,10.0,")
    assert render.throughput_csv(h).splitlines()[0].endswith("batch_job_7")
    assert "75.0%" in render.utilization_text(h) and "75.0%" in render.jobs_text(h)
    assert "3 run(s) done, 1 failed" in render.throughput_text(h)


def test_stage_stats_from_a_histogram() -> None:
    from balsam_mpi.reports.tables import stage_stats

    # two values in buckets of their own: exact, like percentile_cont
    exact = stage_stats(np.array([[60.0, 1, 13.0, 13.0, 13.0], [74.0, 1, 26.0, 26.0, 26.0]]))
    assert exact["p50"] == pytest.approx(19.5) and exact["mean"] == pytest.approx(19.5)
    assert (exact["count"], exact["max"]) == (2, 26.0)
    # many values: percentiles within a bucket's width (12%) of the exact ones
    rng = np.random.default_rng(8)
    values = rng.lognormal(mean=2.0, sigma=1.0, size=20_000)
    buckets = 1 + np.floor(20 * np.log10(values * 1000)).astype(int)
    rows = [[b, (buckets == b).sum(), values[buckets == b].sum(), values[buckets == b].min(),
             values[buckets == b].max()] for b in np.unique(buckets)]
    approx = stage_stats(np.array(rows, dtype=np.float64))
    assert approx["mean"] == pytest.approx(values.mean())
    for q, key in ((50, "p50"), (90, "p90"), (99, "p99")):
        assert approx[key] == pytest.approx(np.percentile(values, q), rel=0.12)
