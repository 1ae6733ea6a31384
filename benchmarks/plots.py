"""PNG figures of the scenarios (matplotlib, headless). One figure per scenario, written
beside its JSON as ``<scenario>-latest.png`` (a timestamped PNG per run would pile up)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_path(out: Path, scenario: str) -> Path:
    return out / f"{scenario}-latest.png"


def plot_sweep(path: Path, title: str, xlabel: str, xs: Sequence[float],
               series: Mapping[str, Sequence[float]], ceiling: float | None = None,
               ceiling_label: str = "", ylabel: str = "tasks/s", logx: bool = False) -> Path:
    """Lines of medians against a swept parameter, with the same-run ceiling dashed."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, ys in series.items():
        ax.plot(xs, ys, marker="o", label=label)
    if ceiling is not None:
        ax.axhline(ceiling, linestyle="--", color="grey", label=ceiling_label)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_timelines(path: Path, title: str, panels: dict[str, list[list[float]]],
                   slots: int) -> Path:
    """Busy slots over time for each panel (from raw per-task [start, end] pairs)."""
    import numpy as np

    plt = _pyplot()
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.2 * len(panels)), squeeze=False)
    for ax, (label, times) in zip(axes[:, 0], panels.items(), strict=True):
        if times:
            arr = np.array(times)
            edges = np.concatenate([arr[:, 0], arr[:, 1]])
            steps = np.concatenate([np.ones(len(arr)), -np.ones(len(arr))])
            order = np.argsort(edges, kind="stable")
            ax.step(edges[order], np.cumsum(steps[order]), where="post", lw=0.8)
        ax.axhline(slots, linestyle="--", color="grey", lw=0.8)
        ax.set_ylabel("busy slots")
        ax.set_title(label, fontsize=9)
        ax.set_ylim(0, slots * 1.1)
    axes[-1, 0].set_xlabel("seconds after the first start")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_projection(path: Path, title: str, durations: Sequence[float],
                    series: Mapping[str, Sequence[float]], measured: dict[str, Any] | None = None
                    ) -> Path:
    """Projected utilization against task duration (log x), measured points overlaid."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, ys in series.items():
        ax.plot(durations, ys, marker="o", label=label)
    if measured:
        ax.scatter(measured["x"], measured["y"], marker="x", color="black", zorder=5,
                   label=measured.get("label", "measured"))
    ax.set_xscale("log")
    ax.set_xlabel("task duration (s)")
    ax.set_ylabel("utilization")
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
