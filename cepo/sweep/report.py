"""Results: the CSV and Markdown tables (mean ± std and 95% t intervals over seeds, tests
against a baseline point), and the plots (``cepo.sweep.plots``, with 95% interval error bars)."""

from __future__ import annotations

import csv
import math
import re
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cepo.sweep.grid import Axis, Grid, Point, cli_value, expand
from cepo.sweep.plots import plot_acc_vs_axis, plot_learning_curves, x_axis  # noqa: F401 (report's names)
from cepo.sweep.run import ACC, RunResult
from cepo.sweep.stats import Comparison, Summary, compare, summarize

BEST_ACC = "best val/acc"
BASE_ACC = "base val/acc"
CI = "95% CI"
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
    """Mean, std, n and 95% t interval (a :class:`Summary`) over seeds of every metric column,
    one row per setting of the other axes."""
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
            row[col] = summarize([r[col] for r in done if r[col] is not None])
        rows.append(row)
    return rows


def _cell(value: Any, column: str) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, Summary):
        return "n/a" if math.isnan(value.mean) else f"{value.mean:.3f} ± {value.std:.3f}"
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


def _same_columns(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every row with the union of the rows' columns (first-seen order), blank where missing."""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    return [{c: r.get(c) for c in cols} for r in rows]


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    rows = _same_columns(rows)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)


def _flat_agg(row: dict[str, Any]) -> dict[str, Any]:
    """A CSV row: each metric's mean, std, n and 95% interval in columns of their own."""
    out = {}
    for k, v in row.items():
        if isinstance(v, Summary):
            out[f"{k} mean"], out[f"{k} std"], out[f"{k} n"] = v.mean, v.std, v.n
            out[f"{k} {CI} lo"], out[f"{k} {CI} hi"] = _num(v.lo), _num(v.hi)
        elif isinstance(v, tuple):
            out[f"{k} mean"], out[f"{k} std"] = v
        else:
            out[k] = v
    return out


def _num(x: float) -> float | None:
    """NaN as a blank CSV cell; inf stays ``inf``."""
    return None if math.isnan(x) else x


def _interval(lo: float, hi: float, signed: bool = False) -> str:
    if math.isnan(lo) or math.isnan(hi):
        return "n/a"
    return f"[{lo:+.3f}, {hi:+.3f}]" if signed else f"[{lo:.3f}, {hi:.3f}]"


def _md_agg(row: dict[str, Any]) -> dict[str, Any]:
    """A Markdown row: mean ± std per metric, and the 95% interval of val/acc next to it."""
    out = {}
    for k, v in row.items():
        out[k] = v
        if k == ACC and isinstance(v, Summary):
            out[f"{ACC} {CI}"] = _interval(v.lo, v.hi)
    return out


# -- against a baseline -----------------------------------------------------------------
def parse_baseline(items: Sequence[str], grid: Grid) -> dict[str, str]:
    """``--baseline KEY=VALUE`` items -> {axis short name: value label}.

    KEY is a non-seed axis, by its short name (as in slugs and table headers: ``config``,
    ``clip``) or its full key; VALUE is one of its labels as the tables print them (a config
    file's stem, ``0.2``, ``inf``). Axes not named are matched: each point is compared with the
    baseline point that has the same values on them."""
    axes = {a.short: a for a in grid.axes} | {a.key: a for a in grid.axes}
    points = expand(grid)
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ValueError(f"--baseline expects KEY=VALUE, got {item!r}")
        axis = axes.get(key)
        if axis is None or axis.is_seed:
            names = [a.short for a in grid.axes if not a.is_seed]
            raise ValueError(f"--baseline {item}: {key!r} is not a non-seed grid axis (axes: {', '.join(names)})")
        labels = list(dict.fromkeys(p.labels[axis.short] for p in points))
        if value not in labels:
            raise ValueError(f"--baseline {item}: {axis.short} has no value {value!r} (values: {', '.join(labels)})")
        out[axis.short] = value
    return out


def baseline_text(baseline: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in baseline.items())


def compare_to_baseline(
    points: Sequence[Point], results: dict[int, RunResult], axes: Sequence[Axis], baseline: dict[str, str]
) -> dict[tuple[str, ...], Comparison | None]:
    """Final val/acc of every setting (of the non-seed axes) against its baseline setting (the
    same labels but ``baseline`` on the axes it names): paired by seed where both finished the
    same seeds, Welch otherwise. None for the baseline settings themselves; a setting whose
    baseline is not in the grid is left out."""
    names = [a.short for a in axes if not a.is_seed]
    seed = next((a.short for a in axes if a.is_seed), None)
    values: dict[tuple[str, ...], dict[str, float]] = {}
    for p in points:
        by_seed = values.setdefault(group_key(p, axes), {})
        acc = results[p.index].final.get(ACC)
        if results[p.index].status == "ok" and acc is not None:
            by_seed[p.labels[seed] if seed else p.slug] = acc
    out: dict[tuple[str, ...], Comparison | None] = {}
    for key, vals in values.items():
        base_key = tuple(baseline.get(n, label) for n, label in zip(names, key))
        if base_key == key:
            out[key] = None
        elif base_key in values:
            out[key] = compare(values[base_key], vals)
    return out


