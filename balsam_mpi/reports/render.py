"""Report payloads (the `--json` shape), CSV rows, text tables and sparklines."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .history import FloatArray, History
from .timefmt import bin_label, iso, short_duration, short_time

_BARS = "▁▂▃▄▅▆▇█"
SPARK_WIDTH = 60


def _num(value: float) -> float | None:
    """JSON has no NaN: undefined values (no nodes held) are null."""
    return None if value is None or math.isnan(value) else float(value)


# ---- payloads ---------------------------------------------------------------------------


def _header(h: History, report: str) -> dict[str, Any]:
    return {"report": report, "since": iso(h.window.t0), "until": iso(h.window.t1),
            "bin_seconds": h.window.width}


def utilization_payload(h: History) -> dict[str, Any]:
    busy, alive = h.total_busy(), h.total_alive()
    util, per_job = h.utilization_series(), h.job_utilization_series()
    lengths = h.window.lengths()
    series = []
    for b, start in enumerate(h.window.start_times()):
        series.append({
            "start": iso(start), "seconds": float(lengths[b]),
            "busy_nodes": float(busy[b] / lengths[b]), "nodes": float(alive[b] / lengths[b]),
            "utilization": _num(util[b]),
            "batch_jobs": {str(j.id): _num(per_job[i, b]) for i, j in enumerate(h.jobs)},
        })
    return {**_header(h, "utilization"), "utilization": h.utilization(),
            "busy_node_hours": float(busy.sum()) / 3600.0,
            "node_hours": float(alive.sum()) / 3600.0,
            "batch_jobs": h.job_rows(), "series": series}


def throughput_payload(h: History) -> dict[str, Any]:
    done, failed = h.total_done(), h.total_failed()
    cumulative = np.cumsum(done)
    lengths = h.window.lengths()
    series = []
    for b, start in enumerate(h.window.start_times()):
        series.append({
            "start": iso(start), "seconds": float(lengths[b]), "done": int(done[b]),
            "failed": int(failed[b]), "cumulative_done": int(cumulative[b]),
            "done_per_minute": float(done[b] * 60.0 / lengths[b]),
            "batch_jobs": {str(j.id): int(h.done[i, b]) for i, j in enumerate(h.jobs)},
        })
    span = h.window.span
    return {**_header(h, "throughput"), "done": int(done.sum()), "failed": int(failed.sum()),
            "done_per_minute": float(done.sum() * 60.0 / span) if span > 0 else None,
            "utilization": h.utilization(), "series": series}


def jobs_payload(h: History) -> dict[str, Any]:
    return {**_header(h, "jobs"), "utilization": h.utilization(), "batch_jobs": h.job_rows()}


# ---- CSV --------------------------------------------------------------------------------


def utilization_csv(h: History) -> str:
    per_job = h.job_utilization_series()
    header = ["start", "seconds", "busy_nodes", "nodes", "utilization",
              *[f"batch_job_{j.id}" for j in h.jobs]]
    rows = []
    for b, item in enumerate(utilization_payload(h)["series"]):
        rows.append([item["start"], item["seconds"], item["busy_nodes"], item["nodes"],
                     item["utilization"], *[_num(per_job[i, b]) for i in range(len(h.jobs))]])
    return to_csv(header, rows)


def throughput_csv(h: History) -> str:
    header = ["start", "seconds", "done", "failed", "cumulative_done", "done_per_minute",
              *[f"batch_job_{j.id}" for j in h.jobs]]
    rows = [[s["start"], s["seconds"], s["done"], s["failed"], s["cumulative_done"],
             s["done_per_minute"], *s["batch_jobs"].values()]
            for s in throughput_payload(h)["series"]]
    return to_csv(header, rows)


def dicts_csv(items: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    columns = list(columns or (items[0].keys() if items else []))
    return to_csv(columns, [[item.get(c) for c in columns] for item in items])


def to_csv(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])
    return out.getvalue()


# ---- text -------------------------------------------------------------------------------


def sparkline(values: FloatArray, *, top: float | None = None, width: int = SPARK_WIDTH) -> str:
    """One character per bin (bins averaged down to `width`); blank where undefined."""
    vals = np.asarray(values, dtype=np.float64)
    if vals.size == 0:
        return ""
    if vals.size > width:
        groups = np.array_split(vals, width)
        vals = np.array([np.nan if np.isnan(g).all() else np.nanmean(g) for g in groups])
    finite = vals[~np.isnan(vals)]
    scale = top if top is not None else (float(finite.max()) if finite.size else 0.0)
    chars = []
    for v in vals:
        if math.isnan(v):
            chars.append(" ")
        elif scale <= 0:
            chars.append(_BARS[0])
        else:
            level = int(round(min(max(v / scale, 0.0), 1.0) * (len(_BARS) - 1)))
            chars.append(_BARS[level])
    return "".join(chars)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to width; numbers right-aligned."""
    cells = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    right = [bool(rows) and all(isinstance(r[i], int | float) or r[i] is None for r in rows)
             for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if r else v.ljust(w)
                         for v, w, r in zip(values, widths, right, strict=True)).rstrip()

    return "\n".join([line(list(headers)), *[line(r) for r in cells]])


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        # small figures (a short run's node-hours) keep two significant digits
        return f"{value:.2g}" if 0 < abs(value) < 0.01 else f"{value:.2f}"
    return str(value)


