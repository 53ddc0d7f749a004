"""Token-level credit assignment strategies.

Every module of this package is imported here and every :class:`CreditAssigner` subclass it
defines is exported, so a new rule is one new file: its class is then reachable as
``cepo.credit.<Name>`` and by its short name on the command line (``--model.credit <Name>``).

>>> from cepo.credit import CreditInputs, Uniform, EvidenceRatio, Contrastive
"""

import importlib
import inspect
import pkgutil

from cepo.credit.base import (
    ENTROPY,
    EVIDENCE,
    NEG,
    POS,
    STUDENT,
    CreditAssigner,
    CreditInputs,
    CreditOutput,
    MixedCredit,
)

__all__ = [
    "ENTROPY",
    "EVIDENCE",
    "NEG",
    "POS",
    "STUDENT",
    "CreditAssigner",
    "CreditInputs",
    "CreditOutput",
    "MixedCredit",
]

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    _module = importlib.import_module(f"{__name__}.{_info.name}")
    for _name, _cls in inspect.getmembers(_module, inspect.isclass):
        if issubclass(_cls, CreditAssigner) and _cls.__module__ == _module.__name__:
            globals()[_name] = _cls
            __all__.append(_name)
