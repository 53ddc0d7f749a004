"""Helpers shared by the test modules, and classes that test runs name in their configs.

``tests`` is a package, so ``--data.task tests.helpers.TextParity`` imports wherever the
repository root is on ``sys.path``: in the pytest process (pytest puts it there) and in
subprocesses started with :func:`run_cli` (``python -m`` puts the working directory, the
repository root, there). No ``PYTHONPATH`` edit is needed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist

from cepo.module import RLModule
from cepo.objectives import CIPO
from cepo.rollout.batch import Provenance, RolloutBatch, pack
from cepo.rollout.datamodule import RolloutDataModule
from cepo.rollout.vllm_engine import VLLMEngine
from cepo.tasks import Arithmetic

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = str(ROOT / "configs" / "default.yaml")


# -- tasks and objectives that test runs name by class path -------------------------------------
class TextParity(Arithmetic):
    """Rewards that vary within a group even for a random model, so the weights move."""

    def reward(self, response, answer):
        return float(sum(map(ord, response)) % 2)


class AllWrong(Arithmetic):
    """Every rollout gets reward 0: every advantage is 0, the surrogate carries no gradient."""

    def reward(self, response, answer):
        return 0.0


class TiedOnRankOne(Arithmetic):
    """Rewards that vary within a group on rank 0 (as :class:`TextParity`) and are all 0 on every
    other rank: those ranks hold only tied groups, so no row of theirs carries a loss and no
    evidence is computed for them, while rank 0 trains."""

    def reward(self, response, answer):
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        return float(sum(map(ord, response)) % 2) if rank == 0 else 0.0


class RankOneNeverArrives(L.Callback):
    """After rollout step ``at``, rank 0 enters a collective that rank 1 skips; rank 1 then stays
    busy (sleeps) instead of reaching any collective: a forced hang."""

    def __init__(self, at: int = 2) -> None:
        self.at = at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        import time

        from cepo import distributed

        if pl_module.rl_step != self.at:
            return
        if trainer.global_rank == 0:
            with distributed.stage("a collective rank 1 skips (test)"):
                distributed.global_sum(1.0, pl_module.device)
        else:
            time.sleep(600)


class RankOneStartsLate(L.Callback):
    """Rank 1 sleeps ``seconds`` before the policy loads (Lightning's setup hook, after the process
    group formed), so rank 0 waits for it at the first collective of start-up."""

    def __init__(self, seconds: float = 15.0) -> None:
        self.seconds = seconds

    def setup(self, trainer, pl_module, stage: str) -> None:
        import time

        if trainer.global_rank == 1 and stage == "fit":  # not again at the validations after fit
            time.sleep(self.seconds)


class GapOnRankOne(L.Callback):
    """From rollout step 2 on, rank 1's batch reports engine log-probs 0.05 away from the trainer's
    (every other batch: exactly the trainer's), so only rank 1 sees the engine/trainer gap."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        mask = batch.response_mask
        logprobs = pl_module.policy_logprobs(batch)
        gap = 0.05 if trainer.global_rank == 1 and pl_module.rl_step >= 1 else 0.0
        batch.engine_logprobs = torch.where(mask, logprobs + gap, torch.zeros_like(logprobs))


class SkewedCIPO(CIPO):
    """CIPO that corrects one failed attempt on rank 0 and none on rank 1."""

    def correction_prompts(self, batch, tokenizer):
        rows, texts = super().correction_prompts(batch, tokenizer)
        return (rows[:1], texts[:1]) if dist.get_rank() == 0 else ([], [])


class PushlessVLLMEngine(VLLMEngine):
    """A :class:`VLLMEngine` whose weight pushes silently do nothing (a sabotaged sync): vLLM keeps
    the weights it loaded, and only the probe can tell."""

    def setup(self, policy, tokenizer, model_path):
        super().setup(policy, tokenizer, model_path)
        rpc = self.llm.collective_rpc

        def drop_weight_pushes(method, *args, **kwargs):
            return None if method == "reload_weights" else rpc(method, *args, **kwargs)

        self.llm.collective_rpc = drop_weight_pushes


# -- command lines --------------------------------------------------------------------------------
def fit_args(
    model_path,
    run_root,
    run_name: str,
    *overlays: str,
    steps: int = 2,
    prompts: int = 2,
    group: int = 4,
    eval_size: int = 8,
    eval_k: int = 2,
    extra: tuple | list = (),
) -> list[str]:
    """Arguments after ``fit``: ``configs/default.yaml``, then ``overlays`` (paths under
    ``configs/``), the run sizes, ``run_root/run_name/v`` as the run directory, then ``extra``."""
    args = ["--config", str(ROOT / "configs" / "default.yaml")]
    for overlay in overlays:
        args += ["--config", str(ROOT / "configs" / overlay)]
    return [
        *args,
        "--model.model_path",
        str(model_path),
        "--trainer.max_steps",
        str(steps),
        "--data.prompts_per_step",
        str(prompts),
        "--data.group_size",
        str(group),
        "--data.eval_size",
        str(eval_size),
        "--data.eval_k",
        str(eval_k),
        "--run_root",
        str(run_root),
        "--run_name",
        run_name,
        "--run_version",
        "v",
        *extra,
    ]


CURRENT_TEST = None
"""The running test's pytest item (set by an autouse fixture in ``tests/conftest.py``)."""


def require_e2e_marker() -> None:
    """Fail the running test unless it is marked ``e2e``: ``-m "not e2e"`` must leave out every
    test that starts subprocesses."""
    if CURRENT_TEST is not None and CURRENT_TEST.get_closest_marker("e2e") is None:
        raise AssertionError(f"{CURRENT_TEST.nodeid} runs cepo in a subprocess: mark it @pytest.mark.e2e")


def run_cli(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m cepo *args`` in a subprocess, from the repository root (tests marked ``e2e``).

    ``python -m`` puts the working directory on ``sys.path``, so ``tests.helpers.*`` class
    paths import and ``cepo`` is the checkout's. Outputs go where ``--run_root`` says.
    """
    require_e2e_marker()
    return subprocess.run(
        [sys.executable, "-m", "cepo", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=dict(os.environ),
    )


def tiny_llama(vocab_size: int = 50, **config):
    """A seeded 2-layer Llama (hidden 32, 2 heads, 1 KV head) for tests that need a model
    object, not a folder; ``config`` overrides or adds ``LlamaConfig`` fields."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    sizes = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1
    )
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, **{**sizes, **config}))


