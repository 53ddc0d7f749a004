"""The vLLM engine against the transformers engine, for real (no mocks).

Skipped with the import error as the reason where vLLM cannot be imported. One engine serves
the whole module: vLLM keeps process-global state, and deleting one engine breaks another.
"""

import copy

import pytest
import torch

from cepo.rollout import vllm_engine
from cepo.rollout.batch import pack
from cepo.rollout.engine import SamplingConfig
from cepo.rollout.hf_engine import HFEngine
from cepo.rollout.vllm_engine import VLLMEngine, hf_weights, vllm_available
from cepo.scoring.logprobs import response_logits, token_logprobs
from tests.helpers import fit_args, run_cli, tiny_llama

OK, WHY = vllm_available()
pytestmark = [pytest.mark.vllm, pytest.mark.skipif(not OK, reason=f"vLLM not importable: {WHY}")]
PROMPTS = ["12+34-5=", "7+8+9=", "99-45+3=", "50-25-5="]


@pytest.fixture(scope="module")
def setup(tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    policy = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    engine = VLLMEngine(max_model_len=128)
    engine.setup(policy, tok, str(tiny_dir))
    engine.sync_weights(policy, 0)
    prompts = [tok(p, add_special_tokens=False).input_ids for p in PROMPTS]
    return policy, tok, engine, prompts


def trainer_logprobs(policy, tok, prompts, gen, n):
    rows = [p for p in prompts for _ in range(n)]
    ids, attn, start, mask = pack(rows, gen.response_ids, tok.pad_token_id)
    with torch.no_grad():
        lp = token_logprobs(response_logits(policy, ids, attn, start), ids[:, start:])
    return lp, mask


def check_agreement(policy, tok, engine, prompts):
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=16)
    hf = HFEngine()
    hf.setup(policy, tok, "")
    assert engine.generate(prompts, 1, greedy).response_ids == hf.generate(prompts, 1, greedy).response_ids
    gen = engine.generate(prompts, 4, SamplingConfig(temperature=1.0, max_new_tokens=16, seed=3))
    lp, mask = trainer_logprobs(policy, tok, prompts, gen, 4)
    for i, row in enumerate(gen.logprobs):
        gap = (torch.tensor(row) - lp[i, : len(row)]).abs().max()
        assert gap < 1e-4, (i, float(gap))


def test_greedy_and_logprobs_agree_before_and_after_sync(setup):
    policy, tok, engine, prompts = setup
    check_agreement(policy, tok, engine, prompts)
    # a training step moves the weights; after the sync both engines agree again
    opt = torch.optim.SGD(policy.parameters(), lr=0.5)
    ids, attn, start, mask = pack(prompts, [[5, 6, 7]] * len(prompts), tok.pad_token_id)
    loss = -token_logprobs(response_logits(policy, ids, attn, start), ids[:, start:]).sum()
    loss.backward()
    opt.step()
    assert engine.probe(policy) > 1e-3  # the engine is stale now, and the probe sees it
    engine.sync_weights(policy, 1)
    assert engine.weight_version == 1 and engine.last_probe_gap < 1e-4
    check_agreement(policy, tok, engine, prompts)


def test_tied_lm_head_is_pushed(setup):
    policy, _, _, _ = setup
    names = [k for k, _ in hf_weights(policy)]
    assert policy.config.tie_word_embeddings and "lm_head.weight" in names


def test_lora_merged_push_after_adapter_changed(setup):
    from peft import LoraConfig, get_peft_model

    base, tok, engine, prompts = setup
    peft_model = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # the adapter changed (as after training)
    before = {k: v.clone() for k, v in peft_model.state_dict().items() if "lora_" in k}
    engine.sync_weights(peft_model, 2)
    after = {k: v for k, v in peft_model.state_dict().items() if "lora_" in k}
    assert all(torch.equal(before[k], after[k]) for k in before)  # trainable adapter untouched
    assert engine.last_probe_gap < 1e-4
    check_agreement(peft_model, tok, engine, prompts)
    engine.sync_weights(base, 3)  # leave the shared engine on the plain model


def test_sync_with_changed_names_is_refused(setup):
    policy, _, engine, _ = setup
    broken = copy.deepcopy(policy)
    engine.verify_sync = True
    with pytest.raises(RuntimeError, match="names/shapes changed"):
        engine.sync_weights(torch.nn.Linear(2, 2), 9)
    assert engine.weight_version != 9
    engine.sync_weights(broken, 4)


