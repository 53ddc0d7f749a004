"""The evidence credit rules read, as named plug-ins.

A kind of evidence is a :class:`Provider` registered under a name (:func:`register`); a credit
rule lists the names it reads (:attr:`cepo.credit.CreditAssigner.reads`) and :func:`gather`
runs the providers of the names the rule needs this step, once each. Every module of this
package is imported here, so a new kind of evidence is one new file: its provider registers
itself on import. A rule that reads a name nothing provides is an error naming it (:func:`check`).

Built in: ``student`` and ``entropy`` (the sampling policy's own passes, :mod:`.policy`), ``pos``
and ``neg`` (the ``c+``/``c-`` teachers, :mod:`.teachers`), ``reference`` (the initial policy,
:mod:`.reference`).
"""

import importlib
import pkgutil

from cepo.evidence.registry import PROVIDERS, CreditRecord, Provider, Source, check, gather, register, resources

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["PROVIDERS", "CreditRecord", "Provider", "Source", "check", "gather", "register", "resources"]
