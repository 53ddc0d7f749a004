"""One optimizer update of :class:`RLModule` on hand-made rollout batches, on one process or
as one rank of a 2-process DDP or FSDP2 (gloo) run; used by ``tests/test_distributed.py``.

On two ranks it runs as ``update:CASE`` jobs of ``python -m tests.ranks`` (:func:`run`), which save
each rank's policy after the update and the number of gradient-carrying forward passes it ran.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from cepo import distributed
from cepo.credit import Contrastive, EvidenceRatio, HighEntropy, Redistributed, Uniform
from cepo.module import RLModule
from tests.helpers import FixedBatches, make_batch, trainer

GROUP = 4
MICRO_BATCH = 2
# (prompt, answer, rewards of its 4 rollouts): rank 0 holds 3 groups whose rewards differ (12 rows
# with non-zero advantages: 6 micro-batches of 2), rank 1 one such group and one whose rollouts all
# failed (4 rows with non-zero advantages: 2 micro-batches).
RANK_GROUPS = [
    [("3+4-2=", "5", [1, 0, 0, 1]), ("12+7=", "19", [0, 1, 0, 0]), ("8-5+9=", "12", [1, 1, 0, 1])],
    [("6+6-3=", "9", [1, 0, 0, 0]), ("2+2=", "4", [0, 0, 0, 0])],
]
# or rank 1 holds only a tied group (no row with a loss, no evidence computed) while rank 0 trains
TIED_GROUPS = [RANK_GROUPS[0], [("2+2=", "4", [0, 0, 0, 0])]]
CREDITS = {
    "uniform": lambda: Uniform(),
    "contrastive": lambda: Contrastive(clip=0.5, beta=0.5),
    "evidence_ratio": lambda: EvidenceRatio(clip=0.5, beta=0.5),
    "high_entropy": lambda: HighEntropy(top_fraction=0.5),
    "redistributed": lambda: Redistributed(clip=0.5),
}


def group_batch(tok, groups):
    """Rollouts of varied lengths; correct ones end in the answer, wrong ones in another number."""
    prompts, answers, responses, rewards, extracted = [], [], [], [], []
    for prompt, answer, group_rewards in groups:
        prompts.append(prompt)
        answers.append(answer)
        for j, r in enumerate(group_rewards):
            value = answer if r else str(int(answer) + j + 1)
            responses.append(" " + "1+" * j + f"{j} = {value}")
            rewards.append(float(r))
            extracted.append(value)
    return make_batch(tok, prompts, answers, responses, rewards, extracted, GROUP)


def rank_batch(tok, rank: int, layout: str = "uneven"):
    return group_batch(tok, (TIED_GROUPS if layout == "tied" else RANK_GROUPS)[rank])


def global_batch(tok, layout: str = "uneven"):
    """Every rank's rows in one batch: what a single process trains on."""
    return group_batch(tok, [g for groups in (TIED_GROUPS if layout == "tied" else RANK_GROUPS) for g in groups])


class CountForwards(L.Callback):
    """Counts the policy's gradient-carrying forward passes over rows (the trained micro-batches;
    not FSDP's one-token zero-loss passes)."""

    def __init__(self):
        self.count = 0

    def on_fit_start(self, tr, pl_module):
        def hook(mod, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            context_pass = kwargs.get("use_cache") and kwargs.get("past_key_values") is None  # shared prompts
            self.count += torch.is_grad_enabled() and ids is not None and ids.numel() > 1 and not context_pass

        pl_module.policy.register_forward_pre_hook(hook, with_kwargs=True)


def strategy(name: str):
    """The Lightning strategy of 2 processes: ``ddp``, or ``fsdp`` (FSDP2 through
    ``ModelParallelStrategy``, as ``configs/scale/cpu_fsdp.yaml``). A collective that one rank
    never joins raises after a minute instead of hanging."""
    from datetime import timedelta

    from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy

    if name == "fsdp":
        return ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1, timeout=timedelta(seconds=60))
    return DDPStrategy(timeout=timedelta(seconds=60))


def one_update(
    model_dir: str,
    credit: str,
    batches,
    root,
    devices: int = 1,
    strategy_name: str = "ddp",
    max_tokens: int | None = None,
    share_prompts: bool = True,
    **module_kw,
) -> dict:
    """One SGD update (lr 1, no clipping) on ``batches(step, rank)``, in micro-batches of
    ``MICRO_BATCH`` rows or, with ``max_tokens``, of that many padded tokens (each group's prompt
    run once per micro-batch with ``share_prompts``, as by default); returns the policy's
    state after it (gathered whole under FSDP) and the number of gradient-carrying forward passes."""
    L.seed_everything(0)
    module = RLModule(
        model_path=model_dir,
        credit=CREDITS[credit](),
        optimizer=lambda p: torch.optim.SGD(p, lr=1.0),
        grad_clip=None,
        micro_batch_size=MICRO_BATCH if max_tokens is None else 0,
        max_tokens_per_micro_batch=max_tokens,
        share_prompts=share_prompts,
        **module_kw,
    )
    counter = CountForwards()
    extra = {"devices": devices, "strategy": strategy(strategy_name)} if devices > 1 else {}
    tr = trainer(root, steps=1, callbacks=[counter], **extra)
    tr.fit(module, datamodule=FixedBatches(batches))
    assert module.rl_step == 1 and module.weight_version == 1
    state = distributed.full_state_dict(module.policy)
    return {"state": state, "forwards": counter.count, "sharded": distributed.is_sharded(module.policy)}


def run(model_dir: str, case: str, out: Path) -> dict:
    """This rank's :func:`one_update` on 2 ranks for ``case``, ``CREDIT-STRATEGY-LAYOUT[-MAX_TOKENS]``
    (``uniform-fsdp-uneven``; ``uniform-ddp-uneven-60``: micro-batches of at most 60 tokens)."""
    from transformers import AutoTokenizer

    credit, name, layout, *max_tokens = case.split("-")
    tok = AutoTokenizer.from_pretrained(model_dir)
    batches = lambda step, rank: rank_batch(tok, rank, layout)
    budget = int(max_tokens[0]) if max_tokens else None
    return one_update(model_dir, credit, batches, out, devices=2, strategy_name=name, max_tokens=budget)
