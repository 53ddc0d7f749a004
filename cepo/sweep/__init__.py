"""``cepo sweep``: run a grid of ``cepo fit`` runs, then tabulate and plot them.

Usage::

    cepo sweep GRID.yaml [--launcher local|slurm|submitit-local] [--parallel N] [--dry_run]
                         [--out DIR] [--set KEY=VALUE ...] [--baseline AXIS=VALUE ...]
                         [--gpus_per_node G --time_min M ...]

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

Launchers (``--launcher``, see ``cepo/sweep/launch.py``): ``local`` subprocesses (default,
``--parallel N`` at a time); ``slurm``, one job array per sweep through submitit, one task per
point, preempted points requeued to resume from their checkpoint (``--detach`` submits and
exits; re-run to gather); ``submitit-local``, the same jobs on this machine. A grid file's
optional ``resources:`` mapping (``gpus_per_node``, ``nodes``, ``tasks_per_node``,
``cpus_per_task``, ``mem_gb``, ``time_min``, ``partition``, ``account``, ``qos``,
``constraint``, ``array_parallelism``, ``setup``, ``max_requeues``) sets what each point asks
for; flags of the same names win over it.

Every point runs as ``cepo fit ... --run_root OUT --run_name NAME --run_version SLUG`` with
its output in ``OUT/NAME/SLUG/stdout.log``. The slug joins ``short=value`` per axis (short:
the key's last dotted component, longer where two axes would clash; ``seed_everything`` is
``seed``; a ``config`` axis contributes the file stem), e.g. ``clip=0.2_beta=0.5_seed=0``.

Before anything runs, every pending point is parsed and instantiated, exactly as ``cepo fit``
would, in one validation subprocess; an invalid point stops the sweep, named with its error.
Points whose run directory already holds ``summary.json`` are skipped, so an interrupted
sweep resumes by re-running the same command; an unfinished point that left a checkpoint
continues from it (``--ckpt_path last``), appending to its ``stdout.log``. A failed point does
not stop the others; it is marked ``failed`` in the tables, with its error line in
``results.csv`` and the tail of its log in ``results.md``, and the exit code is non-zero. At the end
``OUT/NAME`` gets ``results.csv``, ``results.md`` (with a mean ± std table over seeds when
the grid has a ``seed_everything`` axis, and ``results_by_seed.csv``: mean, std, n and the 95%
Student t interval of every metric per setting), ``acc_vs_<axis>.png`` and
``learning_curves.png`` (error bars and bands: the 95% t interval over seeds).

``--baseline AXIS=VALUE`` (repeatable; AXIS a non-seed axis by its short name or key, VALUE a
label as the tables print it, e.g. ``--baseline config=uniform`` or ``--baseline clip=0.2``)
compares the final val/acc of every setting with the setting that has VALUE on AXIS and the
same values on the other axes: the difference of means, its 95% interval, a two-sided p-value
(a paired t-test by seed when both finished the same seeds, Welch's t-test otherwise, named in
a ``test`` column) and the seeds per arm that would detect the difference at 80% power (normal
approximation, two-sided alpha 0.05). They go to a section of ``results.md`` and to columns of
``results.csv`` and ``results_by_seed.csv`` (see ``cepo/sweep/stats.py``). Re-running a
finished sweep with another ``--baseline`` only rewrites the reports.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess  # noqa: F401  (tests patch cepo.sweep.subprocess.run)
from pathlib import Path

import yaml

from cepo.sweep.grid import (
    Axis,
    Grid,
    Point,
    cli_value,
    expand,
    fit_args,
    fit_command,
    load_grid,
    parse_grid,
    parse_set,
    resolve_path,
    run_flags,
    short_names,
    slugify,
    value_label,
)
from cepo.sweep.launch import LAUNCHERS, Resources, run_submitit
from cepo.sweep.report import parse_baseline, write_results
from cepo.sweep.run import (
    RunResult,
    check_points,
    has_checkpoint,
    progress_line,
    read_curve,
    read_run,
    run_all,
    run_point,
)

__all__ = [
    "Axis",
    "Grid",
    "Point",
    "Resources",
    "RunResult",
    "check_points",
    "cli_value",
    "expand",
    "fit_args",
    "fit_command",
    "load_grid",
    "parse_grid",
    "parse_baseline",
    "parse_set",
    "read_curve",
    "read_run",
    "resolve_path",
    "run_flags",
    "run_point",
    "short_names",
    "slugify",
    "sweep_main",
    "value_label",
    "write_results",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cepo sweep",
        description="Run a grid of `cepo fit` runs, then write results tables and plots.",
        epilog="The grid file format is described in the docstring of cepo/sweep/__init__.py.",
    )
    parser.add_argument("grid", type=Path, help="the grid YAML file")
    parser.add_argument(
        "--launcher",
        choices=LAUNCHERS,
        default="local",
        help="where points run: local subprocesses (default), a SLURM job array (submitit), or "
        "submitit's local executor (the cluster path on this machine)",
    )
    parser.add_argument("--parallel", type=int, default=1, help="local launcher: points run at once (default 1)")
    parser.add_argument(
        "--detach", action="store_true", help="slurm: submit and exit; re-run the same command to gather results"
    )
    for flag, kind, text in RESOURCE_FLAGS:
        parser.add_argument(f"--{flag}", type=kind, default=None, help=f"resources.{flag}: {text}")
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
    parser.add_argument(
        "--baseline",
        action="append",
        default=[],
        metavar="AXIS=VALUE",
        help="compare every setting's final val/acc with the one that has this axis value (repeatable), "
        "e.g. --baseline config=uniform: difference, 95%% CI, p (paired by seed or Welch), seeds for 80%% power",
    )
    return parser


RESOURCE_FLAGS = (
    ("gpus_per_node", int, "GPUs per node"),
    ("nodes", int, "nodes per point"),
    ("cpus_per_task", int, "CPU cores per process"),
    ("mem_gb", float, "memory per node (GB)"),
    ("time_min", int, "time limit per point (minutes)"),
    ("partition", str, "SLURM partition"),
    ("account", str, "SLURM account"),
    ("qos", str, "SLURM quality of service"),
)


def resume_flags(resume: bool) -> list[str]:
    """``--ckpt_path last`` for a point that left a checkpoint: it continues in its run directory."""
    return ["--ckpt_path", "last"] if resume else []


def validate_or_exit(pending: list[Point], arg_lists: dict[str, list[str]], total: int) -> None:
    """Check every pending point (one subprocess); exit naming each invalid one and its error."""
    print(f"validating {len(pending)} point(s) ...", flush=True)
    try:
        errors = check_points({p.slug: arg_lists[p.slug] for p in pending})
    except RuntimeError as err:
        raise ValueError(f"cepo sweep: {err}") from None
    if errors:
        bad = [p for p in pending if p.slug in errors]
        text = "\n\n".join(f"point {p.index}/{total} ({p.slug}):\n{errors[p.slug]}" for p in bad)
        raise ValueError(f"cepo sweep: {len(bad)} invalid point(s), nothing was run.\n\n{text}")


def sweep_main(argv: list[str]) -> None:
    """``cepo sweep``: expand, validate, run (skipping finished points), report."""
    args = build_parser().parse_args(argv)
    if args.parallel < 1:
        raise ValueError("cepo sweep: --parallel must be >= 1")
    try:
        grid = load_grid(args.grid, parse_set(args.overrides))
        points = expand(grid)
    except (ValueError, FileNotFoundError, yaml.YAMLError) as err:
        raise ValueError(f"cepo sweep: {args.grid}: {err}") from None
    try:
        baseline = parse_baseline(args.baseline, grid)
    except ValueError as err:
        raise ValueError(f"cepo sweep: {err}") from None
    flags = {flag: getattr(args, flag) for flag, _, _ in RESOURCE_FLAGS if getattr(args, flag) is not None}
    try:
        resources = Resources.parse({**grid.resources, **flags})
    except ValueError as err:
        raise ValueError(f"cepo sweep: {args.grid}: {err}") from None
    if args.detach and args.launcher != "slurm":
        raise ValueError("cepo sweep: --detach needs --launcher slurm")
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
    resumed = [p for p in pending if has_checkpoint(sweep_dir / p.slug)]
    if resumed:
        print(f"resuming {len(resumed)} unfinished point(s) from their last checkpoint", flush=True)
    jobs = [
        (p, fit_command([*arg_lists[p.slug], "--run_root", str(out), *resume_flags(p in resumed)]), sweep_dir / p.slug)
        for p in pending
    ]

    def emit(line: str) -> None:
        print(line, flush=True)

    def line(p: Point, status: str, result: RunResult, run_dir: Path) -> str:
        return progress_line(p, total, status, result, run_dir, slug_width)

    if args.launcher == "local":
        results.update(run_all(jobs, total, args.parallel, emit, slug_width))
    else:
        launched = run_submitit(args.launcher, jobs, sweep_dir, resources, grid.name, emit, line, args.detach)
        if launched is None:
            print(f"detached: re-run the same command to wait for the jobs and write {sweep_dir}/results.md")
            return
        results.update(launched)
    for path in write_results(sweep_dir, grid, points, results, baseline or None):
        print(f"wrote {path}")
    failed = [p.slug for p in points if results[p.index].status != "ok"]
    if failed:
        raise SystemExit(f"cepo sweep: {len(failed)} of {total} point(s) failed: {', '.join(failed)}")
