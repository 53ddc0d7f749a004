import torch

from cepo.logprobs import response_logits, token_entropy, token_logprobs


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
