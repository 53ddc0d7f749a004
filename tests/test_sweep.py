"""``cepo sweep``: grid expansion and slugs, validation before running, skipping, reports."""

import csv
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cepo import sweep
from cepo.sweep import (
    cli_value,
    expand,
    fit_args,
    load_grid,
    parse_grid,
    parse_set,
    read_curve,
    short_names,
    slugify,
    stats,
    sweep_main,
    value_label,
)
from cepo.sweep import run as sweep_run

ROOT = Path(__file__).resolve().parents[1]
GRIDS = sorted((ROOT / "experiments" / "grids").glob("*.yaml"))
TINY = {  # a fast run on the tiny random model (model.model_path is added per test)
    "trainer.max_steps": 2,
    "trainer.val_check_interval": 1,
    "data.prompts_per_step": 2,
    "data.group_size": 4,
    "data.eval_size": 6,
    "data.eval_k": 2,
    "export_hf": False,
    "report_base": False,
}


def grid_of(tmp_path, axes, fixed=None, base=("configs/default.yaml",), name="g"):
    spec = {"name": name, "base": list(base), "fixed": fixed or {}, "grid": axes}
    return parse_grid(spec, tmp_path, "unused")


# -- pure: expansion and names ----------------------------------------------------------
def test_expand_is_the_cartesian_product_in_grid_order(tmp_path):
    grid = grid_of(
        tmp_path,
        {
            "model.credit.init_args.clip": [0.2, 0.5],
            "model.credit.init_args.beta": [0.25, 0.5],
            "seed_everything": [0, 1],
        },
        base=["configs/default.yaml", "configs/credit/contrastive.yaml"],
    )
    points = expand(grid)
    assert len(points) == 8
    assert [p.index for p in points] == list(range(1, 9))
    assert points[0].slug == "clip=0.2_beta=0.25_seed=0"
    assert points[1].slug == "clip=0.2_beta=0.25_seed=1"  # the last axis varies fastest
    assert points[-1].slug == "clip=0.5_beta=0.5_seed=1"
    assert points[5].overrides == {
        "model.credit.init_args.clip": 0.5,
        "model.credit.init_args.beta": 0.25,
        "seed_everything": 1,
    }
    assert points[5].labels == {"clip": "0.5", "beta": "0.25", "seed": "1"}
    args = fit_args(grid, points[5])
    assert args[:4] == [
        "--config",
        str(ROOT / "configs/default.yaml"),
        "--config",
        str(ROOT / "configs/credit/contrastive.yaml"),
    ]
    assert args[4:] == [
        "--model.credit.init_args.clip",
        "0.5",
        "--model.credit.init_args.beta",
        "0.25",
        "--seed_everything",
        "1",
    ]


def test_config_axis_uses_file_stems_and_adds_overlays(tmp_path):
    grid = grid_of(
        tmp_path,
        {"config": ["configs/credit/uniform.yaml", "configs/credit/contrastive.yaml"], "seed_everything": [0]},
    )
    points = expand(grid)
    assert [p.slug for p in points] == ["uniform_seed=0", "contrastive_seed=0"]
    assert points[1].labels["config"] == "contrastive"
    assert fit_args(grid, points[1])[:4] == [
        "--config",
        str(ROOT / "configs/default.yaml"),
        "--config",
        str(ROOT / "configs/credit/contrastive.yaml"),
    ]


def test_bundle_axis_sets_keys_together(tmp_path):
    grid = grid_of(
        tmp_path,
        {
            "model.credit.init_args.clip": [0.5, math.inf],
            "schedule": [
                {"beta_schedule.kind": "constant"},
                {"beta_schedule.kind": "linear", "beta_schedule.decay_steps": 25},
            ],
        },
    )
    points = expand(grid)
    assert [p.slug for p in points] == [
        "clip=0.5_schedule=constant",
        "clip=0.5_schedule=linear-25",
        "clip=inf_schedule=constant",
        "clip=inf_schedule=linear-25",
    ]
    assert points[3].overrides == {
        "model.credit.init_args.clip": math.inf,
        "beta_schedule.kind": "linear",
        "beta_schedule.decay_steps": 25,
    }
    assert "--model.credit.init_args.clip" in fit_args(grid, points[3])
    assert fit_args(grid, points[3])[-5] == ".inf"  # jsonargparse reads .inf, not inf