@pytest.mark.parametrize("sabotage", ["push-nothing", "push-stale"])
def test_failed_sync_is_detected(setup, monkeypatch, sabotage):
    """A push that silently leaves vLLM on the old weights is caught by the probe: sync_weights
    raises the stale-weights error and does not take the new version."""
    policy, _, engine, _ = setup
    assert engine.verify_sync
    engine.sync_weights(policy, 10)  # the engine holds `policy` now
    moved = copy.deepcopy(policy)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))  # as after training steps
    if sabotage == "push-nothing":  # the push reaches vLLM but loads nothing
        rpc = engine.llm.collective_rpc
        monkeypatch.setattr(
            engine.llm, "collective_rpc", lambda m, *a, **kw: None if m == "reload_weights" else rpc(m, *a, **kw)
        )
    else:  # the push carries the weights the engine already has
        stale = vllm_engine.hf_weights(policy)
        monkeypatch.setattr(vllm_engine, "hf_weights", lambda model: [(k, v.clone()) for k, v in stale])
    with pytest.raises(RuntimeError, match="weight sync to vLLM failed: probe log-prob gap"):
        engine.sync_weights(moved, 11)
    assert engine.weight_version == 10  # the engine does not claim the new weights
    assert engine.last_probe_gap > engine.sync_tolerance
    monkeypatch.undo()
    engine.sync_weights(moved, 11)  # the same push, not sabotaged, passes the probe
    assert engine.weight_version == 11 and engine.last_probe_gap < 1e-4
    engine.sync_weights(policy, 12)  # leave the shared engine on the plain model


@pytest.mark.e2e
def test_fit_with_vllm_engine_end_to_end(tmp_path, tiny_dir):
    """`cepo fit` with VLLMEngine, in a subprocess (its own vLLM engine)."""
    # rewards that vary within a group, so every step trains rows and the weights really move
    extra = ["--export_hf", "false", "--model.mismatch_stop", "1e-3", "--data.task", "tests.helpers.TextParity"]
    out = run_cli(["fit", *fit_args(tiny_dir, tmp_path, "vllm", "engine/vllm.yaml", steps=3, prompts=4, extra=extra)])
    assert out.returncode == 0, out.stderr[-3000:]
    import csv

    rows = list(csv.DictReader(open(tmp_path / "vllm" / "v" / "metrics.csv")))
    gaps = [float(r["train/logprob_gap_max"]) for r in rows if r.get("train/logprob_gap_max")]
    assert len(gaps) == 3 and max(gaps) < 1e-3, gaps


@pytest.mark.e2e
@pytest.mark.slow  # a second vLLM fit (about 25 s); test_failed_sync_is_detected catches the same push in-process
def test_fit_stops_when_the_engine_keeps_stale_weights(tmp_path, tiny_dir):
    """`cepo fit` with a vLLM engine whose weight pushes do nothing: the probe after the first
    optimizer step raises, and training stops with the stale-weights error."""
    extra = [
        "--data.engine.class_path",
        "tests.helpers.PushlessVLLMEngine",
        "--data.task",
        "tests.helpers.TextParity",  # rewards vary within groups: the first step moves the weights
        "--model.optimizer.init_args.lr",
        "0.01",
        "--report_base",
        "false",
        "--export_hf",
        "false",
    ]
    out = run_cli(["fit", *fit_args(tiny_dir, tmp_path, "stale", "engine/vllm.yaml", steps=3, prompts=4, extra=extra)])
    assert out.returncode != 0, out.stdout[-2000:]
    assert "weight sync to vLLM failed: probe log-prob gap" in out.stderr, out.stderr[-3000:]
    assert not (tmp_path / "stale" / "v" / "summary.json").exists()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lora_weights_for_the_engine_leave_the_model_untouched(dtype):
    """The pushed weights equal peft's merged weights, and reading them 50 times changes no weight
    of the model (no in-place merge/unmerge: the frozen base is also the KL reference and the Base
    teacher). Needs no vLLM."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama().to(dtype), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for _ in range(50):
        pushed = dict(hf_weights(model))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    reference = copy.deepcopy(model).merge_and_unload().state_dict()
    assert sorted(pushed) == sorted(reference)
    assert all(torch.equal(pushed[k], reference[k]) for k in reference)
