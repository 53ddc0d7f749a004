"""``cepo sweep``: run a grid of ``cepo fit`` runs, then tabulate and plot them.

Usage::

    cepo sweep GRID.yaml [--parallel N] [--dry_run] [--out DIR] [--set KEY=VALUE ...]

The grid file::

    name: clip_x_beta               # sweep name (default: the file's stem)
    base: [configs/default.yaml, configs/credit/contrastive.yaml]   # --config files, in order
    fixed: {trainer.max_steps: 40}  # overrides for every point
    grid:                           # the cartesian product of these axes, in this order
      model.credit.init_args.clip: [0.2, 0.5]
      model.credit.init_args.beta: [0.25, 0.5]
      seed_everything: [0, 1]

Keys are ``cepo fit`` flags without the dashes; values are YAML (``.inf`` is infinity,
``null`` is None). Three kinds of axis:

- a **config key** (``model.credit.init_args.clip``): one ``--key value`` per point;
- ``config``: each value is an overlay file (or a list of them) added after ``base``, e.g.
  ``config: [configs/credit/uniform.yaml, configs/credit/contrastive.yaml]``;
- a **bundle** (a name without dots whose values are mappings): each value sets several keys
  together, e.g. ``schedule: [{beta_schedule.kind: constant},
  {beta_schedule.kind: linear, beta_schedule.decay_steps: 25}]``.

Relative paths are looked up next to the grid file, then in the repository root, then in the
working directory. ``--set KEY=VALUE`` (repeatable) adds to ``fixed`` and wins over it.

Every point runs as ``cepo fit ... --run_root OUT --run_name NAME --run_version SLUG`` with
its output in ``OUT/NAME/SLUG/stdout.log``. The slug joins ``short=value`` per axis (short:
the key's last dotted component, longer where two axes would clash; ``seed_everything`` is
``seed``; a ``config`` axis contributes the file stem), e.g. ``clip=0.2_beta=0.5_seed=0``.

Before anything runs, every pending point is parsed and instantiated, exactly as ``cepo fit``
would, in one validation subprocess; an invalid point stops the sweep, named with its error.
Points whose run directory already holds ``summary.json`` are skipped, so an interrupted
sweep resumes by re-running the same command. A failed point does not stop the others; the
exit code is non-zero if any failed. At the end ``OUT/NAME`` gets ``results.csv``,
``results.md`` (with a mean ± std table over seeds when the grid has a ``seed_everything``
axis), ``acc_vs_<axis>.png`` and ``learning_curves.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import itertools
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
SEED_KEY = "seed_everything"
CONFIG_AXIS = "config"
ACC = "val/acc"
BEST_ACC = "best val/acc"
BASE_ACC = "base val/acc"
_SAMPLED = re.compile(r"^val/(avg|pass)@\d+$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]+")


# -- the grid ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Axis:
    """One grid axis.

    Attributes:
        key: the key as written in the grid file.
        short: its name in slugs, tables and plot file names.
        kind: ``key`` (a config key), ``config`` (overlay files) or ``bundle``.
        values: the values, in grid order (overlay paths resolved for ``config``).
    """

    key: str
    short: str
    kind: str
    values: tuple

    @property
    def is_seed(self) -> bool:
        return self.kind == "key" and self.key == SEED_KEY

    @property
    def is_numeric(self) -> bool:
        return self.kind == "key" and all(_is_number(v) for v in self.values)


@dataclass(frozen=True)
class Grid:
    """A parsed grid file: base configs, fixed overrides and axes."""

    name: str
    base: tuple[Path, ...]
    fixed: dict[str, Any]
    axes: tuple[Axis, ...]


@dataclass(frozen=True)
class Point:
    """One grid point.

    Attributes:
        index: 1-based position in the grid.
        labels: axis short name -> value label (slug parts and table cells).
        values: axis short name -> raw value (for ordering numeric axes).
        configs: overlay files from a ``config`` axis, after the grid's base files.
        overrides: config key -> value from the grid axes (``fixed`` excluded).
        slug: the run version, unique within the sweep.
    """

    index: int
    labels: dict[str, str]
    values: dict[str, Any]
    configs: tuple[Path, ...]
    overrides: dict[str, Any]
    slug: str


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def value_label(value: Any) -> str:
    """A short text for a value in slugs and tables (``0.2``, ``inf``, ``true``, ``null``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return "inf" if value == math.inf else "-inf" if value == -math.inf else repr(value)
    if isinstance(value, (list, tuple)):
        return "-".join(value_label(v) for v in value)
    if isinstance(value, dict):
        return "-".join(value_label(v) for v in value.values())
    return str(value)


def cli_value(value: Any) -> str:
    """``value`` as ``cepo fit`` parses it from the command line (YAML; ``.inf`` for infinity)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float) and not math.isfinite(value):
        return ".nan" if math.isnan(value) else ".inf" if value > 0 else "-.inf"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def slugify(text: str) -> str:
    """``text`` with every run of characters outside ``[A-Za-z0-9._=+-]`` replaced by ``-``."""
    return _UNSAFE.sub("-", text).strip("-")


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """Shortest unique dotted suffix of each key (``init_args`` dropped; ``seed_everything`` is
    ``seed``): ``model.credit.init_args.clip`` -> ``clip``, but ``credit.beta`` / ``foo.beta``
    when both ``...credit.init_args.beta`` and ``foo.beta`` are axes."""
    parts = {k: [p for p in k.split(".") if p != "init_args"] for k in keys}
    depth = dict.fromkeys(keys, 1)
    while True:
        names = {k: "seed" if k == SEED_KEY else ".".join(parts[k][-depth[k] :]) for k in keys}
        clashes = [k for k in keys if list(names.values()).count(names[k]) > 1]
        growable = [k for k in clashes if depth[k] < len(parts[k])]
        if not growable:
            if clashes:
                raise ValueError(f"grid axes {clashes} have the same short name {names[clashes[0]]!r}")
            return names
        for k in growable:
            depth[k] += 1


def resolve_path(path: str | Path, grid_dir: Path) -> Path:
    """An existing file: absolute, or relative to the grid file, the repo root or the cwd."""
    path = Path(path).expanduser()
    candidates = [path] if path.is_absolute() else [grid_dir / path, REPO_ROOT / path, Path.cwd() / path]
    for cand in candidates:
        if cand.is_file():
            return cand.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"config file {str(path)!r} not found (tried {tried})")


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``["a.b=1", "c=.inf"]`` -> ``{"a.b": 1, "c": inf}`` (values are YAML)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    return out


def _as_list(value: Any, what: str) -> list:
    if value is None:
        return []
    if isinstance(value, (str, Path)):
        return [value]
    if isinstance(value, list):
        return value
    raise ValueError(f"{what} must be a path or a list of paths, got {value!r}")


def parse_grid(spec: dict, grid_dir: Path, default_name: str, extra_fixed: dict | None = None) -> Grid:
    """Check a grid file's contents and resolve its paths.

    Args:
        spec: the loaded YAML mapping (``name``, ``base``, ``fixed``, ``grid``).
        grid_dir: directory relative paths are looked up in first.
        default_name: the sweep name when ``spec`` has none.
        extra_fixed: ``--set`` overrides, added to ``fixed`` (and winning over it).
    """
    if not isinstance(spec, dict):
        raise ValueError("a grid file must be a mapping with keys name, base, fixed, grid")
    unknown = set(spec) - {"name", "base", "fixed", "grid"}
    if unknown:
        raise ValueError(f"unknown grid file keys {sorted(unknown)} (expected name, base, fixed, grid)")
    name = slugify(str(spec.get("name") or default_name))
    if not name:
        raise ValueError("the sweep name is empty")
    base = tuple(resolve_path(p, grid_dir) for p in _as_list(spec.get("base"), "base"))
    fixed = dict(spec.get("fixed") or {})
    if not isinstance(spec.get("fixed") or {}, dict):
        raise ValueError("fixed must be a mapping of config keys to values")
    fixed.update(extra_fixed or {})
    if CONFIG_AXIS in fixed:
        raise ValueError("'config' cannot be fixed: list always-on config files under base")
    raw_axes = spec.get("grid")
    if not isinstance(raw_axes, dict) or not raw_axes:
        raise ValueError("grid must be a non-empty mapping of axis -> list of values")
    kinds, values = {}, {}
    for key, vals in raw_axes.items():
        if not isinstance(vals, list) or not vals:
            raise ValueError(f"grid axis {key!r} must be a non-empty list, got {vals!r}")
        if key == CONFIG_AXIS:
            kinds[key] = "config"
            values[key] = tuple(
                tuple(resolve_path(p, grid_dir) for p in _as_list(v, "a config axis value")) for v in vals
            )
        elif "." not in key and all(isinstance(v, dict) for v in vals):
            kinds[key], values[key] = "bundle", tuple(vals)
        else:
            kinds[key], values[key] = "key", tuple(vals)
    _check_overlaps(kinds, values, fixed)
    shorts = short_names([k for k in raw_axes if kinds[k] != "config"])
    shorts[CONFIG_AXIS] = CONFIG_AXIS
    axes = tuple(Axis(k, shorts[k], kinds[k], values[k]) for k in raw_axes)
    return Grid(name, base, fixed, axes)


def _check_overlaps(kinds: dict[str, str], values: dict[str, tuple], fixed: dict) -> None:
    """Every config key is set by at most one of: fixed, an axis, a bundle axis."""
    owner: dict[str, str] = {k: "fixed" for k in fixed}
    for axis, kind in kinds.items():
        if kind == "config":
            continue
        keys = {k for v in values[axis] for k in v} if kind == "bundle" else {axis}
        for key in keys:
            if key in owner:
                raise ValueError(f"config key {key!r} is set by both {owner[key]} and grid axis {axis!r}")
            owner[key] = f"grid axis {axis!r}"


def load_grid(path: str | Path, extra_fixed: dict | None = None) -> Grid:
    """Read and check a grid file (see the module docstring)."""
    path = Path(path)
    spec = yaml.safe_load(path.read_text())
    return parse_grid(spec, path.resolve().parent, path.stem, extra_fixed)


def expand(grid: Grid) -> list[Point]:
    """The cartesian product of the grid's axes, in grid order (the last axis varies fastest)."""
    points = []
    for i, combo in enumerate(itertools.product(*(a.values for a in grid.axes)), start=1):
        labels, raw, configs, overrides, parts = {}, {}, [], {}, []
        for axis, value in zip(grid.axes, combo):
            raw[axis.short] = value
            if axis.kind == "config":
                label = "+".join(p.stem for p in value)
                configs.extend(value)
                parts.append(slugify(label))
            else:
                label = value_label(value)
                overrides.update(value if axis.kind == "bundle" else {axis.key: value})
                parts.append(slugify(f"{axis.short}={label}"))
            labels[axis.short] = label
        points.append(Point(i, labels, raw, tuple(configs), overrides, "_".join(parts)))
    seen: dict[str, int] = {}
    for p in points:
        if p.slug in seen:
            raise ValueError(f"grid points {seen[p.slug]} and {p.index} have the same slug {p.slug!r}")
        seen[p.slug] = p.index
    return points


def fit_args(grid: Grid, point: Point) -> list[str]:
    """The ``cepo fit`` arguments of a point, without the run directory flags."""
    args = []
    for cfg in (*grid.base, *point.configs):
        args += ["--config", str(cfg)]
    for key, value in {**grid.fixed, **point.overrides}.items():
        args += [f"--{key}", cli_value(value)]
    return args


def run_flags(grid: Grid, point: Point) -> list[str]:
    """``--run_name``/``--run_version`` of a point (``--run_root`` is added by the caller)."""
    return ["--run_name", grid.name, "--run_version", point.slug]


def fit_command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "cepo.cli", "fit", *args]