@pytest.mark.parametrize(
    "value, label, cli",
    [
        (0.2, "0.2", "0.2"),
        (1.0, "1.0", "1.0"),
        (math.inf, "inf", ".inf"),
        (-math.inf, "-inf", "-.inf"),
        (3, "3", "3"),
        (True, "true", "true"),
        (None, "null", "null"),
        ("first_k", "first_k", "first_k"),
        ([1, 2], "1-2", "[1, 2]"),
    ],
)
def test_value_texts(value, label, cli):
    assert value_label(value) == label
    assert cli_value(value) == cli


def test_short_names_grow_only_where_they_clash():
    assert short_names(["model.credit.init_args.clip", "seed_everything"]) == {
        "model.credit.init_args.clip": "clip",
        "seed_everything": "seed",
    }
    assert short_names(["model.credit.init_args.beta", "foo.beta", "data.group_size"]) == {
        "model.credit.init_args.beta": "credit.beta",
        "foo.beta": "foo.beta",
        "data.group_size": "group_size",
    }


def test_slugify():
    assert slugify("weights=live") == "weights=live"
    assert slugify("path=/tmp/a b") == "path=-tmp-a-b"
    assert slugify("x=1e-4") == "x=1e-4"


def test_parse_set_reads_yaml_values():
    assert parse_set(["model.model_path=/tmp/x", "trainer.max_steps=3", "model.credit.init_args.clip=.inf"]) == {
        "model.model_path": "/tmp/x",
        "trainer.max_steps": 3,
        "model.credit.init_args.clip": math.inf,
    }
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_set(["no_equals_sign"])


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"grid": {}}, "non-empty"),
        ({"grid": {"a.b": 1}}, "non-empty list"),
        ({"grid": {"a.b": [1]}, "fixed": {"a.b": 2}}, "set by both"),
        ({"grid": {"a.b": [1], "s": [{"a.b": 2}]}}, "set by both"),
        ({"grid": {"a.b": [1]}, "extra": 1}, "unknown grid file keys"),
        ({"grid": {"a.b": [0.1, "0.1"]}}, "same slug"),
        ({"grid": {"config": ["no/such/file.yaml"]}}, "not found"),
    ],
)
def test_bad_grid_files_are_rejected(tmp_path, spec, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        expand(parse_grid(spec, tmp_path, "g"))


def test_paths_resolve_next_to_the_grid_file_first(tmp_path):
    (tmp_path / "local.yaml").write_text("{}\n")
    grid_file = tmp_path / "my_grid.yaml"
    grid_file.write_text(
        yaml.safe_dump({"base": ["configs/default.yaml", "local.yaml"], "grid": {"seed_everything": [0]}})
    )
    grid = load_grid(grid_file, {"trainer.max_steps": 3})
    assert grid.name == "my_grid"  # the file stem by default
    assert grid.base == (ROOT / "configs/default.yaml", (tmp_path / "local.yaml").resolve())
    assert grid.fixed == {"trainer.max_steps": 3}


@pytest.mark.parametrize("path", GRIDS, ids=lambda p: p.name)
def test_shipped_grids_expand(path):
    points = expand(load_grid(path))
    assert points and len({p.slug for p in points}) == len(points)


def covering_points(points):
    """As few points as take every value of every axis between them: as many as the longest axis
    has values, the i-th taking each axis's i-th value (cycling through the shorter axes)."""
    values: dict[str, list[str]] = {}  # axis -> its value labels, in grid order
    for p in points:
        for axis, label in p.labels.items():
            if label not in values.setdefault(axis, []):
                values[axis].append(label)
    by_labels = {tuple(p.labels.items()): p for p in points}
    longest = max(map(len, values.values()))
    return [by_labels[tuple((axis, v[i % len(v)]) for axis, v in values.items())] for i in range(longest)]


def test_covering_points_take_every_value_of_every_axis(tmp_path):
    axes = {"model.credit.init_args.clip": [0.2, 0.5, 0.8], "seed_everything": [0, 1], "data.group_size": [4]}
    points = expand(grid_of(tmp_path, axes))
    kept = covering_points(points)
    assert [p.slug for p in kept] == [
        "clip=0.2_seed=0_group_size=4",
        "clip=0.5_seed=1_group_size=4",
        "clip=0.8_seed=0_group_size=4",
    ]
    for path in GRIDS:
        points = expand(load_grid(path))
        kept = covering_points(points)
        assert {x for p in kept for x in p.labels.items()} == {x for p in points for x in p.labels.items()}, path.name


@pytest.mark.e2e
def test_shipped_grids_validate():
    """One validation subprocess over points covering every value of every shipped grid; an
    invalid point among them comes back with its constructor's error, under its own name."""
    jobs = {}
    for path in GRIDS:
        grid = load_grid(path)
        for p in covering_points(expand(grid)):
            jobs[f"{grid.name}/{p.slug}"] = fit_args(grid, p) + sweep.run_flags(grid, p)
    jobs["bad"] = [*next(iter(jobs.values())), "--data.group_size", "1"]
    errors = sweep.check_points(jobs)
    assert list(errors) == ["bad"] and "data.group_size must be >= 2" in errors["bad"], errors


# -- reports from run directories (no training) ----------------------------------------
def fake_run(run_dir: Path, final: float, curve: list[float], base: float | None = 0.1) -> None:
    run_dir.mkdir(parents=True)
    summary = {
        "base": None if base is None else {"val/acc": base},
        "final": {"val/acc": final, "val/avg@4": final / 2, "val/pass@4": min(1.0, final * 2)},
        "rl_steps": 10,
        "optimizer_steps": 10,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    rows = ["step,train/acc,val/acc"] + [f"{i},,{acc}" for i, acc in enumerate(curve)]
    rows.insert(2, "1,0.5,")  # a training row: no val/acc
    (run_dir / "metrics.csv").write_text("\n".join(rows) + "\n")
    (run_dir / "sweep_point.json").write_text(json.dumps({"wall_time_s": 12.5}))


def test_read_curve_keeps_only_evaluation_rows(tmp_path):
    fake_run(tmp_path / "r", 0.4, [0.1, 0.6, 0.4])
    assert read_curve(tmp_path / "r" / "metrics.csv") == [(0, 0.1), (1, 0.6), (2, 0.4)]
    run = sweep.read_run(tmp_path / "r")
    assert run.best_acc == 0.6 and run.wall_time == 12.5 and run.rl_steps == 10


def test_best_acc_ignores_the_base_evaluation(tmp_path):
    fake_run(tmp_path / "r", 0.2, [0.9, 0.3, 0.2])  # the base scored 0.9, training hurt
    assert sweep.read_run(tmp_path / "r").best_acc == 0.3


def test_results_tables_and_seed_aggregation(tmp_path):
    grid = grid_of(
        tmp_path,
        {"config": ["configs/credit/uniform.yaml", "configs/credit/contrastive.yaml"], "seed_everything": [0, 1]},
    )
    points = expand(grid)
    finals = {"uniform_seed=0": 0.2, "uniform_seed=1": 0.4, "contrastive_seed=0": 0.5, "contrastive_seed=1": 0.7}
    out = tmp_path / "out"
    for p in points:
        fake_run(out / p.slug, finals[p.slug], [0.1, finals[p.slug]])
    results = {p.index: sweep.read_run(out / p.slug) for p in points}
    written = sweep.write_results(out, grid, points, results)
    names = {p.name for p in written}
    assert {"results.csv", "results.md", "results_by_seed.csv", "acc_vs_config.png", "learning_curves.png"} <= names
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["slug"] for r in rows] == [p.slug for p in points]
    assert rows[2]["config"] == "contrastive" and rows[2]["seed"] == "0"
    assert float(rows[2]["val/acc"]) == 0.5 and float(rows[2]["val/pass@4"]) == 1.0
    assert float(rows[2]["wall_s"]) == 12.5
    with (out / "results_by_seed.csv").open() as f:
        agg = {r["config"]: r for r in csv.DictReader(f)}
    assert float(agg["contrastive"]["val/acc mean"]) == pytest.approx(0.6)
    assert float(agg["contrastive"]["val/acc std"]) == pytest.approx(math.sqrt(0.02))  # sample std
    assert agg["uniform"]["seeds"] == "2/2"
    # the 95% t interval with n = 2: 0.6 ± t_{0.975,1} 0.1 = 0.6 ± 12.706205 * 0.1
    assert agg["contrastive"]["val/acc n"] == "2"
    assert float(agg["contrastive"]["val/acc 95% CI lo"]) == pytest.approx(0.6 - 1.2706205, abs=1e-6)
    assert float(agg["contrastive"]["val/acc 95% CI hi"]) == pytest.approx(0.6 + 1.2706205, abs=1e-6)
    md = (out / "results.md").read_text()
    assert "| contrastive | 2/2 | 0.600 ± 0.141 | [-0.671, 1.871] |" in md
    assert "val/acc 95% CI" in md and "Student t interval" in md
    assert "Against the baseline" not in md and "diff" not in rows[0]  # no --baseline, no comparison


# -- the command, with stand-in subprocesses -------------------------------------------
FAKE_FIT = """
import json, sys
from pathlib import Path
args = sys.argv[1:]
flag = {k: v for k, v in zip(args[::2], args[1::2])}
run = Path(flag["--run_root"]) / flag["--run_name"] / flag["--run_version"]
run.mkdir(parents=True, exist_ok=True)
if "--bad" in args:  # fails before training: nothing to resume from
    print("cepo: error: x.y: bad value", file=sys.stderr)
    sys.exit(2)
if "--fail" in args and flag.get("--ckpt_path") != "last":  # crashes after a checkpoint
    (run / "checkpoints").mkdir(exist_ok=True)
    (run / "checkpoints" / "last.ckpt").write_text("step 3")
    print("step 3 done\\nTraceback (most recent call last):\\nRuntimeError: boom at step 4", file=sys.stderr)
    sys.exit(3)
clip = float(flag["--model.credit.init_args.clip"])
(run / "summary.json").write_text(json.dumps({"base": None, "final": {"val/acc": clip}, "rl_steps": 1}))
"""


def test_failed_points_are_reported_then_resumed_from_their_checkpoint(tmp_path, monkeypatch, capsys):
    script = tmp_path / "fake_fit.py"
    script.write_text(FAKE_FIT)
    monkeypatch.setattr(sweep, "fit_command", lambda args: [sys.executable, str(script), *args])
    monkeypatch.setattr(sweep, "check_points", lambda arg_lists: {})
    grid_file = tmp_path / "g.yaml"
    tags = [{"x.y": "ok"}, {"x.y": "--fail"}, {"x.y": "--bad"}]
    grid_file.write_text(
        yaml.safe_dump({"name": "g", "grid": {"model.credit.init_args.clip": [0.2, 0.5], "tag": tags}})
    )
    argv = [str(grid_file), "--out", str(tmp_path / "out"), "--parallel", "2"]
    with pytest.raises(SystemExit, match="4 of 6 point"):
        sweep_main(argv)
    text = capsys.readouterr().out
    assert "clip=0.2_tag=ok" in text and "FAILED" in text
    out = tmp_path / "out" / "g"

    def table():
        with (out / "results.csv").open() as f:
            return {r["slug"]: r for r in csv.DictReader(f)}

    rows = table()
    assert {slug: r["status"] for slug, r in rows.items()} == {
        "clip=0.2_tag=ok": "ok",
        "clip=0.2_tag=--fail": "failed",
        "clip=0.2_tag=--bad": "failed",
        "clip=0.5_tag=ok": "ok",
        "clip=0.5_tag=--fail": "failed",
        "clip=0.5_tag=--bad": "failed",
    }
    assert rows["clip=0.2_tag=--fail"]["error"] == "RuntimeError: boom at step 4"
    assert rows["clip=0.5_tag=--bad"]["error"] == "cepo: error: x.y: bad value"
    assert rows["clip=0.2_tag=ok"]["error"] == ""
    md = (out / "results.md").read_text()
    assert "## Failed points (4)" in md and "### clip=0.5_tag=--fail" in md
    assert "step 3 done\nTraceback (most recent call last):\nRuntimeError: boom at step 4\n```" in md
    meta = json.loads((out / "clip=0.2_tag=--fail" / "sweep_point.json").read_text())
    assert meta["returncode"] == 3 and meta["status"] == "failed" and meta["wall_time_s"] >= 0

    # the re-run resumes the points that left a checkpoint, and only those, from it
    with pytest.raises(SystemExit, match="2 of 6 point"):
        sweep_main(argv)
    text = capsys.readouterr().out
    assert "resuming 2 unfinished point(s)" in text and text.count(" skip ") == 2
    rows = table()
    assert rows["clip=0.5_tag=--fail"]["status"] == "ok" and rows["clip=0.5_tag=--fail"]["error"] == ""
    assert rows["clip=0.5_tag=--bad"]["status"] == "failed"
    log = (out / "clip=0.5_tag=--fail" / "stdout.log").read_text()
    assert "boom at step 4" in log and log.count("--ckpt_path last") == 1  # both attempts kept
    assert "--ckpt_path" not in (out / "clip=0.5_tag=--bad" / "stdout.log").read_text()


FAKE_FIT_SEEDS = """
import json, sys
from pathlib import Path
args = sys.argv[1:]
flag = {k: v for k, v in zip(args[::2], args[1::2])}
run = Path(flag["--run_root"]) / flag["--run_name"] / flag["--run_version"]
run.mkdir(parents=True, exist_ok=True)
key = (flag["--model.credit.init_args.clip"], flag["--seed_everything"])
if key == ("0.3", "2"):
    print("RuntimeError: boom", file=sys.stderr)
    sys.exit(3)
acc = {"0.2": [0.30, 0.35, 0.40], "0.3": [0.40, 0.45, None], "0.5": [0.32, 0.38, 0.41]}[key[0]][int(key[1])]
(run / "summary.json").write_text(json.dumps({"base": None, "final": {"val/acc": acc}, "rl_steps": 1}))
(run / "metrics.csv").write_text(f"step,val/acc\\n0,0.1\\n1,{acc}\\n")
"""


def test_baseline_comparison_in_every_report(tmp_path, monkeypatch):
    """clip=0.5 against clip=0.2, same seeds: paired. Differences 0.02, 0.03, 0.01: mean 0.02,
    s_d = 0.01, t = 0.02 / (0.01 / sqrt 3) = 2 sqrt 3, df = 2, so p = 1 - t / sqrt(2 + t^2)
    = 1 - sqrt(12/14) = 0.074180; CI 0.02 ± 4.302653 * 0.01 / sqrt 3; power
    ((1.959964 + 0.841621) * 0.01 / 0.02)^2 = 1.96 -> 2 seeds. clip=0.3 lost seed 2: Welch."""
    script = tmp_path / "fake_fit.py"
    script.write_text(FAKE_FIT_SEEDS)
    monkeypatch.setattr(sweep, "fit_command", lambda args: [sys.executable, str(script), *args])
    monkeypatch.setattr(sweep, "check_points", lambda arg_lists: {})
    grid_file = tmp_path / "g.yaml"
    axes = {"model.credit.init_args.clip": [0.2, 0.3, 0.5], "seed_everything": [0, 1, 2]}
    grid_file.write_text(yaml.safe_dump({"name": "g", "grid": axes}))
    argv = [str(grid_file), "--out", str(tmp_path / "out"), "--parallel", "2"]
    for bad, message in [("clip=0.7", "clip has no value '0.7' (values: 0.2, 0.3, 0.5)"), ("seed=0", "not a non-seed")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            sweep_main([*argv, "--baseline", bad])
    assert not (tmp_path / "out").exists()  # checked before anything runs
    with pytest.raises(SystemExit, match="1 of 9 point"):
        sweep_main([*argv, "--baseline", "model.credit.init_args.clip=0.2"])
    out = tmp_path / "out" / "g"
    with (out / "results.csv").open() as f:
        rows = {r["slug"]: r for r in csv.DictReader(f)}
    for col in ("baseline", "diff", "diff 95% CI lo", "diff 95% CI hi", "p", "test", "seeds for 80% power"):
        assert col in rows["clip=0.5_seed=0"]
    paired = rows["clip=0.5_seed=1"]
    assert paired["baseline"] == "clip=0.2" and paired["test"] == "paired"
    assert float(paired["diff"]) == pytest.approx(0.02)
    assert float(paired["p"]) == pytest.approx(1 - math.sqrt(12 / 14), abs=1e-9)
    half = 4.302653 * 0.01 / math.sqrt(3)
    assert float(paired["diff 95% CI lo"]) == pytest.approx(0.02 - half, abs=1e-6)
    assert float(paired["diff 95% CI hi"]) == pytest.approx(0.02 + half, abs=1e-6)
    assert float(paired["seeds for 80% power"]) == 2
    welch = stats.welch_test([0.30, 0.35, 0.40], [0.40, 0.45])
    assert rows["clip=0.3_seed=0"]["test"] == "welch" and rows["clip=0.3_seed=2"]["test"] == "welch"
    assert float(rows["clip=0.3_seed=0"]["p"]) == pytest.approx(welch.p)
    assert float(rows["clip=0.3_seed=0"]["diff"]) == pytest.approx(0.075)
    assert rows["clip=0.2_seed=0"]["test"] == "baseline" and rows["clip=0.2_seed=0"]["p"] == ""
    with (out / "results_by_seed.csv").open() as f:
        agg = {r["clip"]: r for r in csv.DictReader(f)}
    assert agg["0.3"]["seeds"] == "2/3" and agg["0.3"]["val/acc n"] == "2" and agg["0.3"]["test"] == "welch"
    assert float(agg["0.5"]["p"]) == pytest.approx(1 - math.sqrt(12 / 14), abs=1e-9)
    # 0.35 + 4.302653 * 0.05 / sqrt 3
    assert float(agg["0.2"]["val/acc 95% CI hi"]) == pytest.approx(0.35 + 0.1242069, abs=1e-6)
    md = (out / "results.md").read_text()
    assert "## Against the baseline `clip=0.2` (final val/acc)" in md
    assert "paired t-test" in md and "Welch's t-test" in md and "80% power" in md
    assert "| 0.5 | 3, 3 | +0.020 | [-0.005, +0.045] | 0.0742 | paired | 2 |" in md
    assert f"| 0.3 | 3, 2 | +0.075 | [{welch.lo:+.3f}, {welch.hi:+.3f}] | {welch.p:.4f} | welch |" in md


# -- the real thing: validation subprocess and tiny training runs -----------------------
def write_grid(path: Path, axes: dict, model_path: Path) -> Path:
    spec = {
        "name": "tiny",
        "base": ["configs/default.yaml", "configs/credit/contrastive.yaml"],
        "fixed": {**{k: v for k, v in TINY.items() if k not in axes}, "model.model_path": str(model_path)},
        "grid": axes,
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_invalid_point_stops_the_sweep_before_anything_runs(tmp_path, tiny_dir, monkeypatch):
    grid = write_grid(tmp_path / "bad.yaml", {"data.group_size": [1, 4]}, tiny_dir)

    def no_run(*args, **kwargs):
        raise AssertionError("a point ran although another one is invalid")

    def check_in_process(cmd, **kwargs):
        """The validation subprocess's body, run here (test_shipped_grids_validate runs the process)."""
        assert cmd[1:4] == ["-m", "cepo.sweep", "--check"], cmd
        sweep_run._check_worker(Path(cmd[4]))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(sweep, "run_all", no_run)
    monkeypatch.setattr(sweep_run.subprocess, "run", check_in_process)
    with pytest.raises(ValueError) as err:  # bad input: `cepo` prints it and exits with 2
        sweep_main([str(grid), "--out", str(tmp_path / "out")])
    message = str(err.value)
    assert "point 1/2 (group_size=1)" in message and "data.group_size must be >= 2" in message
    assert "group_size=4" not in message
    assert not (tmp_path / "out").exists()


@pytest.mark.e2e
def test_tiny_grid_runs_then_skips(tmp_path, tiny_dir, monkeypatch, capsys):
    """Two real points of a two-axis grid (the expansion of bigger grids is tested above, without
    training): each runs, the tables and plots are written, and a re-run skips both."""
    axes = {"model.credit.init_args.clip": [0.2, 0.5], "model.credit.init_args.beta": [0.25]}
    grid = write_grid(tmp_path / "clip_beta.yaml", axes, tiny_dir)
    out = tmp_path / "out"
    sweep_main([str(grid), "--out", str(out)])
    text = capsys.readouterr().out
    slugs = ["clip=0.2_beta=0.25", "clip=0.5_beta=0.25"]
    for i, slug in enumerate(slugs, start=1):
        assert f"[{i}/2] {slug}" in text
        run = out / "tiny" / slug
        assert (run / "summary.json").is_file() and (run / "stdout.log").is_file()
        assert json.loads((run / "sweep_point.json").read_text())["status"] == "ok"
        assert read_curve(run / "metrics.csv")  # evaluations were logged
    config = yaml.safe_load((out / "tiny" / "clip=0.5_beta=0.25" / "config.yaml").read_text())
    assert config["model"]["credit"]["init_args"] == {"clip": 0.5, "beta": 0.25}
    for name in ("results.csv", "results.md", "acc_vs_clip.png", "learning_curves.png"):
        assert (out / "tiny" / name).stat().st_size > 0

    def no_subprocess(*args, **kwargs):
        raise AssertionError("a finished point was run or validated again")

    monkeypatch.setattr(sweep.subprocess, "run", no_subprocess)
    monkeypatch.setattr(sweep.subprocess, "Popen", no_subprocess)
    sweep_main([str(grid), "--out", str(out)])
    text = capsys.readouterr().out
    assert text.count(" skip ") == 2
    with (out / "tiny" / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["ok"] * 2
    assert all(r["rl_steps"] == "2" and r["val/avg@2"] != "" for r in rows)
