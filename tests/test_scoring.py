"""The scoring loop's shared contexts (cepo.scoring.shared_prompt): each distinct context of a micro-batch
runs once, forward and backward, and the values and gradients are those of plain per-row passes."""

import pytest
import torch
from PIL import Image

from cepo.credit import Contrastive, Uniform
from cepo.rollout.batch import pack
from cepo.scoring import Packed, Scorer, microbatch
from cepo.scoring.logprobs import response_logits, token_logprobs
from cepo.scoring.shared_prompt import contexts, prompt_logits
from tests.helpers import one_sgd_step, tiny_llama

RESPONSES = [[11, 12, 13], [14], [15, 16, 17, 18, 19], [20, 21], [22, 23, 24], [25]]


def test_contexts_are_equal_tokens_and_the_same_images():
    ids, attn, start, _ = pack([[5, 6], [5, 6], [7], [5, 6]], [[1], [2], [3], [4]], 0)
    assert contexts(ids, attn, start) == [0, 0, 1, 0]
    a, b = object(), object()
    assert contexts(ids, attn, start, [a, b, a, a]) == [0, 1, 2, 0]  # same tokens, other image


def test_plan_keeps_a_context_together_and_counts_it_once():
    # prompts (left-padded to 3 columns) of lengths 3, 3, 1, 3, 1; responses 2, 4, 1, 1, 3
    ids, attn, start, _ = pack([[5, 6, 7]] * 2 + [[8]] + [[5, 6, 7]] + [[8]], [[1] * 2, [1] * 4, [1], [1], [1] * 3], 0)
    rows = torch.arange(5)
    of = contexts(ids, attn, start)
    assert of == [0, 0, 1, 0, 1]
    plan = lambda budget, size=0: [
        c.tolist() for c in microbatch.plan(rows, attn, start, size, max_tokens=budget, contexts=of)
    ]
    # order (prompt, context, response): 2 (1, c1, 1), 4 (1, c1, 3), 3 (3, c0, 1), 0 (3, c0, 2), 1 (3, c0, 4)
    assert plan(None) == [[2, 4, 3, 0, 1]]
    assert microbatch.shared_tokens(1, 2, 1, 3) == 7 and microbatch.shared_tokens(2, 3, 3, 3) == 15
    assert plan(7) == [[2, 4], [3, 0], [1]]  # 2+4: 1 + 2x3 = 7; +3: 2x3 + 3x3 = 15; 3+0: 3 + 2x2 = 7; +1: 3 + 3x4
    assert plan(15) == [[2, 4, 3], [0, 1]]  # 2+4+3+0: 2x3 + 4x3 = 18; 0+1: 3 + 2x4 = 11
    assert plan(100, size=2) == [[2, 4], [3, 0], [1]]
    assert plan(1) == [[2], [4], [3], [0], [1]]


def _vl(family):
    import tempfile
    from pathlib import Path

    from cepo.bases.tiny import build_tiny_vl
    from cepo.policy import load_policy

    path = build_tiny_vl(Path(tempfile.mkdtemp()) / "m", seed=0, family=family)
    return load_policy(str(path), "on")


