"""cepo against TRL's ``GRPOTrainer``, side by side: seconds per step and the accuracy gain.

One command prepares a shared model folder and a shared JSONL file, then alternates ``cepo fit``
(this venv) and TRL's ``GRPOTrainer`` (``.venv-trl``, made by ``scripts/setup_trl.sh``; the runner
``benchmarks/trl_runner.py`` imports no cepo) for ``--rounds`` rounds (round ``r``: seed
``--seed + r`` on both sides; the order flips every round), with matched settings
(:func:`cepo_fit_args` and :func:`trl_settings` map one :class:`Matched` to each side):

- the same model folder, read by both: ``tiny``, the built-in ~1M base (``cepo warmup``'s cached
  folder); ``smollm2``, SmolLM2-135M-Instruct (``asset:smollm2-135m-instruct``) with the same LoRA
  adapter on both sides (r 16, alpha 32, dropout 0, ``all-linear``) and its chat template;
- the same prompts: the train and test rows written to ``<out>/data/{train,test}.jsonl``. ``tiny``:
  cepo's arithmetic task (its default splits), which cepo reads as its own task and TRL from the
  file; ``smollm2``: one-operation problems of the same generator (operands up to 20) as a question
  with an instruction ("What is 15+6? Put the final answer within \\boxed{}."), which both read from the file
  (cepo: ``JsonlTask``, exact verifier);
- the same reward: 1 for a correct final answer, else 0, with cepo's verifier on cepo's side and
  the same rule restated in the runner on TRL's (``tests/test_benchmarks.py`` checks they agree);
- prompts per step x group size, max new tokens, temperature 1 (top-p 1, no top-k), AdamW (lr,
  weight decay 0.01, no schedule), gradient clip 1.0, no KL (beta 0), group-std advantages, token
  mean over the whole batch (TRL ``loss_type="dapo"``), ratio clip 0.2 / 0.28, one optimizer update
  per rollout batch (so the ratio is 1 and the clip never acts), micro-batches of the same size
  (cepo ``model.micro_batch_size``; TRL ``per_device_train_batch_size`` with gradient accumulation
  making up the batch), float32, one torch thread each, no gradient checkpointing. The transformers
  engine on cepo's side (TRL generates with transformers ``generate``); ``--cepo-engine vllm``
  gives cepo vLLM instead.

What is measured, the same way on both sides: the wall time of every optimizer step, from the end
of the previous one (or the start of training) to its end, generation included (cepo: the
``step_clock.StepClock`` callback; TRL: a ``TrainerCallback``), the first ``--skip`` steps
dropped; cepo's own ``time/total`` (its stages' sum) too; the whole process; and the greedy
accuracy on the first ``--eval-size`` test problems of the base folder and of each final model
folder, all by one evaluator (``cepo validate`` with the transformers engine, LoRA merged).

Writes ``benchmarks/results/vs_trl_<model>.{json,md}`` (runs under ``vs_trl_<model>/``).

    bash scripts/setup_trl.sh
    .venv/bin/python benchmarks/vs_trl.py --quick                     # seconds-long smoke run
    .venv/bin/python benchmarks/vs_trl.py --model tiny --steps 80 --rounds 2
    .venv/bin/python benchmarks/vs_trl.py --model smollm2 --steps 6 --rounds 1

``--replay`` also records every generation batch TRL trains on and replays them, in order, through
cepo's update (``benchmarks/trl_replay.py``), scoring that policy with the same evaluator: TRL's
rollouts with cepo's update, which tells a difference in the update from one in the rollouts.

    .venv/bin/python benchmarks/vs_trl.py --model tiny --steps 80 --rounds 2 --replay
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib.metadata as md
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import offline_env, write_results

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2_INSTRUCTION = "What is {problem}? Put the final answer within \\boxed{{}}."


@dataclasses.dataclass
class Matched:
    """The settings both sides get."""

    model: str  # tiny | smollm2
    model_path: str
    train_file: str
    test_file: str
    chat: bool  # prompts through the model's chat template
    verifier: str  # final_number (cepo's arithmetic task) | exact (JsonlTask, exact)
    prompts_per_step: int
    group_size: int
    max_new_tokens: int
    lr: float
    steps: int
    seed: int
    micro_batch: int  # rows per forward/backward pass
    lora: dict | None  # r, alpha, dropout, target_modules
    weight_decay: float = 0.01
    temperature: float = 1.0
    eps_low: float = 0.2
    eps_high: float = 0.28
    grad_clip: float = 1.0

    @property
    def batch(self) -> int:
        return self.prompts_per_step * self.group_size


DEFAULTS = {
    "tiny": dict(prompts_per_step=16, group_size=8, max_new_tokens=24, lr=1e-4, steps=80, micro_batch=64),
    "smollm2": dict(prompts_per_step=2, group_size=8, max_new_tokens=64, lr=1e-5, steps=6, micro_batch=8),
}
QUICK = dict(prompts_per_step=4, group_size=4, max_new_tokens=16, steps=3, micro_batch=8)
LORA = {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}  # configs/model/smollm2.yaml's
EVAL = {"tiny": dict(size=500, max_new_tokens=32), "smollm2": dict(size=50, max_new_tokens=64)}


# -- data and model ----------------------------------------------------------------------
def data_rows(model: str, split: str) -> list[dict]:
    """The rows both sides train on (``train``) and are evaluated on (``test``)."""
    from cepo.tasks import Arithmetic

    if model == "tiny":
        return [{"prompt": e.prompt, "answer": e.answer} for e in Arithmetic().split(split)]
    # one operation on operands up to 20 (460 distinct training problems; 100 held out for test)
    task = Arithmetic(min_ops=1, max_ops=1, max_operand=20, val_size=50, test_size=100)
    rows = []
    for e in task.split(split):
        rows.append({"prompt": SMOLLM2_INSTRUCTION.format(problem=e.prompt.rstrip("=")), "answer": e.answer})
    return rows


def write_data(model: str, folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for split in ("train", "test"):
        path = folder / f"{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in data_rows(model, split)))
        paths.append(path)
    return paths[0], paths[1]


def model_folder(model: str) -> str:
    if model == "tiny":
        from cepo.bases.warmup import builtin_base

        return str(builtin_base())
    from cepo.bases.assets import smollm2

    return str(smollm2())


# -- the two sides -----------------------------------------------------------------------
def task_args(s: Matched) -> list[str]:
    """cepo's task: the arithmetic task itself (tiny), or the shared files (smollm2)."""
    if s.model == "tiny":
        return []
    return [
        "--data.task", "cepo.tasks.JsonlTask",
        "--data.task.init_args.train", s.train_file,
        "--data.task.init_args.val", s.test_file,
        "--data.task.init_args.test", s.test_file,
        "--data.task.init_args.prompt_template", "{question}",
        "--data.task.init_args.verifier", "exact",
    ]  # fmt: skip


