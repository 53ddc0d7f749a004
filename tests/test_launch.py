"""Sweep launchers: the resources, the SLURM job array submitit would submit (checked without a
cluster: a stand-in ``sbatch`` records the script), a real dispatch through submitit's local
executor that must give the local launcher's results, and a preempted point that is requeued
and resumes from its checkpoint."""

import csv
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cepo import sweep
from cepo.sweep import Resources, sweep_main
from tests.test_sweep import TINY, write_grid

pytest.importorskip("submitit")


# -- resources ------------------------------------------------------------------------------------
def test_resources_from_the_grid_file_then_flags(tmp_path):
    r = Resources.parse(
        {"gpus_per_node": 4, "time_min": 120, "mem_gb": 64, "partition": "gpu", "setup": ["module load cuda"]}
    )
    assert r.tasks == 4  # one process per GPU, as Lightning's SLURM environment expects
    params = r.slurm_parameters("clip")
    assert params["ntasks_per_node"] == 4 and params["gpus_per_node"] == 4 and params["time"] == 120
    assert params["mem"] == "65536MB" and params["partition"] == "gpu" and params["setup"] == ["module load cuda"]
    assert "account" not in params and Resources.parse({}).tasks == 1
    assert Resources.parse({"tasks_per_node": 2, "gpus_per_node": 4}).tasks == 2


@pytest.mark.parametrize(
    "mapping, message",
    [
        ({"gpus": 1}, "resources: unknown key(s) ['gpus']"),
        ({"time_min": 0}, "resources.time_min must be an integer >= 1"),
        ({"gpus_per_node": "two"}, "resources.gpus_per_node must be an integer >= 0"),
        ({"mem_gb": -1}, "resources.mem_gb must be a number > 0"),
        ({"setup": "module load cuda"}, "resources.setup must be a list of shell lines"),
    ],
)
def test_bad_resources_are_named(mapping, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Resources.parse(mapping)


# -- the SLURM submission, without a cluster ------------------------------------------------------
FAKE_SBATCH = """#!/bin/sh
# records the batch script it was given and answers like sbatch
n=$(ls "{log}" 2>/dev/null | wc -l)
cp "$1" "{log}/script_$n.sh"
echo "Submitted batch job 4242"
"""
FAKE_SACCT = """#!/bin/sh
# every array task of job 4242 is still running
echo "JobID|State|NodeList"
for i in 0 1 2 3; do echo "4242_$i|RUNNING|node$i"; done
"""


def test_slurm_launcher_submits_one_job_array_with_the_resources(tmp_path, monkeypatch, capsys):
    bin_dir, log = tmp_path / "bin", tmp_path / "sbatch_log"
    bin_dir.mkdir()
    log.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH.format(log=log)), ("sacct", FAKE_SACCT), ("srun", "#!/bin/sh\n")):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(sweep, "check_points", lambda arg_lists: {})
    grid = tmp_path / "g.yaml"
    spec = {
        "name": "g",
        "base": ["configs/default.yaml"],
        "resources": {"gpus_per_node": 2, "time_min": 240, "partition": "gpu", "setup": ["source .venv/bin/activate"]},
        "grid": {"model.credit.init_args.clip": [0.2, 0.5], "seed_everything": [0, 1]},
    }
    grid.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    argv = [str(grid), "--out", str(out), "--launcher", "slurm", "--detach", "--account", "lab", "--mem_gb", "80"]
    sweep_main(argv)
    text = capsys.readouterr().out
    assert "submitted 4 point(s) with the slurm launcher: job 4242" in text and "detached" in text
    script = (log / "script_0.sh").read_text()
    for line in (
        "#SBATCH --array=0-3%4",  # one task per point
        "#SBATCH --gpus-per-node=2",
        "#SBATCH --ntasks-per-node=2",  # one process per GPU for Lightning's SLURM environment
        "#SBATCH --cpus-per-task=2",
        "#SBATCH --time=240",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=lab",  # flags win over (and add to) the grid file
        "#SBATCH --mem=81920MB",
        "#SBATCH --job-name=cepo-g",
        "#SBATCH --signal=USR2@90",  # the preemption/timeout notice, 90 s ahead
        "source .venv/bin/activate",
    ):
        assert line in script.splitlines(), (line, script)
    assert "srun --unbuffered" in script and "submitit.core._submit" in script
    jobs = json.loads((out / "g" / "jobs.json").read_text())
    assert jobs == {
        "clip=0.2_seed=0": "4242_0",
        "clip=0.2_seed=1": "4242_1",
        "clip=0.5_seed=0": "4242_2",
        "clip=0.5_seed=1": "4242_3",
    }
    # a pickled point carries its command and run directory, ready for the node
    pickles = sorted((out / "g" / ".submitit").glob("4242_*/*_submitted.pkl"))
    assert [p.parent.name for p in pickles] == ["4242_0", "4242_1", "4242_2", "4242_3"]
    job = pickle.loads(pickles[3].read_bytes()).function
    assert job.run_dir == out / "g" / "clip=0.5_seed=1" and job.meta["slug"] == "clip=0.5_seed=1"
    flags = dict(zip(job.cmd[::1], job.cmd[1::1]))
    assert flags["--run_version"] == "clip=0.5_seed=1" and flags["--seed_everything"] == "1"
    assert flags["--model.credit.init_args.clip"] == "0.5" and "--ckpt_path" not in job.command()

    # the same command while the array runs: re-attached, nothing submitted again
    sweep_main(argv)
    text = capsys.readouterr().out
    assert text.count("is running, waiting for it") == 4 and "submitted" not in text
    assert sorted(p.name for p in log.iterdir()) == ["script_0.sh"]


