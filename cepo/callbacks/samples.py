"""Per-sample evaluation outputs: what the model answered on every held-out problem.

Every validation pass (``cepo validate``, the checks during ``fit``, and ``fit``'s base and final
scores) writes one JSONL file in ``<run dir>/samples/``: one row per response, the greedy answer
and each of the ``data.eval_k`` samples, with ``benchmark``, ``index`` (the problem's position in
its held-out split), ``prompt``, ``sample``, ``response``, ``extracted``, ``reference``,
``correct``, ``tokens`` and ``truncated``. Files are named after the pass (``base``, ``final``,
``validate``) or the rollout step after which an in-training check ran (``step_00100``); under DDP each
process writes its own part (``.rank1``, ...). The rows are the evaluation batch's own
(:attr:`cepo.rollout.evaluator.EvalBatch.records`), written as they are.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L


class EvalSamplesWriter(L.Callback):
    """Writes every evaluation response as a JSONL row.

    Args:
        enabled: write the files (False: write nothing).
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.label: str | None = None  # set by the CLI around its base / final passes
        self.path: Path | None = None
        self._file = None

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if not self.enabled:
            return
        label = self.label or ("validate" if trainer.state.fn == "validate" else f"step_{pl_module.rl_step:05d}")
        rank = f".rank{trainer.global_rank}" if trainer.world_size > 1 else ""
        out = Path(trainer.log_dir or trainer.default_root_dir) / "samples"
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / f"{label}{rank}.jsonl"
        self._file = self.path.open("w", encoding="utf-8")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0):
        if self._file is None or getattr(batch, "records", None) is None:
            return
        for record in batch.records:
            self._file.write(json.dumps(record, ensure_ascii=False) + "\n")

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
