"""The evidence registry: every name a rule reads has a provider, an unknown one is an error that
names it, and a provider registered by a new file is found without any other edit."""

import pytest

from cepo import evidence
from cepo.credit import EVIDENCE, CreditAssigner, CreditInputs
from cepo.credit.base import uniform_output
from cepo.module import GRPOModule


def test_every_built_in_kind_has_a_provider():
    assert set(EVIDENCE) <= set(evidence.PROVIDERS)
    evidence.check(EVIDENCE)  # no error


class ReadsSomethingNew(CreditAssigner):
    reads = frozenset({"student", "tea_leaves"})

    def assign(self, inputs: CreditInputs):
        return uniform_output(inputs)


def test_an_unknown_evidence_name_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"model\.credit \(ReadsSomethingNew\) reads unknown evidence 'tea_leaves'"):
        GRPOModule(credit=ReadsSomethingNew())
    with pytest.raises(ValueError, match="unknown evidence 'tea_leaves'"):
        evidence.gather(frozenset({"tea_leaves"}), *([None] * 6))


def test_a_registered_provider_is_found_and_its_resources_are_kept():
    class TeaLeaves(evidence.Provider):
        def __call__(self, source, needs):
            source.inputs.evidence["tea_leaves"] = source.inputs.mask.float()

    try:
        evidence.register(TeaLeaves(names=("tea_leaves",), resources=frozenset({"reference"})))
        GRPOModule(credit=ReadsSomethingNew())  # no error now
        assert evidence.resources({"tea_leaves", "student"}) == {"reference"}
        with pytest.raises(ValueError, match="provided twice"):
            evidence.register(evidence.PROVIDERS["pos"].__class__(names=("tea_leaves",)))
    finally:
        evidence.PROVIDERS.pop("tea_leaves", None)