def test_slurm_launcher_off_a_cluster_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun
    monkeypatch.setattr(sweep, "check_points", lambda arg_lists: {})
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({"name": "g", "grid": {"seed_everything": [0]}}))
    with pytest.raises(ValueError, match="--launcher slurm: no srun on PATH"):
        sweep_main([str(grid), "--out", str(tmp_path / "out"), "--launcher", "slurm"])


def test_detach_needs_the_slurm_launcher(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({"name": "g", "grid": {"seed_everything": [0]}}))
    with pytest.raises(ValueError, match="--detach needs --launcher slurm"):
        sweep_main([str(grid), "--out", str(tmp_path / "out"), "--detach"])


# -- a real dispatch through submitit's local executor ----------------------------------------------
def rows(path: Path) -> list[dict]:
    with path.open() as f:
        return [{k: v for k, v in r.items() if k != "wall_s"} for r in csv.DictReader(f)]


@pytest.mark.slow  # 40-50 s: two full sweeps; the SLURM script and launcher units stay in the default suite
def test_submitit_local_gives_the_local_launchers_results(tmp_path, tiny_dir, capsys):
    grid = write_grid(tmp_path / "g.yaml", {"model.credit.init_args.clip": [0.2, 0.5]}, tiny_dir)
    sweep_main([str(grid), "--out", str(tmp_path / "local"), "--parallel", "2"])
    sweep_main([str(grid), "--out", str(tmp_path / "submitit"), "--launcher", "submitit-local", "--time_min", "20"])
    text = capsys.readouterr().out
    assert "submitted 2 point(s) with the submitit-local launcher" in text
    local, remote = tmp_path / "local" / "tiny", tmp_path / "submitit" / "tiny"
    assert rows(remote / "results.csv") == rows(local / "results.csv")  # same runs, same numbers
    assert all(r["status"] == "ok" and r["val/acc"] != "" for r in rows(remote / "results.csv"))
    for name in ("results.md", "acc_vs_clip.png", "learning_curves.png"):
        assert (remote / name).stat().st_size > 0
    meta = json.loads((remote / "clip=0.2" / "sweep_point.json").read_text())
    assert meta["launcher"] == "submitit-local" and meta["status"] == "ok" and meta["job_id"]


@pytest.mark.e2e
@pytest.mark.slow
def test_a_preempted_point_is_requeued_and_resumes_from_its_checkpoint(tmp_path, tiny_dir):
    """The point's submitit task gets the preemption notice (USR2) after the first checkpoint:
    the run saves last.ckpt, the task is requeued, and the requeued task resumes from it."""
    fixed = {**TINY, "trainer.max_steps": 8, "checkpoint.every_n_train_steps": 2, "trainer.val_check_interval": 4}
    grid = tmp_path / "g.yaml"
    spec = {
        "name": "tiny",
        "base": ["configs/default.yaml"],
        "fixed": {
            **fixed,
            "model.model_path": str(tiny_dir),
            "data.task": "tests.helpers.TextParity",
            "trainer.callbacks": ["tests.helpers.SlowSteps"],  # the notice must come mid-run
        },
        "grid": {"seed_everything": [0]},
    }
    grid.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "cepo", "sweep", str(grid), "--out", str(out), "--launcher", "submitit-local"]
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run = out / "tiny" / "seed=0"
    deadline = time.time() + 600
    while not list((run / "checkpoints").glob("*.ckpt")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert proc.poll() is None, proc.stdout.read()
    task = next(pid for pid in task_pids(out))
    os.kill(task, signal.SIGUSR2)  # what SLURM sends 90 s before the limit or on preemption
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-3000:]
    log = (run / "stdout.log").read_text()
    commands = [line for line in log.splitlines() if line.startswith("[20") and " -m cepo fit " in line]
    assert len(commands) == 2 and commands[1].endswith("--ckpt_path last"), commands  # the requeued task resumed
    assert "cepo: stopped on SIGTERM after saving checkpoints/last.ckpt" in log, log[-3000:]
    first_attempt = log.split(commands[1])[0]  # it stopped before the end: the resume trained the rest
    assert "stopped on SIGTERM" in first_attempt and "`max_steps=8` reached" not in first_attempt
    steps = [int(float(r["step"])) for r in csv.DictReader(open(run / "metrics.csv")) if r.get("train/reward_mean")]
    assert steps == list(range(8))  # every step once, none twice
    assert json.loads((run / "summary.json").read_text())["rl_steps"] == 8


def task_pids(folder: Path) -> list[int]:
    """Processes running submitit's job runner for jobs under ``folder``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if b"submitit.core._submit" in args and any(str(folder).encode() in a for a in args):
            found.append(int(proc.name))
    return found
