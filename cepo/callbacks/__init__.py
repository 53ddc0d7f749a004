"""Callbacks: the beta schedule, token-weight logging and per-sample evaluation outputs."""

from cepo.callbacks.beta_schedule import BetaSchedule, beta_at
from cepo.callbacks.preemption import AtomicCheckpointIO, Preemption
from cepo.callbacks.samples import EvalSamplesWriter
from cepo.callbacks.stages import ProcessStages
from cepo.callbacks.token_weights import TokenWeightLogger

__all__ = [
    "AtomicCheckpointIO",
    "BetaSchedule",
    "EvalSamplesWriter",
    "Preemption",
    "ProcessStages",
    "TokenWeightLogger",
    "beta_at",
]