def model_configs(s: Matched, engine: str = "hf") -> list[str]:
    configs = ["default.yaml"] + (["model/smollm2.yaml"] if s.model == "smollm2" else []) + [f"engine/{engine}.yaml"]
    return [x for c in configs for x in ("--config", str(ROOT / "configs" / c))]


def cepo_fit_args(s: Matched, run_root: Path, name: str, version: str, clock: Path, engine: str = "hf") -> list[str]:
    """``cepo fit`` arguments for ``s``: no evaluation during the run (a 4-problem one after it),
    no checkpoints, the final policy exported as a Hugging Face folder, every step timed."""
    overlay = run_root / f"{name}-{version}-clock.yaml"
    overlay.parent.mkdir(parents=True, exist_ok=True)
    callback = {"class_path": "step_clock.StepClock", "init_args": {"path": str(clock)}}
    overlay.write_text(json.dumps({"trainer": {"callbacks": [callback]}}))
    lora = ["--model.lora", "off"]
    if s.lora:
        lora = [
            "--model.lora", "on",
            "--model.lora_settings.r", str(s.lora["r"]),
            "--model.lora_settings.alpha", str(s.lora["alpha"]),
            "--model.lora_settings.dropout", str(s.lora["dropout"]),
            "--model.lora_settings.target_modules", s.lora["target_modules"],
        ]  # fmt: skip
    return [
        *model_configs(s, engine),
        "--config", str(overlay),
        *task_args(s),
        "--seed_everything", str(s.seed),
        "--model.model_path", s.model_path,
        "--data.prompts_per_step", str(s.prompts_per_step),
        "--data.group_size", str(s.group_size),
        "--data.sampling.max_new_tokens", str(s.max_new_tokens),
        "--data.sampling.temperature", str(s.temperature),
        "--data.sampling.top_p", "1.0",
        "--data.sampling.top_k", "0",
        "--data.sampling.seed", str(s.seed),
        "--model.optimizer", "torch.optim.AdamW",
        "--model.optimizer.init_args.lr", str(s.lr),
        "--model.optimizer.init_args.weight_decay", str(s.weight_decay),
        "--model.eps_low", str(s.eps_low),
        "--model.eps_high", str(s.eps_high),
        "--model.c_dual", "null",
        "--model.loss_agg", "token_mean",
        "--model.advantage_scale", "std",
        "--model.num_minibatches", "1",
        "--model.kl_coef", "0",
        "--model.grad_clip", str(s.grad_clip),
        "--model.micro_batch_size", str(s.micro_batch),
        "--model.gradient_checkpointing", "false",
        *lora,
        "--trainer.max_steps", str(s.steps),
        "--trainer.val_check_interval", str(10**6),
        "--trainer.enable_progress_bar", "false",
        "--token_weights.every_n_steps", "0",
        "--report_base", "false",
        "--export_hf", "true",
        "--data.eval_size", "4",
        "--data.eval_k", "0",
        "--checkpoint.every_n_train_steps", str(10**6),
        "--checkpoint.save_last", "false",
        "--run_root", str(run_root),
        "--run_name", name,
        "--run_version", version,
    ]  # fmt: skip


