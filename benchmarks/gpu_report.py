"""The report of ``benchmarks/gpu_check.py``: what failed, the proposed probe tolerance, the Markdown tables."""

from __future__ import annotations

import math


def _f(x, spec: str = ".3g") -> str:
    return "n/a" if x is None else format(x, spec) if isinstance(x, float | int) else str(x)


def failures(results: dict) -> list[str]:
    """What failed: sections that raised, exactness beyond its tolerance, scale paths off the plain run."""
    bad = [name for name, sec in results["sections"].items() if isinstance(sec, dict) and "error" in sec]
    exact = results["sections"].get("exactness", {})
    bad += [f"exactness {k}" for k, v in exact.get("steps", {}).items() if not v["pass"]]
    sc = results["sections"].get("scale", {})
    for path in ("fsdp2_one_process", "ddp_two_processes"):
        r = sc.get(path, {})
        bad += [f"scale {path}: error"] if "error" in r else []
        if "loss_rel_diff" in r and max(r["loss_rel_diff"], r["grad_norm_rel_diff"]) > sc["tolerance"]:
            bad.append(f"scale {path}: loss or gradient norm off the plain run")
    return bad


def markdown(results: dict) -> str:
    lines = [f"# gpu_check ({results['mode']}, {results['date']}, {results['device']})", ""]
    est = results["estimate"]
    lines += ["| section | estimated s | measured s |", "|---|---|---|"]
    for k in [*est, *(k for k in results["seconds"] if k not in est)]:
        lines.append(f"| {k} | {_f(est.get(k), '.0f')} | {_f(results['seconds'].get(k), '.0f')} |")
    exact = results["sections"].get("exactness", {})
    if "steps" in exact:
        lines += ["", f"Exactness against float32 (tolerance {exact['tolerance']:.3g}, relative):", ""]
        lines += ["| step | loss | loss f32 | rel | grad norm | f32 | rel | logp mean abs diff | max | rel | pass |"]
        lines += ["|---" * 11 + "|"]
        for k, v in exact["steps"].items():
            cells = [v[c] for c in ("loss", "loss_float32", "loss_rel_diff", "grad_norm", "grad_norm_float32")]
            cells += [v[c] for c in ("grad_norm_rel_diff", "logprob_abs_diff_mean", "logprob_abs_diff_max")]
            cells += [v["logprob_rel_diff"]]
            lines.append(f"| {k} | " + " | ".join(_f(c) for c in cells) + f" | {v['pass']} |")
        gap = exact["engine_gap"]
        lines += ["", "Transformers engine vs trainer log-probs (trained tokens):", ""]
        lines += ["| dtype | gap mean | gap max |", "|---|---|---|"]
        lines += [f"| {d} | {_f(g['mean'])} | {_f(g['max'])} |" for d, g in gap.items()]
    if results.get("proposed_sync_tolerance") is not None:
        lines += [
            "",
            f"Proposed bf16 `sync_tolerance`: {results['proposed_sync_tolerance']:.1g} (2x the largest bf16 gap)",
        ]
    rows = [r for k, sec in results["sections"].items() if k.startswith("throughput") for r in sec.get("rows", [])]
    if rows:
        head = "| model | step | length | share_prompts | checkpointing | rows | gen tok/s | train tok/s |"
        head += " generate s | train s | total s | MFU train | MFU gen | peak GiB | gap max |"
        lines += ["", head, "|---" * 15 + "|"]
        for r in rows:
            cells = [r["model"], r["kind"], r["length"], r["share_prompts"], r["checkpointing"], r["rows"]]
            cells += [r.get("gen_tokens_per_s"), r["train_tokens_per_s"], r.get("generate"), r["train"], r["total"]]
            cells += [r["mfu_train"], r.get("mfu_generate"), r["peak_gib"], r["logprob_gap_max"]]
            lines.append("| " + " | ".join(_f(c) for c in cells) + " |")
    sc = results["sections"].get("scale", {})
    if "plain" in sc:
        lines += ["", "| path | loss | grad norm | loss rel diff | grad norm rel diff | train s | peak GiB |"]
        lines += ["|---" * 7 + "|"]
        for path in ("plain", "fsdp2_one_process", "ddp_two_processes"):
            r = sc[path]
            if "loss" not in r:
                lines.append(f"| {path} | {r.get('error') or r.get('skipped')} |||||| ")
                continue
            peak = r.get("peak_gib", r.get("peak_gib_per_rank"))
            cells = [r["loss"], r["grad_norm"], r.get("loss_rel_diff"), r.get("grad_norm_rel_diff"), r["train_s"], peak]
            lines.append(f"| {path} | " + " | ".join(_f(c) for c in cells) + " |")
    lines += ["", "Failed: " + (", ".join(results["failed"]) or "nothing")]
    return "\n".join(lines)


def proposed_tolerance(results: dict) -> float | None:
    """2x the largest bfloat16 engine/trainer gap measured (exactness and every real step), rounded up
    to one significant digit."""
    gaps = [results["sections"].get("exactness", {}).get("engine_gap", {}).get("bfloat16", {}).get("max")]
    for k, sec in results["sections"].items():
        if k.startswith("throughput"):
            gaps += [r["logprob_gap_max"] for r in sec.get("rows", []) if r["kind"] == "real"]
    gaps = [g for g in gaps if g is not None]
    if not gaps:
        return None
    x = 2 * max(gaps)
    digit = 10 ** math.floor(math.log10(x))
    return math.ceil(x / digit) * digit
