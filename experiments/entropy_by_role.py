"""The policy's entropy on each token role of its own sampled responses (decisive / copied / filler).

Checks a base's premise before any training: on the filler task (``cepo.tasks.FillerArithmetic``)
the filler words should carry much of a response's entropy (the base learned a distribution over
free wording, not one wording per problem). Samples one response per validation prompt at
temperature 1 and prints, per role, the mean next-token entropy (nats) per token and per response
and the token count, and the share of correct responses.

    .venv/bin/python experiments/entropy_by_role.py --model builtin-filler --task filler [--prompts 200]
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from cepo.bases.warmup import resolve_model_path
from cepo.bases.warmup_kinds import WARMUP_TASKS
from cepo.callbacks.token_weights import token_roles_of
from cepo.rollout.batch import pack
from cepo.rollout.engine import SamplingConfig
from cepo.rollout.hf_engine import HFEngine
from cepo.scoring.logprobs import token_entropy


def main() -> None:
    torch.set_num_threads(1)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="builtin-filler", help="model folder, builtin or builtin-filler")
    p.add_argument("--task", default="filler", choices=sorted(WARMUP_TASKS))
    p.add_argument("--prompts", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.manual_seed(a.seed)
    path = resolve_model_path(a.model)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    engine = HFEngine()
    engine.setup(model, tok, path)
    task = WARMUP_TASKS[a.task]()
    examples = task.split("val")[: a.prompts]
    prompts = [tok(e.prompt, add_special_tokens=False).input_ids for e in examples]
    responses = engine.generate(prompts, 1, SamplingConfig(temperature=1.0, max_new_tokens=64)).response_ids
    ids, attn, start, mask = pack(prompts, responses, tok.pad_token_id)  # [N, L], [N, L], T = L - start
    with torch.no_grad():
        position_ids = (attn.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=attn, position_ids=position_ids).logits
        entropy = token_entropy(logits[:, start - 1 : -1])  # [N, T]: before each response token
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for i, row in enumerate(responses):
        for t, role in enumerate(token_roles_of(task.token_roles, tok, row)):
            sums[role][0] += float(entropy[i, t])
            sums[role][1] += 1
    texts = tok.batch_decode(responses, skip_special_tokens=True)
    correct = sum(task.is_correct(t, e.answer) for t, e in zip(texts, examples)) / len(examples)
    print(f"{path}: {len(examples)} sampled responses, {correct:.1%} correct; e.g. {texts[0]!r}")
    print("| role | mean entropy per token (nats) | entropy per response (nats) | tokens |\n|---|---|---|---|")
    for role, (s, n) in sorted(sums.items()):
        print(f"| {role} | {s / n:.3f} | {s / len(examples):.2f} | {n} |")


if __name__ == "__main__":
    main()