def trl_settings(s: Matched, out: Path) -> dict:
    """What ``trl_runner.py`` gets: ``GRPOConfig`` keyword arguments and the rest."""
    if s.batch % s.micro_batch:
        raise ValueError(f"prompts x group ({s.batch}) must be a multiple of the micro-batch ({s.micro_batch})")
    config = {
        "per_device_train_batch_size": s.micro_batch,  # completions per forward/backward pass
        "gradient_accumulation_steps": s.batch // s.micro_batch,  # -> one update per generation batch
        "num_generations": s.group_size,
        "max_completion_length": s.max_new_tokens,
        "temperature": s.temperature,
        "top_p": 1.0,
        "top_k": 0,
        "learning_rate": s.lr,
        "weight_decay": s.weight_decay,
        "optim": "adamw_torch",
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "max_grad_norm": s.grad_clip,
        "beta": 0.0,
        "num_iterations": 1,
        "epsilon": s.eps_low,
        "epsilon_high": s.eps_high,
        "loss_type": "dapo",  # token mean over the whole accumulated batch (cepo's token_mean)
        "scale_rewards": "group",
        "mask_truncated_completions": False,
        "max_steps": s.steps,
        "seed": s.seed,
        "data_seed": s.seed,
        "bf16": False,
        "fp16": False,
        "gradient_checkpointing": False,
        "use_vllm": False,
        "use_cpu": True,
        "dataloader_num_workers": 0,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
    }
    return {
        "model_path": s.model_path,
        "train_file": s.train_file,
        "chat": s.chat,
        "verifier": s.verifier,
        "lora": s.lora,
        "threads": 1,
        "out": str(out),
        "grpo_config": config,
    }


def run(cmd: list[str], env: dict[str, str], log: Path) -> float:
    """Run ``cmd`` with its output in ``log``; its wall seconds (its peak resident memory in
    :data:`LAST_PEAK_MB`). Exits on failure.

    The peak is the child's own ``VmHWM`` (its image after ``exec``), read every 0.2 s while it
    runs: ``ru_maxrss`` of a child counts the memory of the parent it was forked from."""
    global LAST_PEAK_MB
    log.parent.mkdir(parents=True, exist_ok=True)
    print("$", " ".join(cmd[:6]), "...", f"(log {log})", flush=True)
    t0 = time.perf_counter()
    peak = 0.0
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            peak = max(peak, hwm_mb(proc.pid))
            time.sleep(0.2)
        code = proc.returncode
    seconds = time.perf_counter() - t0
    LAST_PEAK_MB = peak
    if code:
        sys.exit(f"command failed ({code}); last lines of {log}:\n" + "".join(log.read_text().splitlines(True)[-30:]))
    return seconds


