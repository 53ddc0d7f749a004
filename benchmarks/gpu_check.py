"""The GPU path, checked in one command: exactness, throughput and the one-GPU scale paths.

    python3 benchmarks/gpu_check.py [--out benchmarks/results] [--only exactness throughput scale]
    python3 benchmarks/gpu_check.py --cpu-smoke      # the same code at tiny sizes on CPU (a test runs it)
    python3 benchmarks/gpu_check.py --estimate       # the full run's time by FLOPs, nothing run

Every model is random-init from a config (``gpu_shapes.py``): nothing is downloaded. Sections:

- **exactness** (Qwen2.5-0.5B shape): one GRPO and one CEPO step (2 updates, LoRA, AdamW) on a
  hand-made batch in ``bfloat16`` weights and in ``bf16-mixed`` against float32: loss, gradient norm
  and the token log-probs before the update. Tolerance: relative ``2 sqrt(2 L) u`` with
  ``u = 2^-8`` (bfloat16's unit roundoff) and ``L`` layers: the random-walk size of one rounding of
  every layer's output in the forward and the backward pass, doubled. Log-probs are compared by
  their mean absolute difference relative to their mean magnitude. Then the transformers engine's
  engine/trainer log-prob gap (``train/logprob_gap_*``: the engine's incremental decoding against
  the trainer's full pass) in float32 and bfloat16; the measured bfloat16 maximum, doubled, is the
  proposed ``sync_tolerance`` (the configs' guess: 5e-2).
- **throughput** (Qwen2.5-0.5B shape, text; Qwen3-VL-2B shape with one image per prompt): real
  GRPO steps (transformers engine, LoRA, ``bfloat16``) at each response length give generation
  tokens/s, the stage times and peak memory; their batches are then replayed through the training
  pass with activation checkpointing off and on, and the shared-prefix training pass
  (``model.share_prompts``) off and on where this cepo has it. MFU counts model FLOPs
  (``gpu_shapes.train_flops``: no recomputation) against the H200's dense bf16 peak.
- **scale**: FSDP2 on one process and 2-process DDP on the one GPU (``gpu_scale.py``).

Writes ``<out>/gpu_check.json`` and ``<out>/gpu_check.md``; exits 1 when a section failed or a
tolerance was exceeded (the others still run and are written).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # gpu_shapes, gpu_runs, gpu_scale
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # cepo from this checkout

import gpu_shapes as shapes  # noqa: E402

PEAK_FLOPS = 790e12  # the H200's dense bf16 matrix rate as measured (8192^3 products)
PLANNED_MFU = 0.4
DECODE_STEP_S = 0.03  # a guess: one eager transformers decoding step of a 24-28-layer model, any batch
FIT_OVERHEAD_S = 4.0  # a guess: a fit's Lightning setup and model load from the page cache
BUILD_S = {"qwen2.5-0.5b": 15.0, "qwen3-vl-2b": 40.0}  # a guess: init on the GPU and save
BUDGET_S = 600.0
ROUNDOFF = 2.0**-8  # bfloat16's unit roundoff


@dataclass(frozen=True)
class Model:
    shape: str
    prompts: int
    group: int
    micro: int  # rows per forward pass
    prompt_tokens: int = 0  # text: preamble characters (one token each)
    image_size: int = 0  # VL: the image's side in pixels


@dataclass(frozen=True)
class Settings:
    accelerator: str
    models: tuple[Model, ...]
    lengths: tuple[int, ...]
    warm: int  # new tokens of the warm-up step
    exact_prompts: int
    exact_group: int
    exact_len: int
    gap_tokens: int


FULL = Settings(
    "gpu",
    (Model("qwen2.5-0.5b", 8, 8, 16, prompt_tokens=256), Model("qwen3-vl-2b", 4, 8, 8, image_size=448)),
    (512, 2048),
    16,
    4,
    4,
    256,
    128,
)
SMOKE = Settings(
    "cpu",
    (Model("tiny-text", 2, 4, 4, prompt_tokens=12), Model("tiny-vl", 2, 4, 4, image_size=64)),
    (8, 12),
    4,
    2,
    4,
    10,
    6,
)


def tolerance(shape: shapes.Shape) -> float:
    return 2 * math.sqrt(2 * shape.layers) * ROUNDOFF


def task_of(model: Model, size: int):
    if shapes.SHAPES[model.shape].is_vl:
        return shapes.ParityVisual(image_size=model.image_size, train_size=size, val_size=2, test_size=2)
    return shapes.ParityArithmetic(prompt_tokens=model.prompt_tokens, train_size=size, val_size=2, test_size=2)


# -- the estimate -----------------------------------------------------------------------------------
def estimate(s: Settings, variants: int = 4) -> dict[str, float]:
    """Seconds per section of the full run, by FLOPs at ``PLANNED_MFU`` of ``PEAK_FLOPS``, plus the
    guessed per-step decoding latency and per-fit overheads (constants above)."""
    rate = PLANNED_MFU * PEAK_FLOPS
    text = shapes.SHAPES[s.models[0].shape]
    out = {}
    n = s.exact_prompts * s.exact_group
    exact = 6 * shapes.train_flops(text, n, 64, s.exact_len, 0, 0.02) * 1.5  # + old log-probs, teachers
    gap = 2 * shapes.generate_flops(text, n, 64, s.gap_tokens)
    out["exactness"] = (exact + gap) / rate + 2 * s.gap_tokens * DECODE_STEP_S + 8 * FIT_OVERHEAD_S
    for m in s.models:
        sh = shapes.SHAPES[m.shape]
        rows, img = m.prompts * m.group, shapes.image_tokens(sh, m.image_size)
        prompt = m.prompt_tokens + img + 16
        gen = sum(shapes.generate_flops(sh, rows, prompt, n_new, img) for n_new in s.lengths)
        steps = s.warm + sum(s.lengths)
        real = gen / rate + steps * DECODE_STEP_S
        one = sum(shapes.train_flops(sh, rows, prompt, n_new, img, 0.02) for n_new in s.lengths)
        real += one / rate
        replay = 2 * one * variants * (1 + 1 / 4) / rate  # each batch twice; checkpointing recomputes
        out[f"throughput {m.shape}"] = real + replay + (1 + variants) * FIT_OVERHEAD_S + BUILD_S.get(m.shape, 1)
    m = s.models[0]
    sh = shapes.SHAPES[m.shape]
    full = shapes.train_flops(sh, m.prompts * m.group, m.prompt_tokens + 16, s.lengths[0], 0, 1.0)
    out["scale"] = 3 * 2 * full / rate + 4 * FIT_OVERHEAD_S + 20  # plain, FSDP, DDP; 2 rank starts
    out["total"] = sum(out.values())
    return out


# -- sections ---------------------------------------------------------------------------------------
def exactness(s: Settings, model_dir: Path) -> dict:
    from gpu_runs import Recorder, Replay, fit, handmade_batch, module, real_data, relative
    from transformers import AutoTokenizer

    from cepo.credit import Contrastive, Uniform

    shape = shapes.SHAPES[s.models[0].shape]
    tol = tolerance(shape)
    tok = AutoTokenizer.from_pretrained(model_dir)
    prompts = [e.prompt for e in task_of(s.models[0], s.exact_prompts).split("train")[: s.exact_prompts]]
    batch = handmade_batch(tok, prompts, s.exact_group, s.exact_len)
    variants = {
        "float32": ("float32", "32-true"),
        "bfloat16": ("bfloat16", "32-true"),
        "bf16-mixed": ("float32", "bf16-mixed"),
    }
    credits = {"grpo": Uniform, "cepo": lambda: Contrastive(clip=0.5, beta=0.5)}
    out: dict = {"tolerance": tol, "steps": {}}
    for name, credit in credits.items():
        runs = {}
        for variant, (dtype, precision) in variants.items():
            rec = Recorder(score=True)
            mod = module(
                model_dir, credit(), dtype=dtype, lora="on", num_minibatches=2, micro_batch_size=s.models[0].micro
            )
            fit(mod, Replay([batch]), 1, s.accelerator, [rec], precision=precision)
            runs[variant] = (rec.steps[0], rec.logprobs[0])
        ref, ref_lp = runs["float32"]
        mask = batch.response_mask.cpu()
        for variant, (row, lp) in runs.items():
            if variant == "float32":
                continue
            diff = (lp - ref_lp).abs()[mask]
            result = {
                "loss": row["train/loss"],
                "loss_float32": ref["train/loss"],
                "loss_rel_diff": relative(row["train/loss"], ref["train/loss"], ref["train/adv_abs_mean"]),
                "grad_norm": row["train/grad_norm"],
                "grad_norm_float32": ref["train/grad_norm"],
                "grad_norm_rel_diff": relative(row["train/grad_norm"], ref["train/grad_norm"]),
                "logprob_abs_diff_mean": float(diff.mean()),
                "logprob_abs_diff_max": float(diff.max()),
                "logprob_rel_diff": float(diff.mean() / ref_lp.abs()[mask].mean()),
                "entropy": row.get("train/entropy"),
            }
            result["pass"] = all(result[k] <= tol for k in ("loss_rel_diff", "grad_norm_rel_diff", "logprob_rel_diff"))
            out["steps"][f"{name} {variant}"] = result
    m = s.models[0]
    gaps = {}
    for dtype in ("float32", "bfloat16"):
        rec = Recorder()
        data = real_data(task_of(m, 64), s.exact_prompts, s.exact_group, s.gap_tokens)
        fit(module(model_dir, dtype=dtype, lora="on", micro_batch_size=m.micro), data, 1, s.accelerator, [rec])
        row = rec.steps[0]
        gaps[dtype] = {k: row.get(f"train/logprob_gap_{k}") for k in ("mean", "max")}
    out["engine_gap"] = gaps
    return out


def throughput(s: Settings, model: Model, model_dir: Path, trainable_share: float) -> tuple[list[dict], list]:
    from gpu_runs import Lengths, Recorder, Replay, fit, module, real_data, share_prompts_available

    shape = shapes.SHAPES[model.shape]
    img = shapes.image_tokens(shape, model.image_size)
    rate = PEAK_FLOPS if s.accelerator == "gpu" else None
    common = dict(dtype="bfloat16", lora="on", micro_batch_size=model.micro)
    lengths = [s.warm, *s.lengths]
    rec = Recorder(keep_batches=True)
    data = real_data(task_of(model, 4 * model.prompts * len(lengths)), model.prompts, model.group, s.warm)
    fit(module(model_dir, **common), data, len(lengths), s.accelerator, [rec, Lengths(lengths)])
    rows = []

    def row_of(kind: str, step: dict, n_new: int, **variant) -> dict:
        r, prompt = step["rows"], step["prompt_len"]
        flops = shapes.train_flops(shape, r, prompt, step["response_tokens"] / r, img, trainable_share)
        out = {"model": model.shape, "kind": kind, "length": n_new, **variant, "rows": r, "prompt_len": prompt}
        out.update({k.split("/")[1]: v for k, v in step.items() if k.startswith("time/")})
        out["train_tokens_per_s"] = step["response_tokens"] / max(step["time/train"], 1e-9)
        out["mfu_train"] = flops / step["time/train"] / rate if rate else None
        out["peak_gib"] = step["peak_gib"]
        out["wall"] = step["wall"]
        out["response_len"] = step.get("train/response_len")
        out["logprob_gap_mean"] = step.get("train/logprob_gap_mean")
        out["logprob_gap_max"] = step.get("train/logprob_gap_max")
        if kind == "real":
            gen = shapes.generate_flops(shape, r, prompt, step["response_tokens"] / r, img)
            out["gen_tokens_per_s"] = step["response_tokens"] / max(step["time/generate"], 1e-9)
            out["mfu_generate"] = gen / step["time/generate"] / rate if rate else None
        return out

    for n_new, step in zip(s.lengths, rec.steps[1:]):
        rows.append(row_of("real", step, n_new, share_prompts="default", checkpointing=False))
    batches = rec.batches[1:]
    shares = [True, False] if share_prompts_available() else [None]
    for share in shares:
        for ckpt in (False, True):
            extra = {} if share is None else {"share_prompts": share}
            replay = Recorder()
            twice = [b for b in batches for _ in range(2)]
            mod = module(model_dir, gradient_checkpointing=ckpt, **common, **extra)
            fit(mod, Replay(twice), len(twice), s.accelerator, [replay])
            for n_new, step in zip(s.lengths, replay.steps[1::2]):  # the second step of each length
                label = "not available" if share is None else share
                rows.append(row_of("replay", step, n_new, share_prompts=label, checkpointing=ckpt))
    return rows, batches


def scale(s: Settings, model_dir: Path, batch, pad_id: int, work: Path) -> dict:
    from gpu_scale import ddp_two_processes, fsdp_one_process, memory_allows_two, one_process

    micro = s.models[0].micro
    plain = one_process(model_dir, batch, micro, s.accelerator)
    out: dict = {"plain": plain, "tolerance": tolerance(shapes.SHAPES[s.models[0].shape])}
    out["fsdp2_one_process"] = guarded(lambda: fsdp_one_process(model_dir, batch, micro, s.accelerator, plain))
    ok, why = memory_allows_two(plain)
    if ok:
        out["ddp_two_processes"] = guarded(
            lambda: ddp_two_processes(model_dir, batch, pad_id, micro, s.accelerator, plain, work / "ddp")
        )
    else:
        out["ddp_two_processes"] = {"skipped": f"memory: {why}"}
    return out


def guarded(fn):
    """``fn()``, or ``{"error": ...}`` with the traceback's last lines: one failed section must not
    cost the others their run on a lent machine."""
    try:
        return fn()
    except Exception as err:  # noqa: BLE001 - recorded and reported, the exit code says it
        traceback.print_exc()
        return {"error": f"{type(err).__name__}: {err}"[:2000], "where": traceback.format_exc()[-3000:]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on CPU (seconds)")
    p.add_argument("--estimate", action="store_true", help="print the full run's estimate and exit")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--only", nargs="+", choices=["exactness", "throughput", "scale"])
    p.add_argument("--work", help="folder for the model folders (default: a temporary one)")
    p.add_argument("--ddp-worker", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    for k, v in dict(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false").items():
        os.environ.setdefault(k, v)
    import torch

    torch.set_num_threads(int(os.environ.get("CEPO_NUM_THREADS", "1")) if a.cpu_smoke or a.ddp_worker else 16)
    if a.ddp_worker:
        from gpu_scale import ddp_worker

        ddp_worker(Path(a.ddp_worker))
        return 0
    s = SMOKE if a.cpu_smoke else FULL
    est = estimate(FULL)
    print("estimate of the full run (s): " + ", ".join(f"{k} {v:.0f}" for k, v in est.items()), flush=True)
    if est["total"] > BUDGET_S:
        print(f"warning: the full run's estimate exceeds {BUDGET_S:.0f} s", flush=True)
    if a.estimate:
        return 0
    if s.accelerator == "gpu" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; use --cpu-smoke on a machine without one", file=sys.stderr)
        return 2
    only = set(a.only or ["exactness", "throughput", "scale"])
    device = torch.cuda.get_device_name() if s.accelerator == "gpu" else "cpu"
    results: dict = {
        "mode": "cpu-smoke" if a.cpu_smoke else "full",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    results.update(device=device, torch=torch.__version__, estimate=est, seconds={}, sections={})
    results["settings"] = dataclasses.asdict(s)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.work or tmp)
        build_on = "cuda" if s.accelerator == "gpu" else "cpu"
        start = time.perf_counter()
        dirs = {}
        for m in s.models:
            dirs[m.shape] = shapes.build(shapes.SHAPES[m.shape], work / m.shape, m.image_size, build_on)
        results["seconds"]["build"] = time.perf_counter() - start
        text = s.models[0]
        batches = None

        def timed(name, fn):
            t = time.perf_counter()
            results["sections"][name] = guarded(fn)
            results["seconds"][name] = time.perf_counter() - t
            json.dumps(results["sections"][name])  # fails here, not at the end, on a value JSON cannot hold

        if "exactness" in only:
            timed("exactness", lambda: exactness(s, dirs[text.shape]))
        for m in s.models:
            if "throughput" in only or (m is text and "scale" in only):
                share = shapes.lora_share(shapes.SHAPES[m.shape])
                box = {}

                def run(m=m, share=share, box=box):
                    rows, box["batches"] = throughput(s, m, dirs[m.shape], share)
                    return {"rows": rows}

                timed(f"throughput {m.shape}", run)
                batches = box.get("batches") if m is text else batches
        if "scale" in only:
            from transformers import AutoTokenizer

            pad = AutoTokenizer.from_pretrained(dirs[text.shape]).pad_token_id
            if batches:
                timed("scale", lambda: scale(s, dirs[text.shape], batches[0], pad, work))
            else:
                results["sections"]["scale"] = {"error": "no rollout batch: the text throughput section failed"}
    from gpu_report import failures, markdown, proposed_tolerance

    results["proposed_sync_tolerance"] = proposed_tolerance(results)
    results["failed"] = failures(results)
    from common import write_results

    write_results(a.out, "gpu_check", results, markdown(results))
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