def comparison_columns(cmp: Comparison | None, baseline: dict[str, str]) -> dict[str, Any]:
    """The CSV columns of one setting's comparison (blank where undefined)."""
    if cmp is None:
        return {
            "baseline": baseline_text(baseline),
            "diff": None,
            f"diff {CI} lo": None,
            f"diff {CI} hi": None,
            "p": None,
            "test": "baseline",
            "seeds for 80% power": None,
        }
    return {
        "baseline": baseline_text(baseline),
        "diff": _num(cmp.diff),
        f"diff {CI} lo": _num(cmp.lo),
        f"diff {CI} hi": _num(cmp.hi),
        "p": _num(cmp.p),
        "test": cmp.test,
        "seeds for 80% power": _num(cmp.seeds_for_power),
    }


def _p_text(p: float) -> str:
    return "n/a" if math.isnan(p) else f"{p:.2e}" if p < 1e-4 else f"{p:.4f}"


def comparison_markdown(
    comparisons: dict[tuple[str, ...], Comparison | None], axes: Sequence[Axis], baseline: dict[str, str]
) -> str:
    """The section of results.md that compares every setting with the baseline."""
    names = [a.short for a in axes if not a.is_seed]
    rows = []
    for key, cmp in comparisons.items():
        if cmp is None:
            continue
        power = cmp.seeds_for_power
        rows.append(
            {
                **dict(zip(names, key)),
                "n (baseline, point)": f"{cmp.n_a}, {cmp.n_b}",
                "diff": "n/a" if math.isnan(cmp.diff) else f"{cmp.diff:+.3f}",
                f"diff {CI}": _interval(cmp.lo, cmp.hi, signed=True),
                "p": _p_text(cmp.p),
                "test": cmp.test,
                "seeds for 80% power": "inf" if power == math.inf else "n/a" if math.isnan(power) else f"{power:.0f}",
            }
        )
    text = [
        f"\n## Against the baseline `{baseline_text(baseline)}` (final {ACC})\n\n",
        f"diff = the point's mean final {ACC} minus its baseline's (the baseline is the setting with "
        f"`{baseline_text(baseline)}` and the same values on the other axes). The test is a paired "
        "t-test over seeds (df = n - 1) where both finished the same seeds, and Welch's t-test "
        "(Welch-Satterthwaite df) otherwise, as the `test` column says; p is two-sided and the "
        "95% CI is the matching Student t interval of the difference. `seeds for 80% power` is the "
        "number of seeds per arm that would detect the observed difference at 80% power with a "
        "two-sided test at alpha = 0.05, by the normal approximation n = 2((z_0.975 + z_0.8) s / diff)^2 "
        "with s the pooled std (Welch) or n = ((z_0.975 + z_0.8) s_d / diff)^2 with s_d the std of "
        "the per-seed differences (paired); at least 2, inf when diff = 0. n/a: fewer than two "
        "seeds on a side, or no spread at all.\n\n",
    ]
    text.append(markdown_table(rows) if rows else "No setting has its baseline in this sweep.\n")
    return "".join(text)


def write_results(
    out_dir: Path,
    grid: Grid,
    points: list[Point],
    results: dict[int, RunResult],
    baseline: dict[str, str] | None = None,
) -> list[Path]:
    """Write results.csv, results.md (+ results_by_seed.csv) and the plots; return the paths.

    ``baseline`` ({axis short name: label}, see :func:`parse_baseline`) adds the comparison of
    every setting with its baseline to results.md, results.csv and results_by_seed.csv."""
    columns = metric_columns(list(results.values()))
    rows = [result_row(p, results[p.index], columns) for p in points]
    comparisons = compare_to_baseline(points, results, grid.axes, baseline) if baseline else {}
    csv_rows = [dict(r) for r in rows]
    if baseline:
        for p, row in zip(points, csv_rows):
            key = group_key(p, grid.axes)
            if key in comparisons:
                row.update(comparison_columns(comparisons[key], baseline))
    written = [out_dir / "results.csv", out_dir / "results.md"]
    write_csv(written[0], csv_rows)
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
        md += [
            "\n## Mean ± std over seeds\n\n",
            f"With n seeds per setting, the {CI} of {ACC} is the Student t interval mean ± "
            "t_{0.975, n-1} std / sqrt(n) (n/a with one seed); results_by_seed.csv has it for every metric.\n\n",
            markdown_table([_md_agg(r) for r in agg]),
        ]
        flat = [_flat_agg(r) for r in agg]
        if baseline:
            for r, f in zip(agg, flat):
                key = tuple(str(r[a.short]) for a in grid.axes if not a.is_seed)
                if key in comparisons:
                    f.update(comparison_columns(comparisons[key], baseline))
        write_csv(out_dir / "results_by_seed.csv", _same_columns(flat))
        written.append(out_dir / "results_by_seed.csv")
    if baseline:
        md.append(comparison_markdown(comparisons, grid.axes, baseline))
    (out_dir / "results.md").write_text("".join(md))
    for plot in (plot_acc_vs_axis, plot_learning_curves):
        path = plot(out_dir, grid, points, results)
        if path is not None:
            written.append(path)
    return written
