"""Objectives beyond the clipped surrogate: self-distillation baselines and CIPO.

>>> from cepo.objectives import Objective, OPSD, SDPO, HDPO, CIPO
"""

from cepo.objectives.base import MicroBatch, Objective
from cepo.objectives.cipo import CIPO, CIPO_TEMPLATE
from cepo.objectives.distill import HDPO, OPSD, OPSD_TEMPLATE, RAW_TEMPLATE, SDPO, SDPO_TEMPLATE, SelfDistillation

__all__ = [
    "CIPO",
    "CIPO_TEMPLATE",
    "HDPO",
    "MicroBatch",
    "OPSD",
    "OPSD_TEMPLATE",
    "Objective",
    "RAW_TEMPLATE",
    "SDPO",
    "SDPO_TEMPLATE",
    "SelfDistillation",
]