# -- in-process training --------------------------------------------------------------------------
def small_data(engine=None, **kw):
    task = TextParity(train_size=200, val_size=8, test_size=8)
    return RolloutDataModule(task=task, engine=engine, prompts_per_step=2, group_size=4, eval_size=8, eval_k=0, **kw)


def trainer(tmp_path, steps, **kw):
    return L.Trainer(
        **{
            "max_steps": steps,
            "accelerator": "cpu",
            "logger": False,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
            "limit_val_batches": 0,
            "default_root_dir": tmp_path,
            "inference_mode": False,
            **kw,
        }
    )


def one_sgd_step(tmp_path, tiny_dir, task=None, prompts=2, group_size=4, callbacks=(), **module_kw):
    """One rollout step of plain SGD (lr 1, no clipping), for exact gradient comparisons.

    Returns the policy's state dict after the step, and the module.
    """
    L.seed_everything(0)
    module = RLModule(
        model_path=str(tiny_dir), optimizer=lambda p: torch.optim.SGD(p, lr=1.0), grad_clip=None, **module_kw
    )
    data = RolloutDataModule(
        task=task or TextParity(train_size=200, val_size=8, test_size=8),
        prompts_per_step=prompts,
        group_size=group_size,
        eval_size=8,
        eval_k=0,
    )
    tr = trainer(tmp_path, steps=1)
    tr.callbacks.extend(callbacks)
    tr.fit(module, datamodule=data)
    return {k: v.detach().clone() for k, v in module.policy.state_dict().items()}, module


