"""Results: the CSV and Markdown tables (mean ± std over seeds) and the plots."""

from __future__ import annotations

import csv
import math
import re
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cepo.sweep.grid import Axis, Grid, Point, cli_value, slugify
from cepo.sweep.run import ACC, RunResult

BEST_ACC = "best val/acc"
BASE_ACC = "base val/acc"
_SAMPLED = re.compile(r"^val/(avg|pass)@\d+$")


# -- results ----------------------------------------------------------------------------
def metric_columns(results: Sequence[RunResult]) -> list[str]:
    """val/acc, best val/acc, base val/acc (if any), then every val/avg@k and val/pass@k."""
    sampled = sorted(
        {k for r in results for k in r.final if _SAMPLED.match(k)},
        key=lambda k: (k.split("@")[0], int(k.split("@")[1])),
    )
    base = [BASE_ACC] if any(r.base for r in results) else []
    return [ACC, BEST_ACC, *base, *sampled]


def result_row(point: Point, result: RunResult, columns: list[str]) -> dict[str, Any]:
    """One results table row: slug, axis labels, status, metrics, rl steps, wall time."""
    metrics = {
        ACC: result.final.get(ACC),
        BEST_ACC: result.best_acc if result.status == "ok" else None,
        BASE_ACC: (result.base or {}).get(ACC),
        **{k: v for k, v in result.final.items() if _SAMPLED.match(k)},
    }
    return {
        "slug": point.slug,
        **point.labels,
        "status": result.status,
        **{c: metrics.get(c) for c in columns},
        "rl_steps": result.rl_steps,
        "wall_s": None if result.wall_time is None else round(result.wall_time, 1),
        "error": result.error if result.status != "ok" else None,
    }


def group_key(point: Point, axes: Sequence[Axis]) -> tuple[str, ...]:
    """The labels of the non-seed axes: points that differ only in seed share it."""
    return tuple(point.labels[a.short] for a in axes if not a.is_seed)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for fewer than two values; NaN for none)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(
    points: Sequence[Point], results: dict[int, RunResult], axes: Sequence[Axis], columns: list[str]
) -> list[dict[str, Any]]:
    """Mean ± std over seeds of every metric column, one row per setting of the other axes."""
    groups: dict[tuple[str, ...], list[Point]] = {}
    for p in points:
        groups.setdefault(group_key(p, axes), []).append(p)
    names = [a.short for a in axes if not a.is_seed]
    rows = []
    for key, members in groups.items():
        done = [result_row(p, results[p.index], columns) for p in members if results[p.index].status == "ok"]
        row: dict[str, Any] = dict(zip(names, key))
        row["seeds"] = f"{len(done)}/{len(members)}"
        for col in columns:
            row[col] = mean_std([r[col] for r in done if r[col] is not None])
        rows.append(row)
    return rows


def _cell(value: Any, column: str) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, tuple):
        mean, std = value
        return "n/a" if math.isnan(mean) else f"{mean:.3f} ± {std:.3f}"
    if isinstance(value, float):
        return f"{value:.1f}" if column == "wall_s" else f"{value:.3f}"
    text = str(value).replace("|", "\\|")
    return text if len(text) <= 160 else text[:157] + "..."


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """A GitHub markdown table of ``rows`` (the first row's keys are the columns)."""
    if not rows:
        return ""
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_cell(r.get(c), c) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)


def _flat_agg(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in row.items():
        if isinstance(v, tuple):
            out[f"{k} mean"], out[f"{k} std"] = v
        else:
            out[k] = v
    return out


def write_results(out_dir: Path, grid: Grid, points: list[Point], results: dict[int, RunResult]) -> list[Path]:
    """Write results.csv, results.md (+ results_by_seed.csv) and the plots; return the paths."""
    columns = metric_columns(list(results.values()))
    rows = [result_row(p, results[p.index], columns) for p in points]
    written = [out_dir / "results.csv", out_dir / "results.md"]
    write_csv(written[0], rows)
    base = ", ".join(f"`{p.name}`" for p in grid.base) or "none"
    fixed = ", ".join(f"`{k}={cli_value(v)}`" for k, v in grid.fixed.items()) or "none"
    md = [f"# sweep `{grid.name}`\n\n- points: {len(points)}\n- base configs: {base}\n- fixed: {fixed}\n"]
    md += ["\n## Every point\n\n", markdown_table(rows)]
    failed = [p for p in points if results[p.index].status != "ok"]
    if failed:
        md += [f"\n## Failed points ({len(failed)})\n\nRe-run the same command to resume them.\n"]
        for p in failed:
            tail = "\n".join(results[p.index].log_tail) or "(no log)"
            md += [f"\n### {p.slug}\n\nLast lines of `{p.slug}/stdout.log`:\n\n```text\n{tail}\n```\n"]
    if any(a.is_seed for a in grid.axes):
        agg = aggregate(points, results, grid.axes, columns)
        md += ["\n## Mean ± std over seeds\n\n", markdown_table(agg)]
        write_csv(out_dir / "results_by_seed.csv", [_flat_agg(r) for r in agg])
        written.append(out_dir / "results_by_seed.csv")
    (out_dir / "results.md").write_text("".join(md))
    for plot in (plot_acc_vs_axis, plot_learning_curves):
        path = plot(out_dir, grid, points, results)
        if path is not None:
            written.append(path)
    return written


# -- plots ------------------------------------------------------------------------------
def x_axis(axes: Sequence[Axis]) -> Axis | None:
    """The first numeric non-seed axis, else the first non-seed axis (None: seeds only)."""
    others = [a for a in axes if not a.is_seed]
    numeric = [a for a in others if a.is_numeric]
    return (numeric or others or [None])[0]


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
    error bars over seeds. Ticks are evenly spaced (numeric values sorted; ``inf`` last)."""
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
        stats = [mean_std(series[t]) for t in ticks]
        ax.errorbar(
            range(len(ticks)),
            [m for m, _ in stats],
            yerr=[s for _, s in stats],
            marker="o",
            capsize=3,
            label=label or None,
        )
    ax.set_xticks(range(len(ticks)), ticks)
    ax.set_xlabel(xa.key)
    ax.set_ylabel("final val/acc")
    seeds = " (mean ± std over seeds)" if any(a.is_seed for a in grid.axes) else ""
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
    over seeds, shaded ± std) when the grid has a seed axis."""
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
        stats = [mean_std(steps[s]) for s in xs]
        means = [m for m, _ in stats]
        (line,) = ax.plot(xs, means, marker=".", label=label)
        if by_seed:
            lo = [m - s for m, s in stats]
            hi = [m + s for m, s in stats]
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15)
    ax.set_xlabel("step")
    ax.set_ylabel("val/acc")
    ax.set_title(f"{grid.name}: held-out accuracy" + (" (mean ± std over seeds)" if by_seed else ""), fontsize="medium")
    _legend(ax, len(curves))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out_dir / "learning_curves.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
