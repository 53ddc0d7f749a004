"""The initial policy's evidence: ``reference``, ``log P_ref(y_t)`` of the sampled tokens under
the weights training started from (the KL term's reference; the module keeps it for this
provider too). One no-grad pass over the rows with a non-zero advantage."""

from __future__ import annotations

from cepo.evidence.registry import Provider, Source, register

REFERENCE = "reference"


class ReferenceEvidence(Provider):
    def __call__(self, source: Source, needs: frozenset[str]) -> None:
        with source.reference.model() as reference:
            logprobs, _ = source.scorer.logprobs(reference, source.packed, source.rows)
        source.inputs.evidence[REFERENCE] = logprobs


register(ReferenceEvidence(names=(REFERENCE,), order=30, resources=frozenset({REFERENCE})))
