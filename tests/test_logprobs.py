import torch

from cepo.scoring.logprobs import response_logits, token_entropy, token_logprobs


def test_token_logprobs_matches_log_softmax():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 7)
    targets = torch.randint(0, 7, (2, 3))
    expected = torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0]
    assert torch.allclose(token_logprobs(logits, targets), expected, atol=1e-6)


def test_entropy_uniform():
    assert torch.allclose(token_entropy(torch.zeros(1, 1, 4)), torch.log(torch.tensor(4.0)))


def test_response_logits_left_padding_invariant(tiny_model):
    model, tok = tiny_model
    # the same prompt+response with and without left padding gives the same response logits
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    mask = torch.ones_like(ids)
    padded = torch.tensor([[0, 0, 5, 6, 7, 8, 9]])
    pmask = torch.tensor([[0, 0, 1, 1, 1, 1, 1]])
    a = response_logits(model, ids, mask, 3)
    b = response_logits(model, padded, pmask, 5)
    assert torch.allclose(a, b, atol=1e-5)


def test_response_logits_drops_shared_left_padding(tiny_model):
    model, _ = tiny_model
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, input_ids, attention_mask, position_ids):
            seen.append(input_ids.shape[1])
            return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)

    # two rows whose prompts (3 and 2 tokens) sit in a 6-column prompt block: 3 shared pad columns
    ids = torch.tensor([[0, 0, 0, 5, 6, 7, 8, 9], [0, 0, 0, 0, 6, 7, 8, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        got = response_logits(Spy(), ids, mask, 6)
        # independent: a plain forward of each row alone, unpadded (positions 0, 1, ...);
        # logits[t] predicts token t + 1, so the response tokens are predicted from its prompt's last token on
        row0 = model(input_ids=torch.tensor([[5, 6, 7, 8, 9]])).logits[0]  # prompt 5 6 7, response 8 9
        row1 = model(input_ids=torch.tensor([[6, 7, 8]])).logits[0]  # prompt 6 7, response 8
    assert seen == [5]  # the 3 pad columns every row shares were not run
    assert got.shape == (2, 2, row0.shape[-1])
    assert torch.allclose(got[0], row0[2:4], atol=1e-5)
    assert torch.allclose(got[1, :1], row1[1:2], atol=1e-5)  # column 1 of row 1 is padding


# -- logits only where they are read, log-probs and entropies in float32 chunks ------------------
def reference_logprobs(logits, targets):
    """The one-shot implementation the chunked one replaces: a float32 copy of all the logits."""
    logits = logits.float()
    return torch.gather(logits, -1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def reference_entropy(logits):
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def reference_response_logits(model, ids, mask, start):
    """Full-sequence logits, then the response slice (what response_logits did before)."""
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
    return model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, start - 1 : -1]


def test_chunked_logprobs_and_entropy_equal_one_shot_with_gradients(monkeypatch):
    import cepo.scoring.logprobs

    monkeypatch.setattr(cepo.scoring.logprobs, "CHUNK_ELEMENTS", 4 * 11)  # 4 positions a chunk: 15 = 4 + 4 + 4 + 3
    torch.manual_seed(0)
    logits = (3 * torch.randn(3, 5, 11)).requires_grad_()
    targets = torch.randint(0, 11, (3, 5))
    weights = torch.randn(3, 5), torch.randn(3, 5)
    got = token_logprobs(logits, targets), token_entropy(logits)
    expected = reference_logprobs(logits, targets), reference_entropy(logits)
    for g, e in zip(got, expected):
        assert g.dtype == torch.float32 and g.shape == (3, 5)
        assert torch.allclose(g, e, atol=1e-6)
    for g, e, w in zip(got, expected, weights):
        (grad,) = torch.autograd.grad((g * w).sum(), logits)
        (want,) = torch.autograd.grad((e * w).sum(), logits)
        assert torch.allclose(grad, want, atol=1e-6)


def test_bfloat16_logits_are_never_copied_to_float32_whole(monkeypatch):
    """Forward and backward of bfloat16 logits: no float32 tensor larger than one chunk is made
    (every op's output is recorded), and the values and gradients are the float32 ones to bfloat16
    rounding of the logits' gradient."""
    from torch.utils._python_dispatch import TorchDispatchMode

    import cepo.scoring.logprobs

    vocab, chunk = 64, 4
    monkeypatch.setattr(cepo.scoring.logprobs, "CHUNK_ELEMENTS", chunk * vocab)
    torch.manual_seed(0)
    full = 3 * torch.randn(2, 9, vocab)
    logits = full.bfloat16().requires_grad_()
    targets = torch.randint(0, vocab, (2, 9))
    largest = []

    class Largest(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
                    largest.append(t.numel())
            return out

    with Largest():
        lp, ent = token_logprobs(logits, targets), token_entropy(logits)
        (lp.sum() + ent.sum()).backward()
    assert max(largest) <= chunk * vocab  # against 2 * 9 * 64 for a whole copy
    reference = logits.detach().float().requires_grad_()
    (reference_logprobs(reference, targets).sum() + reference_entropy(reference).sum()).backward()
    assert torch.allclose(lp, reference_logprobs(reference, targets), atol=1e-6)  # same bf16 inputs
    assert torch.allclose(ent, reference_entropy(reference), atol=1e-6)
    assert logits.grad.dtype == torch.bfloat16
    assert torch.allclose(logits.grad.float(), reference.grad, rtol=1e-2, atol=1e-3)  # bf16 rounding


def _head_positions(model):
    """Counts the positions the model's LM head computes logits for."""

    class Seen(list):
        pass

    seen = Seen()
    seen.handle = model.get_output_embeddings().register_forward_hook(
        lambda m, a, out: seen.append(out.shape[:-1].numel())
    )
    return seen


def _rows_and_loss_weights():
    # 3 rows: prompts of 3, 2, 4 tokens left-padded to column 4; responses of 3, 1, 2 tokens
    ids = torch.tensor([[0, 5, 6, 7, 8, 9, 10], [0, 0, 6, 7, 8, 0, 0], [4, 5, 6, 7, 8, 9, 0]])
    mask = (ids != 0).long()
    torch.manual_seed(1)
    return ids, mask, 4, torch.randn(3, 3) * mask[:, 4:]


def test_response_logits_run_the_head_on_response_positions_only_with_equal_gradients():
    from tests.helpers import tiny_llama

    model = tiny_llama(vocab_size=50)
    seen = _head_positions(model)
    ids, mask, start, w = _rows_and_loss_weights()
    logits = response_logits(model, ids, mask, start, temperature=0.7)
    assert seen == [3 * 3]  # 3 rows x 3 response columns (the prompt's 4 columns are not run)
    assert logits.shape == (3, 3, 50)
    loss = (token_logprobs(logits, ids[:, start:]) * w).sum() + (token_entropy(logits) * w).sum()
    grads = torch.autograd.grad(loss, list(model.parameters()))
    ref = reference_response_logits(model, ids, mask, start) / 0.7
    assert seen[-1] == 3 * 7  # the reference ran the head on every position
    assert torch.allclose(logits, ref, atol=1e-5)
    ref_loss = (reference_logprobs(ref, ids[:, start:]) * w).sum() + (reference_entropy(ref) * w).sum()
    ref_grads = torch.autograd.grad(ref_loss, list(model.parameters()))
    assert max(float(g.abs().max()) for g in ref_grads) > 1e-3
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, atol=1e-5)


def test_bfloat16_model_against_its_float32_reference():
    """A bfloat16 copy of the model scores and differentiates like the float32 model (old code
    path) to bfloat16 tolerance: log-probs within 0.05 nats, gradients within 5% of their scale."""
    from tests.helpers import tiny_llama

    model = tiny_llama(vocab_size=50)
    half = tiny_llama(vocab_size=50).to(torch.bfloat16)
    seen = _head_positions(half)
    ids, mask, start, w = _rows_and_loss_weights()
    lp = token_logprobs(response_logits(half, ids, mask, start), ids[:, start:])
    assert seen == [9] and lp.dtype == torch.float32
    grads = torch.autograd.grad((lp * w).sum(), list(half.parameters()))
    ref = reference_logprobs(reference_response_logits(model, ids, mask, start), ids[:, start:])
    ref_grads = torch.autograd.grad((ref * w).sum(), list(model.parameters()))
    assert float(((lp - ref) * mask[:, start:]).abs().max()) < 0.05
    for g, r in zip(grads, ref_grads):
        assert float((g.float() - r).abs().max()) <= 0.05 * float(r.abs().max()) + 1e-4


def test_scorer_runs_the_head_on_read_positions_only(tiny_model):
    """Plain micro-batched passes run the head on each micro-batch's response columns, passes over
    shared prefixes on the positions they read (one per response token), and both score as
    full-sequence logits do."""
    from cepo.scoring import Scorer
    from tests.test_prefix import _rows

    model, tok = tiny_model
    seen = _head_positions(model)
    _, _, rows = _rows(tok, temperature=0.7)
    hook = seen.handle  # removed below: the model is shared by the session's tests
    expected = (
        token_logprobs(
            reference_response_logits(model, rows.input_ids, rows.attention_mask, rows.start) / 0.7,
            rows.input_ids[:, rows.start :],
        ).detach()
        * rows.mask
    )
    plain = Scorer(2, share_prefixes=False, share_prompts=False)
    seen.clear()
    lp, _ = plain.logprobs(model, rows)
    widths = [len(r) * int(rows.mask[r].sum(1).clamp(min=1).max()) for r in plain.plan(rows)]
    assert seen == widths and sum(seen) < rows.mask.shape[0] * rows.input_ids.shape[1]
    assert torch.allclose(lp, expected, atol=1e-5)
    shared = Scorer(0)
    shared.logprobs(model, rows)  # decides on sharing (checked against plain passes)
    assert all(shared.checked.values()) and shared.checked
    seen.clear()
    lp, _ = shared.logprobs(model, rows)
    assert seen == [int(rows.mask.sum())]
    assert torch.allclose(lp, expected, atol=1e-5)
    hook.remove()
