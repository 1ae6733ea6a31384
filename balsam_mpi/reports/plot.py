"""PNG plots with matplotlib, an optional extra (`pip install 'balsam_mpi[plot]'`).

matplotlib is imported only when a plot is asked for, with the non-interactive Agg
backend, so reports work on login nodes without a display or without matplotlib.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..base.errors import UsageError
from .history import FloatArray, History
from .timefmt import bin_label

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

MISSING = ("--png needs matplotlib, which is not installed: "
           "pip install 'balsam_mpi[plot]' (or pip install matplotlib)")


def _figure(width: float = 10.0, height: float = 5.0) -> tuple[Figure, Axes]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError(MISSING) from None
    fig = Figure(figsize=(width, height), dpi=110)
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig: Figure, path: str | Path) -> Path:
    out = Path(path)
    try:
        fig.tight_layout()
        # A PNG whatever the name: from the name matplotlib would add ".png" to one
        # without a suffix (writing a file other than the one named) and refuse others.
        fig.savefig(out, format="png")
    except OSError as exc:
        raise UsageError(f"cannot write {out}: {exc.strerror or exc}") from None
    return out


def _edges(h: History) -> list[datetime]:
    """Bin edges as UTC datetimes, for step plots (one more than bins)."""
    t0 = h.window.t0.astimezone(UTC)
    ends = [t0 + timedelta(seconds=float(e)) for e in h.window.ends()]
    return [t0, *ends]


def _steps(ax: Axes, edges: list[datetime], values: FloatArray, **style: Any) -> None:
    ax.stairs(values, edges, baseline=None, **style)  # type: ignore[arg-type]


def _time_axis(ax: Axes, h: History) -> None:
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator(tz=UTC)  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_locator(locator)
    formatter = mdates.ConciseDateFormatter(locator, tz=UTC)  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_formatter(formatter)
    ax.set_xlabel("time (UTC)")
    ax.set_xlim(h.window.t0, h.window.t1)  # type: ignore[arg-type]
    ax.grid(True, alpha=0.3)


def plot_utilization(h: History, path: str | Path) -> Path:
    fig, ax = _figure()
    edges = _edges(h)
    per_job = h.job_utilization_series() * 100.0
    for i, job in enumerate(h.jobs):
        _steps(ax, edges, per_job[i], linewidth=1.5, alpha=0.9,
               label=f"batch job {job.id} ({job.user}, {job.nodes} nodes)")
    _steps(ax, edges, h.utilization_series() * 100.0, linewidth=2.0, color="black",
           linestyle="--", label="total")
    overall = h.utilization()
    ax.set_title(f"Node utilization: {'-' if overall is None else f'{100 * overall:.1f}%'} "
                 f"overall, bin {bin_label(h.window.width)}")
    ax.set_ylabel("busy nodes (% of nodes held)")
    ax.set_ylim(0, 105)
    _time_axis(ax, h)
    ax.legend(loc="best", fontsize="small", framealpha=0.8)
    return _save(fig, path)


def plot_throughput(h: History, path: str | Path) -> Path:
    fig, ax = _figure()
    edges = _edges(h)
    minutes = h.window.lengths() / 60.0
    for i, job in enumerate(h.jobs):
        _steps(ax, edges, h.done[i] / minutes, linewidth=1.5, alpha=0.9,
               label=f"batch job {job.id} ({job.user})")
    _steps(ax, edges, h.total_done() / minutes, linewidth=2.0, color="black",
           linestyle="--", label="total")
    ax.set_ylabel("runs done per minute")
    ax.set_ylim(bottom=0)
    cumulative = ax.twinx()
    cumulative.plot(edges[1:], np.cumsum(h.total_done()),  # type: ignore[arg-type]
                    color="tab:gray", linestyle="--",
                    label="cumulative (right axis)")
    cumulative.set_ylabel("runs done, cumulative")
    cumulative.set_ylim(bottom=0)
    ax.set_title(f"Throughput: {int(h.total_done().sum())} runs done, "
                 f"{int(h.total_failed().sum())} failed, bin {bin_label(h.window.width)}")
    _time_axis(ax, h)
    lines, labels = ax.get_legend_handles_labels()
    more, more_labels = cumulative.get_legend_handles_labels()
    ax.legend(lines + more, labels + more_labels, loc="best", fontsize="small",
              framealpha=0.8)
    return _save(fig, path)


def plot_jobs(h: History, path: str | Path) -> Path:
    rows = h.job_rows()
    fig, ax = _figure(max(6.0, 0.5 * len(rows) + 3.0), 5.0)
    labels = [f"{r['id']}\n{r['user']}" for r in rows]
    values = [100.0 * (r["utilization"] or 0.0) for r in rows]
    ax.bar(range(len(rows)), values, color="tab:blue")
    ax.set_xticks(range(len(rows)), labels, fontsize="small")
    ax.set_xlabel("batch job (id, user)")
    ax.set_ylabel("utilization (% of node-hours busy)")
    ax.set_ylim(0, 105)
    overall = h.utilization()
    ax.set_title("Utilization per batch job"
                 + ("" if overall is None else f" ({100 * overall:.1f}% overall)"))
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


def plot_failures(groups: list[dict[str, Any]], path: str | Path, top: int = 15) -> Path:
    shown = groups[:top][::-1]
    fig, ax = _figure(10.0, max(3.0, 0.4 * len(shown) + 1.5))
    labels = [f"{g['app']} {g['state']} rc={g['exit_code']} {g['host']}: "
              f"{(g['first_line'] or '')[:40]}" for g in shown]
    ax.barh(range(len(shown)), [g["tasks"] for g in shown], color="tab:red")
    ax.set_yticks(range(len(shown)), labels, fontsize="small")
    ax.set_xlabel("failed tasks")
    ax.set_title(f"Failures by app, state, exit code, host and first output line "
                 f"(top {len(shown)})")
    ax.grid(True, axis="x", alpha=0.3)
    return _save(fig, path)
