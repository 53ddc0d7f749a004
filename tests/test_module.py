"""RLModule options checked against hand computations: the KL penalty to the reference (LoRA
adapter disabled, or a frozen copy), truncated importance sampling (tis_cap), the engine/trainer
mismatch guard, and the LoRA-merged Hugging Face export."""

import copy
import csv
import json
import logging
import math

import lightning as L
import pytest
import torch
from transformers import AutoModelForCausalLM

from cepo.cli import cli_main
from cepo.module import RLModule
from cepo.rollout.datamodule import RolloutDataModule
from tests.helpers import AllWrong, TextParity, fit_args, one_sgd_step, plain_logprobs, row_logprobs, trainer

LORA_PATHS = pytest.mark.parametrize("lora", ["on", "off"], ids=["lora-adapter-disabled", "frozen-copy"])


def k3(logp, ref):
    d = ref - logp
    return torch.exp(d) - d - 1


def rows_of(batch):
    """``(prompt ids, response ids)`` of every row."""
    return [
        (batch.provenance.prompt_ids[i // batch.group_size], r) for i, r in enumerate(batch.provenance.response_ids)
    ]


class Record(L.Callback):
    """Per rollout step: the batch, a copy of the policy before the step, the logged metrics."""

    def __init__(self):
        self.batches, self.policies, self.metrics = [], [], []

    def on_train_batch_start(self, tr, pl_module, batch, batch_idx):
        self.batches.append(batch)
        self.policies.append(copy.deepcopy(pl_module.policy))

    def on_train_batch_end(self, tr, pl_module, outputs, batch, batch_idx):
        self.metrics.append({k: float(v) for k, v in tr.callback_metrics.items()})


def fit(tmp_path, tiny_dir, task, steps, callbacks, lr=0.5, **module_kw):
    L.seed_everything(0)
    module = RLModule(
        model_path=str(tiny_dir), optimizer=lambda p: torch.optim.SGD(p, lr=lr), grad_clip=None, **module_kw
    )
    data = RolloutDataModule(task=task, prompts_per_step=2, group_size=4, eval_size=4, eval_k=0)
    tr = trainer(tmp_path, steps=steps, callbacks=list(callbacks))
    tr.fit(module, datamodule=data)
    return tr, module


def reference_model(tiny_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_dir).eval()


# -- KL to the reference --------------------------------------------------------------------------
@LORA_PATHS
def test_kl_is_zero_at_the_reference_then_the_k3_of_policy_against_reference(tmp_path, tiny_dir, lora):
    rec = Record()
    fit(tmp_path, tiny_dir, TextParity(train_size=200, val_size=4, test_size=4), 3, [rec], kl_coef=0.1, lora=lora)
    kls = [m["train/kl"] for m in rec.metrics]
    assert kls[0] == pytest.approx(0.0, abs=1e-7)  # the policy is the reference at the first step
    assert kls[1] > 1e-6 and kls[2] > 1e-6  # updates moved it away
    ref = reference_model(tiny_dir)
    for step in (1, 2):  # the logged value is the token mean of k3(policy, reference)
        batch = rec.batches[step]
        policy, reference = plain_logprobs(rec.policies[step], batch), plain_logprobs(ref, batch)
        expected = float(k3(policy, reference)[batch.response_mask].mean())
        assert kls[step] == pytest.approx(expected, rel=1e-4, abs=1e-9), step


class Perturb(L.Callback):
    """Moves the policy away from the reference before training (seeded): the LoRA B matrices
    (zero at start) with LoRA, every weight otherwise."""

    def on_fit_start(self, tr, pl_module):
        params = [(name, p) for name, p in pl_module.policy.named_parameters() if p.requires_grad]
        lora = any("lora_" in name for name, _ in params)
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, p in params:
                if not lora or "lora_B" in name:
                    p.add_(0.05 * torch.randn(p.shape, generator=gen))


@LORA_PATHS
def test_kl_gradient_by_hand(tmp_path, tiny_dir, lora):
    """Rewards all 0, so the surrogate carries nothing: one SGD step (lr 1) is minus the gradient of
    ``kl_coef * mean_t k3(logp_t, ref_t)`` over every response token, computed here row by row."""
    rec, coef = Record(), 0.3
    _, module = fit(
        tmp_path,
        tiny_dir,
        AllWrong(train_size=200, val_size=4, test_size=4),
        1,
        [Perturb(), rec],
        1.0,
        kl_coef=coef,
        lora=lora,
    )
    batch, before = rec.batches[0], rec.policies[0]
    assert bool((batch.rewards == 0).all())
    ref = reference_model(tiny_dir)
    n_tokens = int(batch.response_mask.sum())
    loss = 0.0
    for prompt, response in rows_of(batch):
        with torch.no_grad():
            ref_lp = row_logprobs(ref, prompt, response)
        loss = loss + k3(row_logprobs_grad(before, prompt, response), ref_lp).sum()
    (coef * loss / n_tokens).backward()
    expected_kl = float(loss) / n_tokens
    assert rec.metrics[0]["train/kl"] == pytest.approx(expected_kl, rel=1e-4)
    assert expected_kl > 1e-4  # the perturbation moved the policy away from the reference
    after = dict(module.policy.named_parameters())
    trained = [(name, p) for name, p in before.named_parameters() if p.requires_grad]
    assert trained and all(("lora_" in name) == (lora == "on") for name, _ in trained)
    largest = max(float(p.grad.abs().max()) for _, p in trained)
    assert largest > 1e-5
    for name, p in trained:
        assert torch.allclose(after[name] - p, -p.grad, rtol=1e-3, atol=1e-4 * largest), name


def row_logprobs_grad(model, prompt, response):
    ids = torch.tensor([list(prompt) + list(response)])
    logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(response)[:, None])[:, 0]


# -- engine log-probs injected --------------------------------------------------------------------
class InjectEngineLogprobs(L.Callback):
    """Replaces the batch's engine log-probs by the trainer's (an unpadded forward of the current
    policy) plus ``offset(mask)`` (``[N, T]``), on the response tokens."""

    def __init__(self, offset):
        self.offset = offset

    def on_train_batch_start(self, tr, pl_module, batch, batch_idx):
        mask = batch.response_mask
        trainer_lp = plain_logprobs(pl_module.policy, batch)
        batch.engine_logprobs = torch.where(mask, trainer_lp + self.offset(mask), torch.zeros_like(trainer_lp))


def token_parity(mask):
    return (torch.arange(mask.shape[1]) % 2).expand_as(mask)


@pytest.mark.parametrize(
    "weights",
    [
        lambda m: torch.full(m.shape, 0.5),
        lambda m: torch.full(m.shape, 5.0),  # capped to 2
        lambda m: torch.where(token_parity(m) == 1, 5.0, 0.25),  # per token: 2 and 0.25
    ],
    ids=["half", "capped", "per-token"],
)
def test_tis_weight_multiplies_the_surrogate(tmp_path, tiny_dir, weights):
    """With engine log-probs ``logp_trainer - log w``, the importance weight is ``min(w, cap)``:
    one SGD step is minus the gradient of ``-sum_t min(w_t, cap) A_i ratio_t / tokens``."""
    cap = 2.0
    rec = Record()
    state, _ = one_sgd_step(
        tmp_path,
        tiny_dir,
        callbacks=[InjectEngineLogprobs(lambda m: -torch.log(weights(m))), rec],
        tis_cap=cap,
    )
    batch, before = rec.batches[0], rec.policies[0]
    # GRPO advantages by hand: (r - group mean) / (unbiased group std + 1e-6)
    r = batch.rewards.view(-1, batch.group_size)
    adv = ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-6)).flatten()
    assert bool((adv != 0).any())
    w = weights(batch.response_mask).clamp(max=cap)
    loss = 0.0
    for i, (prompt, response) in enumerate(rows_of(batch)):
        logp = row_logprobs_grad(before, prompt, response)
        # ratio = exp(logp - old) is 1 at the first update; its gradient is that of logp
        loss = loss - (w[i, : len(response)] * adv[i] * torch.exp(logp - logp.detach())).sum()
    (loss / batch.response_mask.sum()).backward()
    largest = max(float(p.grad.abs().max()) for p in before.parameters())
    assert largest > 1e-4
    for name, p in before.named_parameters():
        assert torch.allclose(state[name] - p, -p.grad, rtol=1e-3, atol=1e-4 * largest), name


