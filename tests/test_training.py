"""End-to-end training on a tiny random model: on-policy rollouts, outputs, credit paths."""

import json

import lightning as L
import pytest
import torch

from cepo.cli import cli_main
from cepo.module import RLModule
from cepo.rollout.hf_engine import HFEngine
from tests.helpers import DEFAULT, fit_args, small_data, trainer


class RecordingEngine(HFEngine):
    """HFEngine that records, per generate call, the policy version and a weight checksum."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def generate(self, prompt_ids, n, sampling):
        checksum = float(sum(p.double().sum() for p in self.policy.parameters()))
        self.calls.append((self.weight_version, checksum, sampling.temperature))
        return super().generate(prompt_ids, n, sampling)


@pytest.mark.parametrize("num_minibatches", [1, 2])
def test_rollouts_are_on_policy(tmp_path, tiny_dir, num_minibatches):
    L.seed_everything(0)  # data order and rewards must not depend on the tests that ran before
    engine = RecordingEngine()
    module = RLModule(
        model_path=str(tiny_dir),
        num_minibatches=num_minibatches,
        # weight decay moves the weights at every update, even one whose groups all tie
        optimizer=lambda p: torch.optim.SGD(p, lr=0.5, weight_decay=0.1),
    )
    seen = []

    class Spy(L.Callback):
        def on_train_batch_start(self, tr, pl_module, batch, batch_idx):
            checksum = float(sum(p.double().sum() for p in pl_module.policy.parameters()))
            seen.append((batch.provenance.weight_version, pl_module.weight_version, tr.global_step, checksum))

    tr = trainer(tmp_path, steps=3 * num_minibatches)
    tr.callbacks.append(Spy())
    tr.fit(module, datamodule=small_data(engine))
    assert len(seen) == 3
    for i, (batch_v, module_v, global_step, checksum) in enumerate(seen):
        assert batch_v == module_v == global_step == i * num_minibatches
        # the weights used for generation are the weights after the last optimizer step
        assert engine.calls[i][1] == pytest.approx(checksum, rel=0, abs=1e-6)
    assert len({c[1] for c in engine.calls}) == 3  # SGD changed the weights between batches


def test_stale_batch_is_refused(tmp_path, tiny_dir):
    module = RLModule(model_path=str(tiny_dir))
    dm = small_data()
    tr = trainer(tmp_path, steps=1)
    tr.fit(module, datamodule=dm)
    dm.sampler.sync()
    batch = dm.sampler.rollout(dm.task.split("train")[:2])
    assert batch.provenance.weight_version == module.weight_version
    module.ref.version += 1  # as if one optimizer step happened after generation: one is too many
    with pytest.raises(RuntimeError, match="off-policy"):
        module.training_step(batch, 0)


@pytest.mark.parametrize("credit", ["uniform", "evidence_ratio", "contrastive"])
def test_fit_end_to_end_writes_run_dir(tmp_path, tiny_dir, credit):
    args = [
        "fit",
        *fit_args(
            tiny_dir,
            tmp_path,
            credit,
            f"credit/{credit}.yaml",
            eval_size=6,
            extra=[
                "--trainer.val_check_interval",
                "2",
                "--token_weights.every_n_steps",
                "1",
                "--checkpoint.every_n_train_steps",
                "1",
                # rewards that vary within groups even for a random model, so tokens receive credit
                "--data.task",
                "tests.helpers.TextParity",
                # beta reaches 0 at the second step: the teacher passes stop and training goes on as GRPO
                "--beta_schedule.decay_steps",
                "1",
            ],
        ),
    ]
    cli_main(args)
    run = tmp_path / credit / "v"
    assert (run / "metrics.csv").is_file() and (run / "config.yaml").is_file()
    assert list(run.glob("events.out.tfevents.*"))
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "hf_model" / "config.json").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["rl_steps"] == 2 and "val/acc" in summary["final"] and "val/acc" in summary["base"]
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    for key in (
        "train/reward_mean",
        "train/acc",
        "train/zero_var_frac",
        "train/clip_frac",
        "train/entropy",
        "train/lr",
        "time/generate",
        "time/train",
        "time/tokens_per_sec",
        "train/truncated_frac",
    ):
        assert key in header, key
    if credit == "contrastive":
        assert (run / "token_weights" / "step_00001.html").is_file()
        assert (run / "token_weights" / "step_00001.png").is_file()
        assert "credit/wrong/delta_mean" in header or "credit/correct/delta_mean" in header
        page = (run / "token_weights" / "step_00001.html").read_text()
        items = [
            i for side in json.loads((run / "token_weights" / "step_00001.json").read_text()).values() for i in side
        ]
        shown = [i for i in items if i["contexts"]]
        assert shown and "c+ teacher prompt" in page  # the teacher prompts of the rollouts shown
        pos, neg = shown[0]["contexts"]
        assert pos == f"{shown[0]['prompt']} {shown[0]['answer']}"  # raw: the verified answer after the prompt


def test_validate_on_hf_folder(tmp_path, tiny_dir, capsys):
    cli_main(
        [
            "validate",
            "--config",
            DEFAULT,
            "--model.model_path",
            str(tiny_dir),
            "--data.eval_size",
            "5",
            "--data.eval_k",
            "2",
            "--run_root",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr().out
    assert "val/acc" in out and "val/avg@2" in out
