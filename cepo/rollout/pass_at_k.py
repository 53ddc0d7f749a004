"""Sampled-generation metrics over held-out problems: unbiased pass@k and avg@k.

Each problem contributes ``n`` sampled responses of which ``c`` are correct. Both metrics keep
only float64 sums as state (``dist_reduce_fx="sum"``), so the value computed after a
distributed sync, or after :meth:`~torchmetrics.Metric.merge_state`, equals the value over all
problems at once, however unevenly the problems were split across processes.
"""

from __future__ import annotations

import math

import torch
from torchmetrics import Metric


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem: ``1 - C(n-c, k) / C(n, k)`` (Chen et al., 2021).

    Computed in the stable product form ``1 - prod_{i=n-c+1}^{n} (1 - k / i)``, which never
    forms the binomials; it is 1 when ``n - c < k`` (every k-subset holds a correct sample).

    Args:
        n: samples drawn for the problem.
        c: correct samples among them (``0 <= c <= n``).
        k: the budget (``1 <= k <= n``).

    Returns:
        The probability that a uniformly chosen k-subset of the samples holds a correct one.
    """
    _check_counts(n, c, k)
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def pass_at_k_batch(n: torch.Tensor, c: torch.Tensor, k: int) -> torch.Tensor:
    """Per-problem unbiased pass@k, vectorised (the product form of :func:`pass_at_k`).

    Args:
        n: ``[P]`` samples per problem.
        c: ``[P]`` correct samples per problem.
        k: the budget, ``1 <= k <= min(n)``.

    Returns:
        ``[P]`` float64 pass@k values.
    """
    n, c = _counts(n, c)  # [P], [P]
    if n.numel() == 0:
        return n
    _check_counts(int(n.min()), 0, k)
    i = torch.arange(1, int(n.max()) + 1, dtype=torch.float64, device=n.device)  # [I]
    # Factors 1 - k/i for n - c < i <= n; all positive when n - c >= k (i > k). Rows with
    # n - c < k are 1 by definition, so their (non-positive) factors are masked out too.
    in_range = (i[None, :] > (n - c)[:, None]) & (i[None, :] <= n[:, None]) & (i[None, :] > k)  # [P, I]
    terms = torch.log1p(-k / i.clamp(min=k + 1)).expand_as(in_range)  # [P, I]
    log_miss = torch.where(in_range, terms, torch.zeros_like(terms)).sum(-1)  # [P]
    return torch.where(n - c < k, torch.ones_like(n), 1.0 - torch.exp(log_miss))


def _counts(n: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` and ``c`` as flat float64 tensors, checked: same length, ``0 <= c <= n``."""
    n = torch.as_tensor(n, dtype=torch.float64).reshape(-1)  # [P]
    c = torch.as_tensor(c, dtype=torch.float64, device=n.device).reshape(-1)  # [P]
    if n.shape != c.shape:
        raise ValueError(f"n and c must have the same number of problems, got {n.numel()} and {c.numel()}")
    if bool((c < 0).any()) or bool((c > n).any()):
        raise ValueError("every c must be in [0, n]")
    return n, c


def _check_counts(n: int, c: int, k: int) -> None:
    if k < 1:
        raise ValueError(f"pass@k needs k >= 1, got k={k}")
    if n < k:
        raise ValueError(f"pass@k needs n >= k samples per problem, got n={n}, k={k}")
    if not 0 <= c <= n:
        raise ValueError(f"c must be in [0, n], got n={n}, c={c}")


class PassAtK(Metric):
    """Mean over problems of the unbiased pass@k estimator.

    Args:
        k: the budget; every problem must have at least ``k`` samples.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, k: int, **kwargs) -> None:
        super().__init__(**kwargs)
        if k < 1:
            raise ValueError(f"PassAtK needs k >= 1, got {k}")
        self.k = k
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("problems", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, n: torch.Tensor, c: torch.Tensor) -> None:
        """Add problems.

        Args:
            n: ``[P]`` samples per problem.
            c: ``[P]`` correct samples per problem.
        """
        values = pass_at_k_batch(n, c, self.k).to(self.total.device)  # [P]
        self.total += values.sum()
        self.problems += values.numel()

    def compute(self) -> torch.Tensor:
        """Mean pass@k over the problems seen (0 before any update), in the default dtype."""
        return (self.total / self.problems.clamp(min=1.0)).to(torch.get_default_dtype())


class AvgAtK(Metric):
    """Mean accuracy over all sampled responses (``sum c / sum n``).

    With the same ``n`` for every problem this is the mean over problems of ``c / n``, i.e.
    avg@n, and also the unbiased pass@1.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("correct", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("samples", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, n: torch.Tensor, c: torch.Tensor) -> None:
        """Add problems.

        Args:
            n: ``[P]`` samples per problem.
            c: ``[P]`` correct samples per problem.
        """
        n, c = _counts(n, c)  # [P], [P]
        self.correct += c.sum().to(self.correct.device)
        self.samples += n.sum().to(self.samples.device)

    def compute(self) -> torch.Tensor:
        """Fraction of correct samples (0 before any update), in the default dtype."""
        return (self.correct / self.samples.clamp(min=1.0)).to(torch.get_default_dtype())