def hwm_mb(pid: int) -> float:
    """The process's peak resident memory so far (MB; 0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


LAST_PEAK_MB = 0.0


def steady(seconds: list[float], skip: int) -> dict:
    """Mean, median and 10th percentile (the steps least slowed by other processes) of the steps
    after the first ``skip``."""
    kept = seconds[skip:]
    p10 = sorted(kept)[int(0.1 * (len(kept) - 1))]
    return {"mean": statistics.mean(kept), "median": statistics.median(kept), "p10": p10, "n": len(kept)}


def run_cepo(s: Matched, out: Path, tag: str, skip: int, engine: str) -> dict:
    clock = out / f"cepo-{tag}-steps.json"
    args = cepo_fit_args(s, out / "runs", "cepo", tag, clock, engine)
    env = offline_env(PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "benchmarks")]))
    load = os.getloadavg()
    seconds = run([sys.executable, "-m", "cepo", "fit", *args], env, out / f"cepo-{tag}.log")
    peak = LAST_PEAK_MB
    run_dir = out / "runs" / "cepo" / tag
    rows = [r for r in csv.DictReader(open(run_dir / "metrics.csv")) if r.get("time/total")]
    wall = json.loads(clock.read_text())
    totals = [float(r["time/total"]) for r in rows]
    stages = {}
    for key in rows[0]:
        if key.startswith("time/") and key != "time/total" and "per_sec" not in key:
            stages[key[5:]] = statistics.mean(float(r[key]) for r in rows[skip:] if r.get(key))
    return {
        "step_seconds": wall,
        "steady": steady(wall, skip),
        "time_total": steady(totals, skip),
        "stages": stages,
        "zero_var_frac": statistics.mean(float(r["train/zero_var_frac"]) for r in rows),
        "rewards": [float(r["train/reward_mean"]) for r in rows],
        "process_seconds": seconds,
        "peak_mb": peak,
        "load_before": load,
        "load_after": os.getloadavg(),
        "model": str(run_dir / "hf_model"),
    }


def run_trl(s: Matched, out: Path, tag: str, skip: int, trl_python: Path, record: bool = False) -> dict:
    folder = out / "runs" / "trl" / tag
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    settings = folder / "settings.json"
    settings.write_text(json.dumps(dict(trl_settings(s, folder), record=record), indent=2))
    env = offline_env(PYTHONPATH="")  # TRL's side cannot import cepo
    load = os.getloadavg()
    seconds = run([str(trl_python), str(ROOT / "benchmarks" / "trl_runner.py"), str(settings)], env, folder / "log.txt")
    result = json.loads((folder / "result.json").read_text())
    result.update(steady=steady(result["step_seconds"], skip), process_seconds=seconds, peak_mb=LAST_PEAK_MB)
    result["generate"] = steady(result["generate_seconds"], skip)
    result.update(load_before=load, load_after=os.getloadavg())
    return result


def run_replay(s: Matched, out: Path, tag: str) -> dict:
    """cepo's update on the TRL run's recorded rollouts (``trl_replay.py``): the weights' distance
    to TRL's final model, and the folder to evaluate."""
    trl_folder = out / "runs" / "trl" / tag
    folder = out / "runs" / "replay" / tag
    cmd = [
        sys.executable, str(ROOT / "benchmarks" / "trl_replay.py"),
        str(trl_folder / "batches.pt"), s.model_path, str(folder),
        "--trl-model", str(trl_folder / "model"),
        "--group", str(s.group_size), "--lr", str(s.lr), "--weight-decay", str(s.weight_decay),
        "--micro-batch", str(s.micro_batch),
    ]  # fmt: skip
    run(cmd, offline_env(PYTHONPATH=str(ROOT)), out / f"replay-{tag}.log")
    result = json.loads((folder / "replay.json").read_text())
    return dict(result, model=str(folder))