def _rows(family):
    """3 rollouts of each of 2 prompts (of different lengths): a model and its packed rows."""
    torch.manual_seed(0)
    if family == "text":
        ids, attn, start, mask = pack([p for p in ([5, 6, 7, 8], [9, 10]) for _ in range(3)], RESPONSES, 0)
        return tiny_llama(vocab_size=50), Packed(ids, attn, start, mask.bool())
    model, tok, vision = _vl(family)
    images = [vision.encode([Image.new("RGB", (56, 56), c)]) for c in ("white", "black")]
    prompts = [vision.prompt_ids(f"hi <image> q{k}" + " x" * k, images[k]) for k in range(2)]
    ids, attn, start, mask = pack([p for p in prompts for _ in range(3)], RESPONSES, tok.pad_token_id)
    return model, Packed(ids, attn, start, mask.bool(), images=[images[i // 3] for i in range(6)], vision=vision)


@pytest.mark.parametrize("family", ["text", "qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_shared_contexts_give_the_plain_values_and_gradients(family):
    """Log-probs and the gradient of a weighted sum of them (every trainable weight, LoRA or full):
    one pass per context equals one pass per row to float32 rounding."""
    model, rows = _rows(family)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    targets = rows.input_ids[:, rows.start :]
    weights = torch.randn(targets.shape) * rows.mask  # the response positions only
    everything = torch.arange(6)

    def grads(logits):
        lp = token_logprobs(logits, targets)
        return lp.detach(), torch.autograd.grad((lp * weights).sum(), params)

    ids, attn = rows.input_ids, rows.attention_mask
    plain, g_plain = grads(response_logits(model, ids, attn, rows.start, 1.0, rows.model_inputs(model, everything)))
    of = contexts(rows.input_ids, rows.attention_mask, rows.start, rows.images)
    assert of == [0, 0, 0, 1, 1, 1]
    firsts = torch.tensor([0, 3])
    shared, g_shared = grads(
        prompt_logits(model, rows.input_ids, rows.attention_mask, rows.start, 1.0, rows.model_inputs(model, firsts), of)
    )
    assert torch.allclose(plain * rows.mask, shared * rows.mask, atol=1e-5)
    for a, b in zip(g_plain, g_shared):
        assert float(a.abs().max()) > 0 or float(b.abs().max()) == 0
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(a.abs().max()) + 1e-8)


def test_a_model_without_a_cache_is_scored_plainly(caplog):
    """transformers' gradient checkpointing drops the cache: the scorer does not share there; a
    model that refuses ``use_cache`` is found out by the check and scored plainly."""
    model, rows = _rows("text")

    class NoCache(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(self, input_ids, attention_mask, position_ids):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)

    scorer = Scorer(0, share_prefixes=False)
    plain = Scorer(0, share_prefixes=False, share_prompts=False).logprobs(model, rows)[0]
    assert torch.allclose(scorer.logprobs(NoCache(model), rows)[0], plain, atol=1e-6)
    assert scorer.prompts_checked == {("llama", "sdpa"): False} and "not sharing" in caplog.text
    model.gradient_checkpointing_enable()
    assert not Scorer(0).shares_prompts(model.train(), rows, torch.arange(6))


@pytest.mark.parametrize("credit", [Uniform, Contrastive], ids=["grpo", "cepo"])
@pytest.mark.parametrize("micro_batch_size", [0, 3])
def test_a_step_over_shared_contexts_is_the_plain_step(tmp_path, tiny_dir, credit, micro_batch_size):
    """One SGD step (lr 1: the change is the gradient) with shared contexts equals the plain one,
    whole or in micro-batches that split a group; the policy moved."""
    kw = dict(prompts=3, credit=credit(), micro_batch_size=micro_batch_size)
    plain, module = one_sgd_step(tmp_path / "plain", tiny_dir, share_prompts=False, **kw)
    shared, module = one_sgd_step(tmp_path / "shared", tiny_dir, share_prompts=True, **kw)
    assert module.scorer.prompts_checked == {("llama", "sdpa"): True}
    from transformers import AutoModelForCausalLM

    initial = AutoModelForCausalLM.from_pretrained(tiny_dir).state_dict()
    assert max(float((plain[k] - initial[k]).abs().max()) for k in initial) > 1e-4
    for k in plain:
        assert torch.allclose(plain[k], shared[k], atol=2e-6), k


@pytest.mark.parametrize("credit", [Uniform, Contrastive], ids=["grpo", "cepo"])
def test_a_vl_step_over_shared_contexts_is_the_plain_step(tmp_path, credit):
    """The same with images (a Qwen2-VL LoRA policy, micro-batches of 3 rows over groups of 4)."""
    from cepo.bases.tiny import build_tiny_vl
    from tests.test_vision import ParityVisual

    path = build_tiny_vl(tmp_path / "vl", seed=0)
    task = ParityVisual(train_size=64, val_size=4, test_size=4)
    kw = dict(credit=credit(), micro_batch_size=3)
    plain, _ = one_sgd_step(tmp_path / "a", path, task, 2, 4, share_prompts=False, **kw)
    shared, module = one_sgd_step(tmp_path / "b", path, task, 2, 4, share_prompts=True, **kw)
    assert module.scorer.prompts_checked == {("qwen2_vl", "sdpa"): True}
    for k in plain:
        assert torch.allclose(plain[k], shared[k], atol=2e-6), k


def test_activation_checkpointing_keeps_the_gradient(tiny_dir):
    """``model.gradient_checkpointing`` (transformers' activation checkpointing) on a LoRA policy
    in training mode: it is on, and the gradient is the one without it."""
    from cepo.policy import load_policy

    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        policy, _, _ = load_policy(str(tiny_dir), "on", gradient_checkpointing=checkpointing)
        assert policy.is_gradient_checkpointing == checkpointing
        torch.manual_seed(1)
        for name, p in policy.named_parameters():
            if "lora_B" in name:  # B starts at 0: give the adapter a gradient path through A
                p.data.normal_()
        policy.train()
        ids = torch.randint(3, 50, (4, 20), generator=torch.Generator().manual_seed(2))
        token_logprobs(response_logits(policy, ids, torch.ones_like(ids), 10), ids[:, 10:]).sum().backward()
        grads.append({n: p.grad for n, p in policy.named_parameters() if p.requires_grad})
    assert set(grads[0]) == set(grads[1]) and all(g is not None for g in grads[1].values())
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name
