"""The sweep's plots: final val/acc against an axis and the learning curves, with 95% t
interval error bars over seeds (written next to the tables by :func:`cepo.sweep.report.write_results`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from cepo.sweep.grid import Axis, Grid, Point, slugify
from cepo.sweep.run import ACC, RunResult
from cepo.sweep.stats import Summary, summarize


def x_axis(axes: Sequence[Axis]) -> Axis | None:
    """The first numeric non-seed axis, else the first non-seed axis (None: seeds only)."""
    others = [a for a in axes if not a.is_seed]
    numeric = [a for a in others if a.is_numeric]
    return (numeric or others or [None])[0]


def _half_width(summary: Summary) -> float:
    """The error bar: half the 95% interval (0 where it is undefined: one seed)."""
    half = summary.half_width
    return 0.0 if math.isnan(half) else half


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figure(plt, n_series: int):
    """A figure with one distinct colour per series; the legend goes to the right past 8 series."""
    wide = n_series > 8
    fig, ax = plt.subplots(figsize=(9.6 if wide else 6.4, 4.2))
    cmap = plt.get_cmap("tab10" if n_series <= 10 else "tab20")
    ax.set_prop_cycle(color=[cmap(i % cmap.N) for i in range(max(n_series, 1))])
    return fig, ax


def _legend(ax, n_series: int) -> None:
    if n_series > 8:
        ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend(fontsize="x-small")


def _series_label(point: Point, axes: Sequence[Axis]) -> str:
    return ", ".join(
        point.labels[a.short] if a.kind == "config" else f"{a.short}={point.labels[a.short]}" for a in axes
    )


def plot_acc_vs_axis(out_dir: Path, grid: Grid, points: list[Point], results: dict[int, RunResult]) -> Path | None:
    """Final val/acc against the x axis, one line per setting of the other non-seed axes, with
    error bars over seeds (the 95% Student t interval of the mean; none with one seed). Ticks
    are evenly spaced (numeric values sorted; ``inf`` last)."""
    xa = x_axis(grid.axes)
    if xa is None:
        return None
    line_axes = [a for a in grid.axes if a is not xa and not a.is_seed]
    ticks = list(dict.fromkeys(p.labels[xa.short] for p in points))
    if xa.is_numeric:
        order = {p.labels[xa.short]: p.values[xa.short] for p in points}
        ticks.sort(key=lambda t: order[t])
    lines: dict[str, dict[str, list[float]]] = {}
    for p in points:
        series = lines.setdefault(_series_label(p, line_axes), {t: [] for t in ticks})
        acc = results[p.index].final.get(ACC)
        if results[p.index].status == "ok" and acc is not None:
            series[p.labels[xa.short]].append(acc)
    plt = _pyplot()
    fig, ax = _figure(plt, len(lines))
    for label, series in lines.items():
        stats = [summarize(series[t]) for t in ticks]
        ax.errorbar(
            range(len(ticks)),
            [s.mean for s in stats],
            yerr=[_half_width(s) for s in stats],
            marker="o",
            capsize=3,
            label=label or None,
        )
    ax.set_xticks(range(len(ticks)), ticks)
    ax.set_xlabel(xa.key)
    ax.set_ylabel("final val/acc")
    seeds = " (mean, 95% t CI over seeds)" if any(a.is_seed for a in grid.axes) else ""
    ax.set_title(f"{grid.name}{seeds}", fontsize="medium")
    if any(lines):
        _legend(ax, len(lines))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out_dir / f"acc_vs_{slugify(xa.short)}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_learning_curves(out_dir: Path, grid: Grid, points: list[Point], results: dict[int, RunResult]) -> Path | None:
    """val/acc against step: one line per point, or per setting of the non-seed axes (mean
    over seeds, shaded over its 95% Student t interval) when the grid has a seed axis."""
    by_seed = any(a.is_seed for a in grid.axes)
    label_axes = [a for a in grid.axes if not a.is_seed] if by_seed else list(grid.axes)
    curves: dict[str, dict[int, list[float]]] = {}
    for p in points:
        if results[p.index].status != "ok":
            continue
        steps = curves.setdefault(_series_label(p, label_axes) or grid.name, {})
        for step, acc in results[p.index].curve:
            steps.setdefault(step, []).append(acc)
    if not curves:
        return None
    plt = _pyplot()
    fig, ax = _figure(plt, len(curves))
    for label, steps in curves.items():
        xs = sorted(steps)
        stats = [summarize(steps[s]) for s in xs]
        means = [s.mean for s in stats]
        (line,) = ax.plot(xs, means, marker=".", label=label)
        if by_seed:
            lo = [s.mean - _half_width(s) for s in stats]
            hi = [s.mean + _half_width(s) for s in stats]
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15)
    ax.set_xlabel("step")
    ax.set_ylabel("val/acc")
    title = f"{grid.name}: held-out accuracy" + (" (mean, 95% t CI over seeds)" if by_seed else "")
    ax.set_title(title, fontsize="medium")
    _legend(ax, len(curves))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out_dir / "learning_curves.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
