"""Objectives beyond the clipped surrogate: self-distillation baselines and CIPO.

>>> from cepo.objectives import Objective, OPSD, SDPO, HDPO, CIPO
"""

from cepo.objectives.base import MicroBatch, Objective
from cepo.objectives.cipo import CIPO
from cepo.objectives.distill import HDPO, OPSD, SDPO, SelfDistillation

__all__ = ["CIPO", "HDPO", "MicroBatch", "OPSD", "Objective", "SDPO", "SelfDistillation"]
