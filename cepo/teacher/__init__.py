"""Teachers: the same model shown privileged context (``contexts``), run with chosen weights (``weights``).

>>> from cepo.teacher import TeacherContexts, Live, Base, Synced, EMA
"""

from cepo.teacher.contexts import GroupFeedback, TeacherContexts, TeacherScores, choose_negative, pack_contexts
from cepo.teacher.weights import EMA, Base, Live, Reference, Synced, TeacherWeights, frozen_copy

__all__ = [
    "EMA",
    "Base",
    "GroupFeedback",
    "Live",
    "Reference",
    "Synced",
    "TeacherContexts",
    "TeacherScores",
    "TeacherWeights",
    "choose_negative",
    "frozen_copy",
    "pack_contexts",
]
