"""DDP on CPU (gloo, 2 processes): the GPU code path that can run here."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_fit_ddp_gloo_two_processes(tmp_path, tiny_dir):
    cmd = [
        sys.executable,
        "-m",
        "cepo.cli",
        "fit",
        "--config",
        str(ROOT / "configs" / "default.yaml"),
        "--model.model_path",
        str(tiny_dir),
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp",
        "--trainer.max_steps",
        "2",
        "--data.prompts_per_step",
        "2",
        "--data.group_size",
        "4",
        "--data.eval_size",
        "8",
        "--data.eval_k",
        "2",
        "--run_root",
        str(tmp_path),
        "--run_name",
        "ddp",
        "--run_version",
        "v",
        "--export_hf",
        "false",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "v" / "summary.json").read_text())
    assert summary["rl_steps"] == 2 and summary["optimizer_steps"] == 2
    assert "val/acc" in summary["final"]
