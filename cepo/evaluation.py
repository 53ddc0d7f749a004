"""Held-out metrics: greedy accuracy, response length, avg@k and pass@k, per benchmark.

torchmetrics ``Metric``s, so ``compute()`` reduces across DDP processes. With benchmark names
the keys are ``val/<name>/<key>`` plus ``val/<key>`` averaged over benchmarks (equal weights);
without, the task's own ``val/<key>``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import MeanMetric

from cepo.metrics import AvgAtK, PassAtK


def _group(k: int) -> torch.nn.ModuleDict:
    return torch.nn.ModuleDict(
        {"acc": MeanMetric(), "len": MeanMetric(), "truncated": MeanMetric()}
        | ({"avg_k": AvgAtK(), "pass_k": PassAtK(k)} if k else {})
    )


class EvalMetrics(torch.nn.Module):
    """The metrics of one evaluation pass.

    Args:
        names: benchmark names in DataLoader order (empty: the task alone, one DataLoader).
        k: sampled generations per prompt (0: greedy only, no avg@k / pass@k).
    """

    def __init__(self, names: Sequence[str] = (), k: int = 0) -> None:
        super().__init__()
        self.names = list(names)
        self.k = k
        # a list, not a dict keyed by name: names like "eval" would clash with Module attributes
        self.groups = torch.nn.ModuleList(_group(k) for _ in (self.names or [""]))

    def update(self, batch, index: int = 0) -> None:
        """Add an :class:`~cepo.rollout.datamodule.EvalBatch` of DataLoader ``index``."""
        group = self.groups[index]
        group["acc"].update(batch.greedy_correct.float())
        group["len"].update(batch.response_lengths)
        if batch.truncated is not None:
            group["truncated"].update(batch.truncated.float())
        k = batch.sample_correct.shape[1]
        if k and "pass_k" in group:
            n = torch.full((batch.sample_correct.shape[0],), k)
            c = batch.sample_correct.sum(-1)
            group["avg_k"].update(n, c)
            group["pass_k"].update(n, c)

    def _values(self, group: torch.nn.ModuleDict) -> dict[str, torch.Tensor]:
        values = {"acc": group["acc"].compute(), "response_len": group["len"].compute()}
        values["truncated"] = group["truncated"].compute()  # greedy answers cut by the length limit
        if "pass_k" in group:
            values[f"avg@{self.k}"] = group["avg_k"].compute()
            values[f"pass@{self.k}"] = group["pass_k"].compute()
        return values

    def compute(self) -> dict[str, torch.Tensor]:
        """``val/...`` metric name -> value."""
        if not self.names:
            return {f"val/{key}": v for key, v in self._values(self.groups[0]).items()}
        metrics, per_key = {}, {}
        for name, group in zip(self.names, self.groups):
            for key, value in self._values(group).items():
                metrics[f"val/{name}/{key}"] = value
                per_key.setdefault(key, []).append(value.float())
        metrics.update({f"val/{key}": torch.stack(v).mean() for key, v in per_key.items()})
        return metrics

    def reset(self) -> None:
        for group in self.groups:
            for metric in group.values():
                metric.reset()