# -- validation -------------------------------------------------------------------------
def check_points(arg_lists: dict[str, list[str]]) -> dict[str, str]:
    """Parse and instantiate each argument list as ``cepo fit`` does, in one subprocess.

    This catches what ``cepo fit --print_config`` catches (unknown keys, wrong types) and also
    the constructors' own checks (e.g. ``data.group_size >= 2``), without loading any model.

    Args:
        arg_lists: slug -> ``cepo fit`` arguments without ``--run_root`` (a temporary one is
            added, so nothing is written next to the real runs).

    Returns:
        slug -> error text, for the invalid points only.
    """
    with tempfile.TemporaryDirectory(prefix="cepo-sweep-check-") as tmp:
        spec, result = Path(tmp) / "points.json", Path(tmp) / "errors.json"
        runs = str(Path(tmp) / "runs")
        jobs = {slug: [*args, "--run_root", runs] for slug, args in arg_lists.items()}
        spec.write_text(json.dumps({"points": jobs, "result": str(result)}))
        proc = subprocess.run(
            [sys.executable, "-m", "cepo.sweep", "--check", str(spec)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        if proc.returncode != 0 or not result.is_file():
            raise RuntimeError(f"the validation subprocess failed:\n{proc.stderr[-3000:]}")
        return json.loads(result.read_text())


def _check_worker(spec_path: Path) -> None:
    """Body of the validation subprocess: instantiate every point, record the errors."""
    import torch

    from cepo.cli import cli_main

    torch.set_num_threads(1)
    spec = json.loads(spec_path.read_text())
    errors = {}
    for slug, args in spec["points"].items():
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                cli_main(["fit", *args], run=False)
        except SystemExit as exc:  # jsonargparse reports bad keys / types and exits
            if exc.code not in (0, None):
                errors[slug] = _error_text(err.getvalue()) or f"exit code {exc.code}"
        except Exception as exc:  # a constructor's own check (e.g. data.group_size >= 2)
            errors[slug] = f"{type(exc).__name__}: {exc}"
    Path(spec["result"]).write_text(json.dumps(errors))


def _error_text(stderr: str) -> str:
    """The ``error: ...`` part of an argparse-style message (the usage block dropped)."""
    lines = stderr.strip().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("error:"):
            return "\n".join(lines[i:]).strip()
    return "\n".join(lines[-15:]).strip()


# -- running ----------------------------------------------------------------------------
@dataclass
class RunResult:
    """What a finished (or failed) point left in its run directory."""

    status: str  # ok | failed
    final: dict[str, float] = field(default_factory=dict)
    base: dict[str, float] | None = None
    curve: list[tuple[int, float]] = field(default_factory=list)
    rl_steps: int | None = None
    wall_time: float | None = None

    @property
    def best_acc(self) -> float | None:
        """Best val/acc over the evaluations during and after training (the base one excluded)."""
        values = [acc for _, acc in self.curve]
        if self.base is not None and len(values) > 1:
            values = values[1:]  # the first evaluation is the base model's (before fit)
        return max(values) if values else self.final.get(ACC)


def read_curve(metrics_csv: Path) -> list[tuple[int, float]]:
    """``(step, val/acc)`` for every evaluation row of a CSVLogger ``metrics.csv``, in order."""
    if not metrics_csv.is_file():
        return []
    with metrics_csv.open(newline="") as f:
        return [
            (int(float(row.get("step") or 0)), float(row[ACC]))
            for row in csv.DictReader(f)
            if row.get(ACC) not in (None, "")
        ]


def read_run(run_dir: Path) -> RunResult:
    """Collect a point's summary, learning curve and wall time from its run directory."""
    meta = _read_json(run_dir / "sweep_point.json") or {}
    summary = _read_json(run_dir / "summary.json")
    if summary is None:
        return RunResult("failed", wall_time=meta.get("wall_time_s"))
    return RunResult(
        "ok",
        final={k: float(v) for k, v in (summary.get("final") or {}).items()},
        base=summary.get("base"),
        curve=read_curve(run_dir / "metrics.csv"),
        rl_steps=summary.get("rl_steps"),
        wall_time=meta.get("wall_time_s"),
    )


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def run_point(cmd: list[str], run_dir: Path, meta: dict) -> RunResult:
    """Run one ``cepo fit`` subprocess with its output in ``run_dir/stdout.log``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with (run_dir / "stdout.log").open("w") as log:
        log.write(shlex.join(cmd) + "\n\n")
        log.flush()
        code = subprocess.run(
            cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        ).returncode
    wall = time.perf_counter() - start
    status = "ok" if code == 0 and (run_dir / "summary.json").is_file() else "failed"
    meta = {**meta, "command": cmd, "returncode": code, "status": status, "wall_time_s": round(wall, 2)}
    (run_dir / "sweep_point.json").write_text(json.dumps(meta, indent=2))
    result = read_run(run_dir)
    result.status = status  # a failed run can still leave a summary (e.g. a crash in export)
    return result


def progress_line(point: Point, total: int, status: str, result: RunResult, run_dir: Path, slug_width: int = 0) -> str:
    """``[3/8] clip=0.2_beta=0.5_seed=0  ok      val/acc 0.412     31.2s``."""
    width = len(str(total))
    acc = result.final.get(ACC)
    acc_text = f"val/acc {acc:.3f}" if acc is not None else f"log {run_dir / 'stdout.log'}"
    wall = f"{result.wall_time:8.1f}s" if result.wall_time is not None else ""
    return f"[{point.index:>{width}}/{total}] {point.slug:<{slug_width}}  {status:<7} {acc_text}  {wall}".rstrip()


def run_all(
    jobs: list[tuple[Point, list[str], Path]],
    total: int,
    parallel: int,
    emit: Callable[[str], None],
    slug_width: int = 0,
) -> dict[int, RunResult]:
    """Run ``(point, command, run_dir)`` jobs, ``parallel`` at a time, printing a line as each ends.

    With ``parallel > 1`` the first job runs alone, so that caches every run needs (the
    built-in base model's warm-up) are built once rather than raced.
    """
    results: dict[int, RunResult] = {}
    lock = threading.Lock()

    def one(job: tuple[Point, list[str], Path]) -> None:
        point, cmd, run_dir = job
        meta = {"index": point.index, "slug": point.slug, "labels": point.labels}
        result = run_point(cmd, run_dir, meta)
        with lock:
            results[point.index] = result
            status = "ok" if result.status == "ok" else "FAILED"
            emit(progress_line(point, total, status, result, run_dir, slug_width))

    if not jobs:
        return results
    if parallel <= 1:
        for job in jobs:
            one(job)
        return results
    one(jobs[0])
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        list(pool.map(one, jobs[1:]))
    return results


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
    return str(value)


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


# -- command ----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cepo sweep",
        description="Run a grid of `cepo fit` runs, then write results tables and plots.",
        epilog="The grid file format is described in the docstring of cepo/sweep.py.",
    )
    parser.add_argument("grid", type=Path, help="the grid YAML file")
    parser.add_argument("--parallel", type=int, default=1, help="points run at once (default 1)")
    parser.add_argument(
        "--dry_run", action="store_true", help="expand and validate the grid, print the commands, run nothing"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/sweeps"), help="run root (default runs/sweeps)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an extra fixed override for every point (repeatable), e.g. --set model.model_path=/tmp/m",
    )
    return parser


def validate_or_exit(pending: list[Point], arg_lists: dict[str, list[str]], total: int) -> None:
    """Check every pending point (one subprocess); exit naming each invalid one and its error."""
    print(f"validating {len(pending)} point(s) ...", flush=True)
    try:
        errors = check_points({p.slug: arg_lists[p.slug] for p in pending})
    except RuntimeError as err:
        raise SystemExit(f"cepo sweep: {err}") from None
    if errors:
        bad = [p for p in pending if p.slug in errors]
        text = "\n\n".join(f"point {p.index}/{total} ({p.slug}):\n{errors[p.slug]}" for p in bad)
        raise SystemExit(f"cepo sweep: {len(bad)} invalid point(s), nothing was run.\n\n{text}")


def sweep_main(argv: list[str]) -> None:
    """``cepo sweep``: expand, validate, run (skipping finished points), report."""
    args = build_parser().parse_args(argv)
    if args.parallel < 1:
        raise SystemExit("cepo sweep: --parallel must be >= 1")
    try:
        grid = load_grid(args.grid, parse_set(args.overrides))
        points = expand(grid)
    except (ValueError, FileNotFoundError, yaml.YAMLError) as err:
        raise SystemExit(f"cepo sweep: {args.grid}: {err}") from None
    out = args.out.resolve()
    sweep_dir = out / grid.name
    total = len(points)
    done = {p.index for p in points if (sweep_dir / p.slug / "summary.json").is_file()}
    pending = [p for p in points if p.index not in done]
    print(f"sweep {grid.name}: {total} points ({len(done)} done) -> {sweep_dir}", flush=True)
    arg_lists = {p.slug: fit_args(grid, p) + run_flags(grid, p) for p in points}

    if pending:
        validate_or_exit(pending, arg_lists, total)
    if args.dry_run:
        for p in points:
            state = "done" if p.index in done else "valid"
            cmd = fit_command([*arg_lists[p.slug], "--run_root", str(out)])
            print(f"[{p.index}/{total}] {p.slug} ({state}): {shlex.join(cmd)}")
        return

    sweep_dir.mkdir(parents=True, exist_ok=True)
    slug_width = max(len(p.slug) for p in points)
    results: dict[int, RunResult] = {}
    for p in points:
        if p.index in done:
            results[p.index] = read_run(sweep_dir / p.slug)
            line = progress_line(p, total, "skip", results[p.index], sweep_dir / p.slug, slug_width)
            print(line, flush=True)
    jobs = [(p, fit_command([*arg_lists[p.slug], "--run_root", str(out)]), sweep_dir / p.slug) for p in pending]
    results.update(run_all(jobs, total, args.parallel, lambda line: print(line, flush=True), slug_width))
    for path in write_results(sweep_dir, grid, points, results):
        print(f"wrote {path}")
    failed = [p.slug for p in points if results[p.index].status != "ok"]
    if failed:
        raise SystemExit(f"cepo sweep: {len(failed)} of {total} point(s) failed: {', '.join(failed)}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--check"]:
        _check_worker(Path(sys.argv[2]))
    else:
        sweep_main(sys.argv[1:])