def evaluate(s: Matched, folder: str, out: Path, tag: str, size: int, max_new: int) -> float:
    """Greedy accuracy of ``folder`` on the first ``size`` test problems (``cepo validate``)."""
    cmd = [
        sys.executable, "-m", "cepo", "validate",
        *model_configs(s),
        *task_args(s),
        "--model.model_path", folder,
        "--model.lora", "off",
        "--data.eval_split", "test",
        "--data.eval_size", str(size),
        "--data.eval_k", "0",
        "--data.sampling.max_new_tokens", str(max_new),
        "--trainer.enable_progress_bar", "false",
        "--run_root", str(out / "eval"),
        "--run_name", "eval",
        "--run_version", tag,
    ]  # fmt: skip
    run(cmd, offline_env(PYTHONPATH=str(ROOT)), out / "eval" / f"{tag}.log")
    rows = [json.loads(line) for line in open(out / "eval" / "eval" / tag / "samples" / "validate.jsonl")]
    greedy = [r for r in rows if r["sample"] == "greedy"]
    if len(greedy) != size:
        sys.exit(f"evaluation of {folder} scored {len(greedy)} problems, expected {size}")
    return sum(bool(r["correct"]) for r in greedy) / len(greedy)


# -- report ------------------------------------------------------------------------------
def summarise(rounds: list[dict], base_acc: float) -> dict:
    out = {}
    for side in ("cepo", "trl"):
        runs = [r[side] for r in rounds]
        out[side] = {
            "step_s": statistics.mean(r["steady"]["mean"] for r in runs),
            "step_s_per_round": [r["steady"]["mean"] for r in runs],
            "process_s": statistics.mean(r["process_seconds"] for r in runs),
            "peak_mb": statistics.mean(r["peak_mb"] for r in runs),
            "peak_mb_per_round": [r["peak_mb"] for r in runs],
            "acc_after": statistics.mean(r["acc"] for r in runs),
            "acc_after_per_round": [r["acc"] for r in runs],
            "gain": statistics.mean(r["acc"] for r in runs) - base_acc,
        }
    out["cepo"]["time_total_s"] = statistics.mean(r["cepo"]["time_total"]["mean"] for r in rounds)
    out["ratio"] = out["cepo"]["step_s"] / out["trl"]["step_s"]
    out["ratio_per_round"] = [r["cepo"]["steady"]["mean"] / r["trl"]["steady"]["mean"] for r in rounds]
    out["ratio_time_total"] = out["cepo"]["time_total_s"] / out["trl"]["step_s"]
    out["ratio_p10_per_round"] = [r["cepo"]["steady"]["p10"] / r["trl"]["steady"]["p10"] for r in rounds]
    out["process_ratio"] = out["cepo"]["process_s"] / out["trl"]["process_s"]
    out["memory_ratio"] = out["cepo"]["peak_mb"] / out["trl"]["peak_mb"]
    out["memory_ratio_per_round"] = [r["cepo"]["peak_mb"] / r["trl"]["peak_mb"] for r in rounds]
    return out