@pytest.mark.parametrize(
    "gap, stop, warns, stops",
    [(1e-4, None, False, False), (0.01, None, True, False), (0.05, 0.02, False, True)],
    ids=["below-warn", "warn", "stop"],
)
def test_mismatch_gap_is_logged_warned_and_stops(tmp_path, tiny_dir, caplog, gap, stop, warns, stops):
    rec = Record()
    inject = InjectEngineLogprobs(lambda m: torch.where(token_parity(m) == 1, gap, -gap))  # |gap| every token
    with caplog.at_level(logging.WARNING, logger="cepo"):
        tr, module = fit(
            tmp_path,
            tiny_dir,
            TextParity(train_size=200, val_size=4, test_size=4),
            3,
            [inject, rec],
            mismatch_warn=1e-3,
            mismatch_stop=stop,
        )
    first = rec.metrics[0]
    assert first["train/logprob_gap_mean"] == pytest.approx(gap, rel=1e-3, abs=2e-6)
    assert first["train/logprob_gap_max"] == pytest.approx(gap, rel=1e-3, abs=2e-6)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "mismatch_warn" in r.getMessage()]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and "mismatch_stop" in r.getMessage()]
    assert bool(warnings) == warns and bool(errors) == stops
    assert tr.should_stop == stops
    assert module.rl_step == (1 if stops else 3)  # a stop ends training after the step that saw the gap
    unchanged = all(torch.equal(a, b) for a, b in zip(rec.policies[0].parameters(), module.policy.parameters()))
    assert unchanged == stops  # the gap is checked before the update it measured: a stop applies none
    assert module.weight_version == (0 if stops else 3)


