"""Callbacks: the beta schedule, token-weight logging and per-sample evaluation outputs."""

from cepo.callbacks.beta_schedule import BetaSchedule, beta_at
from cepo.callbacks.samples import EvalSamplesWriter
from cepo.callbacks.token_weights import TokenWeightLogger

__all__ = ["BetaSchedule", "EvalSamplesWriter", "TokenWeightLogger", "beta_at"]
