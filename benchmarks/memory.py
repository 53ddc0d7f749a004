"""Peak memory and time of cepo's training work, per stage and per setting, side by side.

Two kinds of measurement, each variant in a fresh process (its own peak), variants alternating
(A B A B ...) over ``--rounds``:

- ``step``: short ``cepo fit`` runs (the built-in default; SmolLM2-135M-Instruct on GSM8K with the
  transformers engine, 2 prompts x 8 rollouts, 256 new tokens), reading the kernel's peak
  resident counter as each stage ends (restarted as it begins): the peak while each stage ran
  (``cepo.distributed.stage``: generation, evidence, update, ...) and the stage's seconds
  (``time/*``), for each step.
- ``pass``: the training pass alone (forward and backward of one group's rows through cepo's
  scorer, as ``RolloutStep.update`` runs it) on random-init LoRA models of real shapes built from
  a config: Qwen2.5-0.5B and Qwen3-VL-2B's language model (``qwen3-vl-2b-text``: its widths, heads
  and vocabulary of 151,936 in Qwen2 layers, which lack only the q/k norms), with
  ``--layers`` decoder layers (real widths and vocabulary; time and activation memory grow with
  the layer count), at several response lengths. Added peak = peak during the pass minus the
  resident memory before it.

Variants: ``plain`` (each row runs its prompt), ``shared`` (each group's prompt once:
``model.share_prompts``), ``checkpointing`` (transformers' activation checkpointing, plain rows),
and ``shared+budget`` (shared, micro-batches of at most ``--budget`` tokens). On a GPU the peak is
``torch.cuda.max_memory_allocated``. Results go to ``benchmarks/results/memory.{json,md}``.

    .venv/bin/python benchmarks/memory.py step --models builtin smollm2 --rounds 1
    .venv/bin/python benchmarks/memory.py pass --models qwen2.5-0.5b qwen3-vl-2b-text --lengths 128 256
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

STEP_VARIANTS = {
    "config": [],  # the configs as shipped
    "before": ["--model.share_prompts", "false", "--model.max_tokens_per_micro_batch", "null"],  # 2026-12-04's
    "plain": ["--model.share_prompts", "false"],
    "shared": ["--model.share_prompts", "true"],
    "checkpointing": ["--model.gradient_checkpointing", "true"],
    "shared+budget": ["--model.share_prompts", "true", "--model.max_tokens_per_micro_batch", "1200"],
}
STEP_MODELS = {
    "builtin": ["--config", "configs/default.yaml", "--data.prompts_per_step", "8", "--data.group_size", "8"],
    "smollm2": [
        "--config",
        "configs/default.yaml",
        "--config",
        "configs/model/smollm2.yaml",
        "--config",
        "configs/data/gsm8k.yaml",
        "--config",
        "configs/engine/hf.yaml",
        "--data.prompts_per_step",
        "2",
        "--data.group_size",
        "8",
    ],
}


def rss_mb() -> float:
    """This process's resident memory now (MB)."""
    return _status("VmRSS")


def peak_mb() -> float:
    """The process's peak resident memory since the last :func:`reset_peak` (MB)."""
    return _status("VmHWM")