# -- LoRA merged into the Hugging Face export -----------------------------------------------------
def test_lora_export_is_a_plain_hf_model_with_the_trained_logits(tmp_path, tiny_dir):
    args = fit_args(
        tiny_dir,
        tmp_path,
        "lora",
        eval_size=4,
        eval_k=0,
        extra=[
            "--model.lora",
            "on",
            "--data.task",
            "tests.helpers.TextParity",
            "--model.optimizer.init_args.lr",
            "0.05",
            "--report_base",
            "false",
        ],
    )
    cli = cli_main(["fit", *args])
    run = tmp_path / "lora" / "v"
    assert json.loads((run / "summary.json").read_text())["rl_steps"] == 2
    exported = AutoModelForCausalLM.from_pretrained(run / "hf_model").eval()
    base = reference_model(tiny_dir)
    keys = set(exported.state_dict())
    assert keys == set(base.state_dict())  # plain Hugging Face names, no LoRA or peft keys
    assert not any("lora" in k or "base_model" in k for k in keys)
    policy = cli.model.policy.eval()
    assert any("lora_" in k for k in policy.state_dict())  # the trained policy keeps its adapter
    ids = torch.tensor([[5, 17, 23, 9, 40, 11, 30, 6]])
    with torch.no_grad():
        trained, got, before = policy(input_ids=ids).logits, exported(input_ids=ids).logits, base(input_ids=ids).logits
    assert float((trained - before).abs().max()) > 1e-3  # training changed the policy
    assert torch.allclose(got, trained, atol=1e-5)
    assert math.isfinite(float(got.abs().max()))