# -- hand-made rollout batches --------------------------------------------------------------------
def make_batch(tok, prompts, answers, responses, rewards, extracted, group_size):
    """A :class:`RolloutBatch` of ``responses`` (EOS appended) to ``prompts`` (``group_size`` each)."""
    pids = [tok(p, add_special_tokens=False).input_ids for p in prompts]
    rids = [tok(r, add_special_tokens=False).input_ids + [tok.eos_token_id] for r in responses]
    rows_p = [p for p in pids for _ in range(group_size)]
    ids, attn, start, mask = pack(rows_p, rids, tok.pad_token_id)
    r = torch.tensor(rewards, dtype=torch.float)
    return RolloutBatch(
        input_ids=ids,
        attention_mask=attn,
        response_start=start,
        response_mask=mask,
        rewards=r,
        correct=r >= 1,
        engine_logprobs=None,
        group_size=group_size,
        provenance=Provenance(
            prompts=list(prompts),
            answers=list(answers),
            solutions=[""] * len(prompts),
            responses=list(responses),
            extracted=list(extracted),
            prompt_ids=pids,
            response_ids=rids,
            weight_version=0,
        ),
    )


class FixedBatches(RolloutDataModule):
    """A DataModule whose training steps receive hand-made rollout batches instead of rollouts.

    ``batches(step, rank)`` returns the :class:`RolloutBatch` of rollout step ``step`` on DDP rank
    ``rank``; it is stamped with the module's weight version (it stands for on-policy rollouts).
    """

    def __init__(self, batches, prompts_per_step: int = 1, **kw) -> None:
        super().__init__(
            task=Arithmetic(train_size=64, val_size=4, test_size=4),
            prompts_per_step=prompts_per_step,
            eval_size=4,
            eval_k=0,
            **kw,
        )
        self.batches = batches
        self.served = 0

    def on_after_batch_transfer(self, batch, dataloader_idx: int = 0):
        if not self.trainer.training:
            return super().on_after_batch_transfer(batch, dataloader_idx)
        module = self.trainer.lightning_module
        out = self.batches(self.served, self.trainer.global_rank)
        self.served += 1
        return out.with_provenance(weight_version=module.weight_version)


@torch.no_grad()
def plain_logprobs(model: torch.nn.Module, batch: RolloutBatch) -> torch.Tensor:
    """``[N, T]`` log-probs of ``batch``'s response tokens, each row run alone without padding
    (an independent computation of what the trainer scores; 0 off the response mask)."""
    out = torch.zeros(batch.response_mask.shape)
    for i, (p, r) in enumerate(
        zip([p for p in batch.provenance.prompt_ids for _ in range(batch.group_size)], batch.provenance.response_ids)
    ):
        out[i, : len(r)] = row_logprobs(model, p, r)
    return out


def row_logprobs(model: torch.nn.Module, prompt: list[int], response: list[int]) -> torch.Tensor:
    """``[len(response)]`` log-probs of ``response`` after ``prompt`` from one unpadded forward."""
    ids = torch.tensor([list(prompt) + list(response)])
    logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(response)[:, None])[:, 0]


class SlowSteps(L.Callback):
    """Sleeps ``$CEPO_TEST_STEP_SLEEP`` seconds (default 0.5) after each rollout step, so that a
    signal sent mid-run arrives while the run trains."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        import time

        time.sleep(float(os.environ.get("CEPO_TEST_STEP_SLEEP", "0.5")))


class KillAt(L.Callback):
    """Kills its own process (``signal`` from ``$CEPO_TEST_KILL``, default SIGKILL) when rollout step
    ``$CEPO_TEST_KILL_AT`` is about to start, i.e. after the checkpoints of the steps before it; with
    ``$CEPO_TEST_KILL_IN=validation``, when the validation after that many steps starts instead
    (after the checkpoint of its step: the checkpoint comes first)."""

    def _kill(self, pl_module, where: str) -> None:
        import signal

        if os.environ.get("CEPO_TEST_KILL_IN", "train") != where:
            return
        if pl_module.rl_step == int(os.environ.get("CEPO_TEST_KILL_AT", "-1")):
            os.kill(os.getpid(), getattr(signal, os.environ.get("CEPO_TEST_KILL", "SIGKILL")))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._kill(pl_module, "train")

    def on_validation_start(self, trainer, pl_module):
        if trainer.state.fn == "fit":
            self._kill(pl_module, "validation")