def table(s: Matched, summary: dict, base_acc: float, eval_size: int, rounds: list[dict], skip: int) -> str:
    pct = lambda x: f"{100 * x:.1f}%"
    lines = [
        f"model {s.model} ({s.model_path}), {s.prompts_per_step} prompts x {s.group_size} rollouts, "
        f"{s.max_new_tokens} new tokens, lr {s.lr:g}, {s.steps} steps, micro-batch {s.micro_batch}, "
        f"LoRA {s.lora or 'off'}; {len(rounds)} round(s); steps 1-{skip} of each run dropped; "
        f"greedy accuracy on {eval_size} test problems",
        "",
        "| framework | s/step (wall) | per round | process (s) | peak memory (MB) | acc before | acc after | gain "
        "| per round after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for side, name in (("trl", "TRL GRPOTrainer"), ("cepo", "cepo fit")):
        x = summary[side]
        per = " / ".join(f"{v:.3f}" for v in x["step_s_per_round"])
        after = " / ".join(pct(v) for v in x["acc_after_per_round"])
        lines.append(
            f"| {name} | {x['step_s']:.3f} | {per} | {x['process_s']:.1f} | {x['peak_mb']:.0f} | {pct(base_acc)} | "
            f"{pct(x['acc_after'])} | {100 * x['gain']:+.1f} | {after} |"
        )
    ratio_rounds = " / ".join(f"{v:.2f}" for v in summary["ratio_per_round"])
    stages = {k: statistics.mean(r["cepo"]["stages"][k] for r in rounds) for k in rounds[0]["cepo"]["stages"]}
    trl_gen = statistics.mean(r["trl"]["generate"]["mean"] for r in rounds)
    lines += [
        "",
        f"step-time ratio cepo/TRL: {summary['ratio']:.2f} (per round {ratio_rounds}); with cepo's own "
        f"time/total ({summary['cepo']['time_total_s']:.3f} s) instead of its wall step: "
        f"{summary['ratio_time_total']:.2f}; whole processes: {summary['process_ratio']:.2f}; "
        "10th-percentile steps (the least slowed by other processes), per round: "
        + " / ".join(f"{v:.2f}" for v in summary["ratio_p10_per_round"]),
        "cepo stages (s/step): " + ", ".join(f"{k} {v:.3f}" for k, v in stages.items() if v > 0.0005),
        f"TRL stages (s/step): generate and score {trl_gen:.3f}, the rest (forward/backward, optimizer, "
        f"logging) {summary['trl']['step_s'] - trl_gen:.3f}",
        f"cepo zero-variance groups: {statistics.mean(r['cepo']['zero_var_frac'] for r in rounds):.0%} of a batch "
        "(their rows skip cepo's forward/backward; TRL runs them)",
        f"peak-memory ratio cepo/TRL (whole processes' resident sets): {summary['memory_ratio']:.2f} (per round "
        + " / ".join(f"{v:.2f}" for v in summary["memory_ratio_per_round"])
        + ")",
        targets(summary, s.model),
    ]
    if "replay" in rounds[0]["trl"]:
        replays = [r["trl"]["replay"] for r in rounds]
        lines.append(
            "cepo's update on TRL's recorded rollouts (trl_replay.py), per round: greedy accuracy "
            + " / ".join(pct(x["acc"]) for x in replays)
            + " (TRL's: "
            + " / ".join(pct(r["trl"]["acc"]) for r in rounds)
            + "); final weights' distance to TRL's "
            + " / ".join(f"{x['distance_to_trl']:.1e}" for x in replays)
            + " (TRL moved "
            + " / ".join(f"{x['trl_moved']:.2f}" for x in replays)
            + ")"
        )
    return "\n".join(lines)


def versions(trl_result: dict) -> dict:
    cepo_side = {p: md.version(p) for p in ("torch", "transformers", "peft", "lightning")}
    return {"cepo_venv": cepo_side, "trl_venv": trl_result["versions"]}


TARGETS = {"tiny": (0.4, None), "smollm2": (0.5, 0.6)}
"""The issues' targets, cepo/TRL: step time, and peak memory (None: no target)."""


def targets(summary: dict, model: str) -> str:
    """``target ...: met / not met`` for the step-time ratio and, where there is one, memory."""
    time_cap, memory_cap = TARGETS.get(model, (0.4, None))
    verdict = lambda ok: "met" if ok else "not met"
    line = f"target step time cepo <= {time_cap}x TRL: {verdict(summary['ratio'] <= time_cap)}"
    if memory_cap is not None:
        line += f"; peak memory <= {memory_cap}x TRL: {verdict(summary['memory_ratio'] <= memory_cap + 1e-9)}"
    return line


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=sorted(DEFAULTS), default="tiny")
    p.add_argument("--steps", type=int, help="optimizer steps per run (tiny 80, smollm2 6)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds (cepo, TRL, then TRL, cepo, ...)")
    p.add_argument("--prompts", type=int, help="prompts per step (tiny 16, smollm2 2)")
    p.add_argument("--group", type=int, help="rollouts per prompt (8)")
    p.add_argument("--max-new", type=int, help="max new tokens (tiny 24, smollm2 64)")
    p.add_argument("--lr", type=float, help="learning rate (tiny 1e-4, smollm2 1e-5)")
    p.add_argument("--micro-batch", type=int, help="rows per forward/backward pass (tiny 64, smollm2 8)")
    p.add_argument("--eval-size", type=int, help="test problems for the accuracies (tiny 500, smollm2 50)")
    p.add_argument("--skip", type=int, help="first steps of each run left out of the step time (3; 1 under 20 steps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cepo-engine", choices=("hf", "vllm"), default="hf")
    p.add_argument(
        "--replay",
        action="store_true",
        help="also replay each TRL run's rollouts through cepo's update (trl_replay.py) and score that policy",
    )
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run (tiny sizes, 1 round)")
    p.add_argument("--trl-venv", default=".venv-trl")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = p.parse_args(argv)
    trl_python = ROOT / a.trl_venv / "bin" / "python"
    if not trl_python.is_file():
        sys.exit(f"{trl_python} not found: run `bash scripts/setup_trl.sh` first")
    size = dict(DEFAULTS[a.model], **(QUICK if a.quick else {}))
    for key, value in (("steps", a.steps), ("prompts_per_step", a.prompts), ("group_size", a.group)):
        if value is not None:
            size[key] = value
    for key, value in (("max_new_tokens", a.max_new), ("lr", a.lr), ("micro_batch", a.micro_batch)):
        if value is not None:
            size[key] = value
    rounds_n = 1 if a.quick else a.rounds
    eval_size = a.eval_size or (20 if a.quick else EVAL[a.model]["size"])
    skip = a.skip if a.skip is not None else (3 if size["steps"] >= 20 else 1)
    if size["steps"] <= skip:
        sys.exit(f"--steps ({size['steps']}) must exceed --skip ({skip})")
    out = Path(a.out) / f"vs_trl_{a.model}"
    shutil.rmtree(out, ignore_errors=True)
    train_file, test_file = write_data(a.model, out / "data")
    s = Matched(
        model=a.model,
        model_path=model_folder(a.model),
        train_file=str(train_file),
        test_file=str(test_file),
        chat=a.model == "smollm2",
        verifier="final_number" if a.model == "tiny" else "exact",
        seed=a.seed,
        lora=LORA if a.model == "smollm2" else None,
        **size,
    )
    trl_settings(s, out)  # fail on a bad batch split before anything runs
    max_new_eval = EVAL[a.model]["max_new_tokens"]
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    base_acc = evaluate(s, s.model_path, out, "base", eval_size, max_new_eval)
    print(f"base greedy accuracy: {base_acc:.3f}", flush=True)
    rounds = []
    for r in range(rounds_n):
        sr = dataclasses.replace(s, seed=a.seed + r)
        order = ("cepo", "trl") if r % 2 == 0 else ("trl", "cepo")
        results = {}
        for side in order:
            tag = f"round{r}"
            if side == "cepo":
                results[side] = run_cepo(sr, out, tag, skip, a.cepo_engine)
            else:
                results[side] = run_trl(sr, out, tag, skip, trl_python, record=a.replay)
            print(f"round {r} {side}: {results[side]['steady']['mean']:.3f} s/step", flush=True)
        for side in order:
            results[side]["acc"] = evaluate(s, results[side]["model"], out, f"{side}-round{r}", eval_size, max_new_eval)
            print(f"round {r} {side}: greedy accuracy {results[side]['acc']:.3f}", flush=True)
        if a.replay:
            replay = run_replay(sr, out, f"round{r}")
            replay["acc"] = evaluate(s, replay["model"], out, f"replay-round{r}", eval_size, max_new_eval)
            results["trl"]["replay"] = replay
            print(
                f"round {r} cepo's update on TRL's rollouts: greedy accuracy {replay['acc']:.3f}, "
                f"weights {replay['distance_to_trl']:.2e} from TRL's (TRL moved {replay['trl_moved']:.2e})",
                flush=True,
            )
        rounds.append(results)
    summary = summarise(rounds, base_acc)
    md_text = table(s, summary, base_acc, eval_size, rounds, skip)
    payload = {
        "started": started,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "settings": dataclasses.asdict(s),
        "cepo_engine": a.cepo_engine,
        "skip": skip,
        "eval": {"size": eval_size, "max_new_tokens": max_new_eval, "base_acc": base_acc},
        "versions": versions(rounds[0]["trl"]),
        "summary": summary,
        "rounds": rounds,
        "trl_settings": trl_settings(s, out),
        "command": sys.argv,
    }
    write_results(a.out, f"vs_trl_{a.model}", payload, md_text)


if __name__ == "__main__":
    main()