def test_a_step_logs_only_what_it_measured(tmp_path, tiny_dir):
    """Step 0 trains rows (rewards differ), step 1 trains none (all equal): step 1's row has no
    entropy or clip fraction and no credit summary, rather than step 0's values again."""
    from lightning.pytorch.loggers import CSVLogger

    from cepo.bases.tiny import char_tokenizer
    from cepo.credit import Contrastive
    from tests.helpers import FixedBatches, make_batch, trainer

    tok = char_tokenizer()

    def batches(step, rank):
        rewards = [1.0, 0.0, 1.0, 0.0] if step == 0 else [0.0, 0.0, 0.0, 0.0]
        return make_batch(tok, ["1+2="], ["3"], [" 3", " 4", " 3", " 5"], rewards, ["3", "4", "3", "5"], 4)

    module = RLModule(model_path=str(tiny_dir), credit=Contrastive(beta=0.5))
    from cepo.callbacks import TokenWeightLogger

    logger = CSVLogger(tmp_path, name="log", version="v")
    tr = trainer(tmp_path, steps=2, callbacks=[TokenWeightLogger(every_n_steps=0)], logger=logger)
    tr.fit(module, datamodule=FixedBatches(batches))
    rows = list(csv.DictReader(open(tmp_path / "log" / "v" / "metrics.csv")))
    step = {s: {k: v for r in rows if r["step"] == str(s) for k, v in r.items() if v} for s in (0, 1)}
    for key in ("train/entropy", "train/clip_frac", "credit/correct/weight_mean"):
        assert key in step[0] and key not in step[1], key
    assert step[1]["train/zero_var_frac"] == "1.0" and step[0]["train/zero_var_frac"] == "0.0"


def test_nonfinite_updates_are_skipped_then_stop(tmp_path, tiny_dir):
    """An update with a NaN gradient leaves the weights as they were and is counted; training goes
    on after one, and max_nonfinite in a row stop it with NonFiniteError."""
    from cepo.bases.tiny import char_tokenizer
    from cepo.step_stats import NonFiniteError
    from tests.helpers import FixedBatches, make_batch, trainer

    tok = char_tokenizer()
    bad_steps = {0}

    def batches(step, rank):
        rewards = [float("nan"), 0.0, 1.0, 0.0] if step in bad_steps else [1.0, 0.0, 1.0, 0.0]
        return make_batch(tok, ["1+2="], ["3"], [" 3", " 4", " 3", " 5"], rewards, ["3", "4", "3", "5"], 4)

    class Watch(L.Callback):
        def __init__(self):
            self.weights, self.metrics = [], []

        def on_train_batch_end(self, tr, pl_module, outputs, batch, batch_idx):
            self.weights.append(next(pl_module.policy.parameters()).detach().clone())
            self.metrics.append({k: float(v) for k, v in tr.callback_metrics.items()})

    module = RLModule(model_path=str(tiny_dir), max_nonfinite=2)
    watch = Watch()
    start = None
    tr = trainer(tmp_path / "a", steps=2, callbacks=[watch])
    tr.fit(module, datamodule=FixedBatches(batches))
    start = RLModule(model_path=str(tiny_dir))
    start.configure_model()
    first = next(start.policy.parameters())
    assert torch.equal(watch.weights[0], first)  # the NaN update was not applied
    assert watch.metrics[0]["train/nonfinite_updates"] == 1.0
    assert not torch.equal(watch.weights[1], first) and module.nonfinite_in_a_row == 0  # and training went on
    bad_steps.update(range(10))
    stuck = RLModule(model_path=str(tiny_dir), max_nonfinite=2)
    with pytest.raises(NonFiniteError, match="2 optimizer updates in a row"):
        trainer(tmp_path / "b", steps=5).fit(stuck, datamodule=FixedBatches(batches))