def reset_peak() -> None:
    """Restart the kernel's peak-resident counter at the current resident memory (Linux
    ``clear_refs`` 5). No sampling thread: a polling thread holds the GIL at random moments and,
    on a loaded machine, stalls a decode loop of small torch calls many times over."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _status(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(key)


class StagePeaks:
    """The peak resident memory of each stage of ``cepo.distributed.stage`` (its label with the
    step number dropped): the counter restarts as a stage begins and is read as it ends; an
    enclosing stage also gets the peaks of the stages it holds."""

    def __init__(self):
        self.peaks: dict[str, float] = {}
        self.open: list[float] = []

    def install(self):
        import contextlib
        import re

        from cepo import distributed

        original = distributed.stage

        @contextlib.contextmanager
        def stage(name):
            if self.open:  # the enclosing stage's peak so far
                self.open[-1] = max(self.open[-1], peak_mb())
            reset_peak()
            self.open.append(0.0)
            try:
                with original(name):
                    yield
            finally:
                peak = max(self.open.pop(), peak_mb())
                label = re.sub(r"rollout step \d+ > ", "", distributed.current_stage() + " > " + name)
                label = label.split(" > ")[-1]
                self.peaks[label] = max(self.peaks.get(label, 0.0), peak)
                if self.open:
                    self.open[-1] = max(self.open[-1], peak)

        distributed.stage = stage
        return self


# -- workers (one per variant, in their own process) ------------------------------------------------
def step_worker(model: str, variant: str, steps: int, out: Path) -> dict:
    import csv

    from cepo.cli import cli_main

    stages = StagePeaks().install()
    reset_peak()
    cli_main(
        [
            "fit",
            *STEP_MODELS[model],
            *STEP_VARIANTS[variant],
            "--trainer.max_steps",
            str(steps),
            "--trainer.val_check_interval",
            str(10**6),
            "--trainer.enable_progress_bar",
            "false",
            "--report_base",
            "false",
            "--export_hf",
            "false",
            "--checkpoint.save_last",
            "false",
            "--checkpoint.every_n_train_steps",
            str(10**6),
            "--token_weights.every_n_steps",
            "0",
            "--data.eval_size",
            "4",
            "--data.eval_k",
            "0",
            "--run_root",
            str(out),
            "--run_name",
            "run",
            "--run_version",
            "v",
        ]
    )
    rows = [r for r in csv.DictReader(open(out / "run" / "v" / "metrics.csv")) if r.get("time/total")]
    times = [{k[5:]: float(v) for k, v in r.items() if k.startswith("time/") and v} for r in rows]
    keys = ("loss", "grad_norm", "reward_mean", "entropy", "response_len")
    metrics = [{k: float(r[f"train/{k}"]) for k in keys if r.get(f"train/{k}")} for r in rows]
    run_peak = max(stages.peaks.values(), default=0.0)  # the counter restarts at each stage
    out = {"peak_mb": max(run_peak, peak_mb()), "stage_peak_mb": stages.peaks, "step_times": times}
    return {**out, "step_metrics": metrics}


def pass_worker(model: str, variant: str, length: int, layers: int, rows: int, prompt: int, budget: int) -> dict:
    import dataclasses
    import tempfile

    import torch
    from gpu_shapes import SHAPES, build

    from cepo.policy import load_policy
    from cepo.rollout.batch import pack
    from cepo.scoring import Packed, Scorer
    from cepo.scoring.logprobs import token_logprobs

    torch.set_num_threads(int(os.environ.get("CEPO_NUM_THREADS", "1")))
    if model == "qwen3-vl-2b-text":  # the language model's sizes, as a text model (Qwen2 layers: no q/k norm)
        shape = dataclasses.replace(SHAPES["qwen3-vl-2b"], name=model, vision_depth=None, layers=layers)
    else:
        shape = dataclasses.replace(SHAPES[model], layers=layers)
    with tempfile.TemporaryDirectory() as tmp:
        path = build(shape, Path(tmp) / "m", image_size=64)
        policy, tok, _ = load_policy(str(path), "on", gradient_checkpointing=variant == "checkpointing")
    policy.train()
    g = torch.Generator().manual_seed(0)
    low = 10  # ordinary token ids of the character tokenizer's filler
    prompt_ids = torch.randint(low, shape.vocab - 8, (prompt,), generator=g).tolist()
    lengths = torch.randint(length // 2, length + 1, (rows,), generator=g).tolist()
    responses = [torch.randint(low, shape.vocab - 8, (n,), generator=g).tolist() for n in lengths]
    ids, attn, start, mask = pack([prompt_ids] * rows, responses, tok.pad_token_id)
    packed = Packed(ids, attn, start, mask.bool())
    scorer = Scorer(
        0,
        share_prefixes=False,
        share_prompts=variant.startswith("shared"),
        max_tokens=budget if variant.endswith("budget") else None,
    )
    chunks = scorer.plan(packed, model=policy)
    weights = torch.randn(mask.shape, generator=g)
    before = rss_mb()
    reset_peak()
    t0 = time.perf_counter()
    for r, w, logits in scorer.passes(policy, packed, chunks):
        lp = token_logprobs(logits, ids[r, start : start + w])
        ((lp * weights[r, :w] * mask[r, :w]).sum() / mask.sum()).backward()
        del logits, lp
    seconds = time.perf_counter() - t0
    peak = peak_mb()
    tokens = int(attn.sum()) if not variant.startswith("shared") else prompt + int(mask.sum())
    return {
        "seconds": seconds,
        "added_peak_mb": peak - before,
        "tokens_run": tokens,
        "passes": len(chunks),
        "response_lengths": lengths,
    }


# -- the driver --------------------------------------------------------------------------------------
def run_worker(args: list[str]) -> dict:
    env = dict(os.environ, CEPO_NUM_THREADS=os.environ.get("CEPO_NUM_THREADS", "1"), HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", *args], capture_output=True, text=True, cwd=ROOT, env=env
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"worker {args} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][7:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("kind", choices=["step", "pass"])
    p.add_argument("--models", nargs="+")
    p.add_argument("--variants", nargs="+")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--lengths", nargs="+", type=int, default=[128, 256])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--prompt", type=int, default=150)
    p.add_argument("--budget", type=int, default=1200)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        spec = json.loads(a.spec)
        if a.kind == "step":
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                result = step_worker(spec["model"], spec["variant"], a.steps, Path(tmp))
        else:
            result = pass_worker(spec["model"], spec["variant"], spec["length"], a.layers, a.rows, a.prompt, a.budget)
        print("RESULT " + json.dumps(result), flush=True)
        return
    if a.kind == "step":
        models, variants, lengths = a.models or ["builtin", "smollm2"], a.variants or ["plain", "shared"], [None]
    else:
        models = a.models or ["qwen2.5-0.5b", "qwen3-vl-2b-text"]
        variants = a.variants or ["plain", "shared", "checkpointing", "shared+budget"]
        lengths = a.lengths
    common = [a.kind, "--steps", str(a.steps), "--layers", str(a.layers), "--rows", str(a.rows)]
    common += ["--prompt", str(a.prompt), "--budget", str(a.budget)]
    results: list[dict] = []
    for r in range(a.rounds):
        for model in models:
            for length in lengths:
                for variant in variants:  # alternating within each round
                    spec = {"model": model, "variant": variant, "length": length}
                    print(f"round {r + 1}: {spec}", flush=True)
                    results.append({**spec, "round": r + 1, **run_worker([*common, "--spec", json.dumps(spec)])})
    md = report(a.kind, results, a)
    from common import write_results

    payload = {"kind": a.kind, "args": vars(a), "load_average": os.getloadavg(), "results": results}
    write_results(a.out, f"memory_{a.kind}", payload, md)


def report(kind: str, results: list[dict], a) -> str:
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    if kind == "pass":
        head = [
            f"Training pass of {a.rows} rows sharing a {a.prompt}-token prompt, responses of length/2..length "
            f"tokens, {a.layers} decoder layers at real width and vocabulary, LoRA r16, float32, one thread "
            f"(load average at the end: {load})",
            "",
            "| model | length | variant | passes | tokens run | seconds | added peak (MB) | round |",
            "|---|---|---|---|---|---|---|---|",
        ]
        rows = [
            f"| {x['model']} | {x['length']} | {x['variant']} | {x['passes']} | {x['tokens_run']} | "
            f"{x['seconds']:.1f} | {x['added_peak_mb']:.0f} | {x['round']} |"
            for x in results
        ]
        return "\n".join(head + rows)
    head = [
        f"Short `cepo fit` runs, {a.steps} steps, one thread (load average at the end: {load}); "
        "peak resident memory of the process and per stage, seconds per stage of each step",
        "",
        "| model | variant | round | step | generate s | train s | samples s | teacher s | total s | peak (MB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = []
    for x in results:
        for k, t in enumerate(x["step_times"]):
            rows.append(
                f"| {x['model']} | {x['variant']} | {x['round']} | {k + 1} | {t.get('generate', 0):.1f} | "
                f"{t.get('train', 0):.1f} | {t.get('samples', 0):.1f} | {t.get('teacher', 0):.1f} | "
                f"{t.get('total', 0):.1f} | {x['peak_mb']:.0f} |"
            )
    stages = ["", "Training metrics of each step (the same rollouts: equal to float tolerance across variants):", ""]
    for x in results:
        for k, m in enumerate(x.get("step_metrics", [])):
            shown = ", ".join(f"{key} {value:.6g}" for key, value in m.items())
            stages.append(f"- {x['model']} {x['variant']} round {x['round']} step {k + 1}: {shown}")
    stages += ["", "Peak resident memory (MB) while each stage ran:", ""]
    for x in results:
        top = sorted(x["stage_peak_mb"].items(), key=lambda kv: -kv[1])[:6]
        shown = "; ".join(f"{k} {v:.0f}" for k, v in top)
        stages.append(f"- {x['model']} {x['variant']} (round {x['round']}): {shown}")
    return "\n".join(head + rows + stages)


if __name__ == "__main__":
    main()
