"""Callbacks: the beta schedule and token-weight logging."""

from cepo.callbacks.beta_schedule import BetaSchedule, beta_at
from cepo.callbacks.token_weights import TokenWeightLogger

__all__ = ["BetaSchedule", "TokenWeightLogger", "beta_at"]
