"""The rollout step in plain torch (cepo.step.RolloutStep): run with no Trainer, it takes the same
update as the LightningModule that wraps it."""

import pytest
import torch
from transformers import AutoTokenizer

from cepo.objectives import Objective
from cepo.policy import PolicyRef, load_policy
from cepo.scoring import Scorer
from cepo.step import RolloutStep, StepSettings
from cepo.teacher import Live, TeacherContexts
from tests import ddp_step


@pytest.mark.parametrize("credit", ["uniform", "contrastive"])
def test_a_step_without_lightning_is_the_modules_step(tmp_path, tiny_dir, credit):
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    batch = ddp_step.global_batch(tok)
    # settings away from the defaults, so that a module that dropped them would differ
    settings = dict(advantage_scale="none", loss_agg="seq_mean", eps_low=0.1)
    batches = lambda step, rank: ddp_step.global_batch(tok)
    module = ddp_step.one_update(str(tiny_dir), credit, batches, tmp_path, **settings)

    torch.manual_seed(0)
    policy, tok, vision = load_policy(str(tiny_dir), "auto")
    policy.train()
    teacher, weights = TeacherContexts(), Live()
    teacher.setup(PolicyRef(policy, tok, str(tiny_dir), vision=vision))
    weights.setup(policy)
    step = RolloutStep(
        policy,
        Scorer(ddp_step.MICRO_BATCH),
        ddp_step.CREDITS[credit](),
        teacher,
        weights,
        Objective(),
        StepSettings(grad_clip=None, **settings),
    )
    initial = {k: v.detach().clone() for k, v in policy.state_dict().items()}
    result = step(batch, torch.optim.SGD([p for p in policy.parameters() if p.requires_grad], lr=1.0))
    assert result.updates == 1 and not result.stop
    assert set(result.timings) == {"samples", "old_logprobs", "teacher", "train"}
    assert (result.record.inputs.pos_logprobs is not None) == (credit == "contrastive")
    after = policy.state_dict()
    assert max(float((after[k] - initial[k]).abs().max()) for k in initial) > 1e-4  # it moved
    for k in initial:
        assert torch.allclose(after[k], module["state"][k], rtol=0, atol=1e-6), k
