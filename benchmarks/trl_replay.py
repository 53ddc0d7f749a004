"""cepo's update on TRL's rollouts: replay the generation batches a TRL run trained on.

``benchmarks/trl_runner.py`` with ``record`` saves every generation batch TRL's ``GRPOTrainer``
trained on (``<out>/batches.pt``: prompt and completion ids and masks, rewards, TRL's advantages).
This script starts from the same model folder and feeds those batches, in order, to cepo's own
update (``RLModule._update``: group advantages from the rewards, the uniform credit, the
clipped surrogate with the token-mean normaliser over the batch, micro-batches grouped by
length, zero-advantage rows skipped), then clips the gradient and steps AdamW as
``RLModule._step`` does. The sampling and the data order are TRL's; the update is cepo's. The
final weights are compared with TRL's final model and saved as a Hugging Face folder, which
``vs_trl.py --replay`` scores with the same evaluator as both runs: if the accuracy matches TRL's,
the two frameworks' updates agree and a gap between the runs comes from the rollouts.

    .venv/bin/python benchmarks/trl_replay.py BATCHES.pt BASE_FOLDER OUT_FOLDER [--trl-model FOLDER]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def rows(ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    """The unpadded id lists of a padded ``[N, T]`` batch."""
    return [r[m.bool()].tolist() for r, m in zip(ids, mask)]


def replay(
    batches: list[dict],
    model_path: str,
    group_size: int,
    lr: float = 1e-4,
    weight_decay: float = 0.01,
    grad_clip: float = 1.0,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    micro_batch: int = 64,
    decay_groups: bool = False,
):
    """A :class:`~cepo.module.RLModule` trained on ``batches``; its per-update gradient norms.

    ``decay_groups``: no weight decay on biases and norm weights (transformers' ``Trainer``);
    False decays every weight, as cepo's optimizer does.
    """
    from cepo.advantages import group_advantages
    from cepo.module import RLModule
    from cepo.rollout.batch import Provenance, RolloutBatch, pack

    module = RLModule(
        model_path=model_path, lora="off", c_dual=None, micro_batch_size=micro_batch, eps_low=eps_low, eps_high=eps_high
    )
    module.configure_model()
    step = module.rollout_step  # its update, without its optimizer step (the loop below steps)
    step.optimizer_step = lambda stats, opt, sched: "applied"
    named = [(n, p) for n, p in module.policy.named_parameters() if p.requires_grad]
    if decay_groups:
        plain = [p for n, p in named if "norm" in n or "bias" in n]
        decayed = [p for n, p in named if not ("norm" in n or "bias" in n)]
        groups = [{"params": decayed, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]
    else:
        groups = [{"params": [p for _, p in named], "weight_decay": weight_decay}]
    opt = torch.optim.AdamW(groups, lr=lr)
    pad = module.tokenizer.pad_token_id
    norms = []
    for b in batches:
        prompt_ids = rows(b["prompt_ids"], b["prompt_mask"])
        response_ids = rows(b["completion_ids"], b["completion_mask"])
        input_ids, attention, start, response_mask = pack(prompt_ids, response_ids, pad)
        rewards = b["rewards"].float()
        n = len(prompt_ids)
        batch = RolloutBatch(
            input_ids=input_ids,
            attention_mask=attention,
            response_start=start,
            response_mask=response_mask,
            rewards=rewards,
            correct=rewards > 0.5,
            engine_logprobs=None,
            group_size=group_size,
            provenance=Provenance(
                prompts=[str(p) for p in b["prompts"][::group_size]],
                answers=[str(a) for a in b["answers"][::group_size]],
                solutions=[""] * (n // group_size),
                responses=[""] * n,
                extracted=[None] * n,
                prompt_ids=prompt_ids[::group_size],
                response_ids=response_ids,
                weight_version=module.ref.version,
            ),
        )
        advantages = group_advantages(rewards, group_size, "std")
        step.update(batch, advantages[:, None] * response_mask, None, None, None, opt, None, None)
        norms.append(float(torch.nn.utils.clip_grad_norm_([p for _, p in named], grad_clip)))
        opt.step()
        opt.zero_grad(set_to_none=True)
        module.ref.version += 1
    return module, norms


def distance(a: torch.nn.Module, b: torch.nn.Module) -> float:
    """The L2 distance between two models' parameters (by name)."""
    pb = dict(b.named_parameters())
    return float(sum((p.detach() - pb[n].detach()).pow(2).sum() for n, p in a.named_parameters()).sqrt())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("batches")
    p.add_argument("model_path", help="the model folder both runs started from")
    p.add_argument("out", help="where the replayed policy is saved (a Hugging Face folder)")
    p.add_argument("--trl-model", help="TRL's final model folder, to compare the weights with")
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--micro-batch", type=int, default=64)
    p.add_argument("--decay-groups", action="store_true", help="no decay on biases and norm weights (as TRL)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    batches = torch.load(a.batches, weights_only=False)
    module, norms = replay(
        batches, a.model_path, a.group, a.lr, a.weight_decay, micro_batch=a.micro_batch, decay_groups=a.decay_groups
    )
    module.export_hf(a.out)
    report = {"updates": len(batches), "grad_norms": norms, "decay_groups": a.decay_groups}
    if a.trl_model:
        from transformers import AutoModelForCausalLM

        trl = AutoModelForCausalLM.from_pretrained(a.trl_model, dtype=torch.float32)
        base = AutoModelForCausalLM.from_pretrained(a.model_path, dtype=torch.float32)
        report.update(distance_to_trl=distance(module.policy, trl), trl_moved=distance(trl, base))
    (Path(a.out) / "replay.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "grad_norms"}))


if __name__ == "__main__":
    main()
