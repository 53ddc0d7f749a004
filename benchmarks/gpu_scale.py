"""The scale paths of ``benchmarks/gpu_check.py`` that fit one GPU: FSDP2 on one process, and DDP over
2 processes that share the one GPU, each against one plain process on the same batch.

Both train with float32 weights and ``bf16-mixed`` and all weights (``configs/scale/fsdp.yaml``'s
settings). The 2 DDP ranks share one device, which NCCL refuses, so they talk over gloo (which
reduces CUDA tensors through the host): the check is of cepo's DDP path, not of NCCL's speed. A rank
is this script started again with ``--ddp-worker DIR`` and ``LOCAL_RANK``/``WORLD_SIZE`` set, as
Lightning expects of processes it did not launch.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import torch
from gpu_runs import Recorder, Replay, fit, module, relative, rows_of

SCALE_MODULE = dict(dtype="float32", lora="off")
STEPS = 2


def one_process(model_dir: Path, batch, micro: int, accelerator: str, strategy=None) -> dict:
    """Two steps on ``batch``; step 1's loss and gradient norm, step 2's time and peak memory."""
    rec = Recorder()
    mod = module(model_dir, micro_batch_size=micro, **SCALE_MODULE)
    kw = {"strategy": strategy} if strategy is not None else {}
    fit(mod, Replay([batch]), STEPS, accelerator, [rec], precision="bf16-mixed", **kw)
    first, last = rec.steps[0], rec.steps[-1]
    return {
        "loss": first["train/loss"],
        "adv_abs_mean": first["train/adv_abs_mean"],
        "grad_norm": first["train/grad_norm"],
        "train_s": last["time/train"],
        "peak_gib": last["peak_gib"],
    }


def fsdp_one_process(model_dir: Path, batch, micro: int, accelerator: str, plain: dict) -> dict:
    """FSDP2 (``ModelParallelStrategy``, one shard) against ``plain``: the same loss and gradient norm."""
    from lightning.pytorch.strategies import ModelParallelStrategy

    backend = "nccl" if accelerator == "gpu" else "gloo"
    strategy = ModelParallelStrategy(
        data_parallel_size=1, tensor_parallel_size=1, process_group_backend=backend, timeout=timedelta(seconds=120)
    )
    out = one_process(model_dir, batch, micro, accelerator, strategy)
    out["loss_rel_diff"] = relative(out["loss"], plain["loss"], plain["adv_abs_mean"])
    out["grad_norm_rel_diff"] = relative(out["grad_norm"], plain["grad_norm"])
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_two_processes(model_dir: Path, batch, pad_id: int, micro: int, accelerator: str, plain: dict, work: Path):
    """2 DDP ranks, each on half of ``batch``'s groups, against ``plain`` on the whole batch: the summed
    loss and the (all-reduced) gradient norm must match it."""
    work.mkdir(parents=True, exist_ok=True)
    groups = batch.num_rollouts // batch.group_size
    halves = [slice(0, groups // 2), slice(groups // 2, groups)]
    cpu = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in vars(batch).items()}
    torch.save({"batch": cpu, "halves": halves, "pad_id": pad_id}, work / "batch.pt")
    (work / "settings.json").write_text(json.dumps({"model_dir": str(model_dir), "micro": micro, "acc": accelerator}))
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = dict(os.environ, LOCAL_RANK=str(rank), NODE_RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1")
        env["MASTER_PORT"] = port
        cmd = [sys.executable, str(Path(__file__).with_name("gpu_check.py")), "--ddp-worker", str(work)]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=600)[0] for p in procs]
    if any(p.returncode for p in procs):
        tail = "\n".join(log[-1500:] for log in logs)
        raise RuntimeError(f"a DDP rank failed (exit codes {[p.returncode for p in procs]}):\n{tail}")
    ranks = [json.loads((work / f"rank{r}.json").read_text()) for r in range(2)]
    loss = sum(r["loss"] for r in ranks)
    return {
        "loss": loss,
        "grad_norm": ranks[0]["grad_norm"],
        "train_s": max(r["train_s"] for r in ranks),
        "peak_gib_per_rank": [r["peak_gib"] for r in ranks],
        "loss_rel_diff": relative(loss, plain["loss"], plain["adv_abs_mean"]),
        "grad_norm_rel_diff": relative(ranks[0]["grad_norm"], plain["grad_norm"]),
        "ranks_agree_on_grad_norm": ranks[0]["grad_norm"] == ranks[1]["grad_norm"],
    }


def ddp_worker(work: Path) -> None:
    """One DDP rank (``--ddp-worker``): its half of the saved batch, its step metrics to ``rank<r>.json``."""
    from lightning.pytorch.plugins.environments import LightningEnvironment
    from lightning.pytorch.strategies import DDPStrategy

    from cepo.rollout.batch import RolloutBatch

    rank = int(os.environ["LOCAL_RANK"])
    settings = json.loads((work / "settings.json").read_text())
    saved = torch.load(work / "batch.pt", weights_only=False)
    batch = rows_of(RolloutBatch(**saved["batch"]), saved["halves"][rank], saved["pad_id"])
    device = torch.device("cuda", 0) if settings["acc"] == "gpu" else torch.device("cpu")
    strategy = DDPStrategy(
        parallel_devices=[device, device],  # both ranks on the one device
        cluster_environment=LightningEnvironment(),
        process_group_backend="gloo",
        timeout=timedelta(seconds=120),
    )
    out = one_process(Path(settings["model_dir"]), batch, settings["micro"], settings["acc"], strategy)
    (work / f"rank{rank}.json").write_text(json.dumps(out))
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def memory_allows_two(plain: dict) -> tuple[bool, str]:
    """Whether two more processes of ``plain``'s peak fit in the GPU's free memory (with a 1.5x margin)."""
    if not torch.cuda.is_available():
        return True, "CPU"
    torch.cuda.empty_cache()  # this process's cached blocks count as used
    free, _ = torch.cuda.mem_get_info()
    need = 2 * 1.5 * (plain["peak_gib"] or 0) * 2**30
    return free > need, f"free {free / 2**30:.1f} GiB, need {need / 2**30:.1f} GiB"
