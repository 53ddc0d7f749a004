"""Token-level credit assignment strategies.

>>> from cepo.credit import CreditInputs, Uniform, EvidenceRatio, Contrastive
"""

from cepo.credit.base import CreditAssigner, CreditInputs, CreditOutput
from cepo.credit.contrastive import Contrastive
from cepo.credit.evidence_ratio import EvidenceRatio
from cepo.credit.uniform import Uniform

__all__ = [
    "CreditAssigner",
    "CreditInputs",
    "CreditOutput",
    "Contrastive",
    "EvidenceRatio",
    "Uniform",
]
