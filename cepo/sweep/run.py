"""Running points: validate them in one subprocess, run each as ``cepo fit``, read results."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from cepo.sweep.grid import Point

ACC = "val/acc"
TAIL_LINES = 15


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
    log_tail: list[str] = field(default_factory=list)  # a failed point's last log lines

    @property
    def error(self) -> str:
        """A failed point's one-line reason: its ``cepo: error:`` line, else the last log line."""
        for line in reversed(self.log_tail):
            if line.startswith(("cepo: error:", "cepo: stopped:")) or "Error:" in line:
                return line.strip()
        return self.log_tail[-1].strip() if self.log_tail else ""

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
        return RunResult("failed", wall_time=meta.get("wall_time_s"), log_tail=log_tail(run_dir / "stdout.log"))
    return RunResult(
        "ok",
        final={k: float(v) for k, v in (summary.get("final") or {}).items()},
        base=summary.get("base"),
        curve=read_curve(run_dir / "metrics.csv"),
        rl_steps=summary.get("rl_steps"),
        wall_time=meta.get("wall_time_s"),
    )


def log_tail(path: Path, lines: int = TAIL_LINES) -> list[str]:
    """The last ``lines`` non-empty lines of a log (none if it is missing)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


def has_checkpoint(run_dir: Path) -> bool:
    """Whether an unfinished point left a checkpoint to resume from."""
    return any((run_dir / "checkpoints").glob("*.ckpt"))


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def run_point(
    cmd: list[str],
    run_dir: Path,
    meta: dict,
    on_start: Callable[[subprocess.Popen], None] | None = None,
    ignore_signal: int | None = None,
) -> RunResult:
    """Run one ``cepo fit`` subprocess with its output in ``run_dir/stdout.log``.

    The log is appended to, so a resumed point keeps the output of its earlier attempts.

    Args:
        cmd: the command.
        run_dir: the point's run directory.
        meta: written to ``sweep_point.json`` with the return code, status and wall time.
        on_start: called with the process once it runs (a launcher that forwards signals).
        ignore_signal: a signal the process ignores (a launcher's own preemption notice).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    preexec = None if ignore_signal is None else (lambda: signal.signal(ignore_signal, signal.SIG_IGN))
    with (run_dir / "stdout.log").open("a") as log:
        log.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {shlex.join(cmd)}\n\n")
        log.flush()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=preexec)
        if on_start is not None:
            on_start(proc)
        code = proc.wait()
    wall = time.perf_counter() - start
    status = "ok" if code == 0 and (run_dir / "summary.json").is_file() else "failed"
    meta = {**meta, "command": cmd, "returncode": code, "status": status, "wall_time_s": round(wall, 2)}
    (run_dir / "sweep_point.json").write_text(json.dumps(meta, indent=2))
    result = read_run(run_dir)
    result.status = status  # a failed run can still leave a summary (e.g. a crash in export)
    if status == "failed":
        result.log_tail = log_tail(run_dir / "stdout.log")
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
