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