def pct(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{100.0 * value:.1f}%"


def utilization_text(h: History) -> str:
    overall = h.utilization()
    busy_h = float(h.busy.sum()) / 3600.0
    held_h = float(h.alive.sum()) / 3600.0
    lines = [
        f"utilization {pct(overall)}: {busy_h:.3g} of {held_h:.3g} node-hours busy, "
        f"{len(h.jobs)} batch job(s), {_range(h)}, bin {bin_label(h.window.width)}",
    ]
    if not h.jobs:
        return lines[0] + "\n(no batch job ran in this range)"
    per_job = h.job_utilization_series()
    rows: list[list[Any]] = []
    for i, job in zip(range(len(h.jobs)), h.job_rows(), strict=True):
        rows.append([job["id"], job["user"], job["nodes"], job["busy_node_hours"],
                     pct(job["utilization"]), "|" + sparkline(per_job[i], top=1.0) + "|"])
    rows.append(["total", "", _max_nodes(h), busy_h, pct(overall),
                 "|" + sparkline(h.utilization_series(), top=1.0) + "|"])
    lines.append(table(["job", "user", "nodes", "busy node-h", "util", "over time (0-100%)"],
                       rows))
    return "\n".join(lines)


def _range(h: History) -> str:
    return f"{short_time(h.window.t0)} to {short_time(h.window.t1)} UTC"


def _max_nodes(h: History) -> int:
    lengths = h.window.lengths()
    held = h.total_alive() / np.where(lengths > 0, lengths, 1.0)
    return int(round(float(held.max()))) if held.size else 0


def throughput_text(h: History) -> str:
    p = throughput_payload(h)
    rate = p["done_per_minute"]
    lines = [f"{p['done']} run(s) done, {p['failed']} failed, "
             f"{rate:.3g}/min overall, {_range(h)}, bin {bin_label(h.window.width)}"
             if rate is not None else "nothing ran"]
    if not h.jobs:
        return lines[0]
    rows: list[list[Any]] = []
    lengths = h.window.lengths()
    for i, job in enumerate(h.jobs):
        rate_i = h.done[i] * 60.0 / lengths
        rows.append([job.id, job.user, int(h.done[i].sum()), int(h.failed[i].sum()),
                     "|" + sparkline(rate_i) + "|"])
    total_rate = h.total_done() * 60.0 / lengths
    rows.append(["total", "", p["done"], p["failed"], "|" + sparkline(total_rate) + "|"])
    peak = float(total_rate.max()) if total_rate.size else 0.0
    lines.append(table(["job", "user", "done", "failed", f"done/min (peak {peak:.3g})"], rows))
    return "\n".join(lines)


def jobs_text(h: History) -> str:
    rows = [[r["id"], r["user"], r["state"], r["nodes"], short_duration(r["wall_seconds"]),
             r["busy_node_hours"], pct(r["utilization"]), r["done"], r["failed"],
             short_duration(r["queue_seconds"]), short_duration(r["first_task_seconds"]),
             short_duration(r["idle_tail_seconds"]), r["host"] or "-"]
            for r in h.job_rows()]
    if not rows:
        return "no batch job ran in this range"
    head = f"utilization {pct(h.utilization())} over {len(rows)} batch job(s)"
    return head + "\n" + table(
        ["job", "user", "state", "nodes", "wall", "busy node-h", "util", "done", "failed",
         "queued", "to 1st task", "idle tail", "host"], rows)
