"""The registry of evidence providers, and :func:`gather`: what a rule needs, computed once per step.

:func:`gather` turns a rule's :meth:`~cepo.credit.CreditAssigner.needs` into
:class:`~cepo.credit.CreditInputs` by running, in their :attr:`Provider.order`, the providers of
the needed names over a :class:`Source` (the step's batch, policy, scorer, teachers and
reference). Rows with a zero advantage get zero token advantages under every rule, so no
evidence is computed for them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from cepo.credit import CreditAssigner, CreditInputs, CreditOutput
from cepo.rollout.batch import RolloutBatch
from cepo.scoring import Packed, Scorer
from cepo.teacher import TeacherContexts, TeacherWeights


@dataclass
class CreditRecord:
    """One step's credit assignment, kept for callbacks (token-weight logging)."""

    batch: RolloutBatch
    inputs: CreditInputs
    output: CreditOutput
    credit: CreditAssigner


@dataclass
class Source:
    """What providers compute evidence from, for one step.

    Attributes:
        batch: the rollout batch; ``packed`` its rows for the scorer.
        rows: ``[n]`` the rows with a non-zero advantage (the only ones given evidence).
        policy: the trained policy (its current weights sampled ``batch``).
        scorer: the micro-batched scoring loop.
        teacher: builds and scores the teacher contexts.
        weights: the teacher weights.
        reference: the initial policy (the KL reference), when some needed provider or the KL
            term asked for it (:attr:`Provider.resources`), else None.
        student: ``[N, T]`` the policy's log-probs once computed (``old_logprobs`` when given).
        inputs: the :class:`CreditInputs` being filled.
    """

    batch: RolloutBatch
    packed: Packed
    rows: torch.Tensor
    policy: torch.nn.Module
    scorer: Scorer
    teacher: TeacherContexts
    weights: TeacherWeights
    reference: TeacherWeights | None
    student: torch.Tensor | None
    inputs: CreditInputs


@dataclass
class Provider:
    """A kind of evidence (or several computed together).

    Attributes:
        names: the evidence names it provides.
        order: providers run in this order (lower first), so one may reuse another's work.
        resources: what the module must keep for it (``"reference"``: the initial policy).
    """

    names: tuple[str, ...] = ()
    order: int = 50
    resources: frozenset[str] = field(default_factory=frozenset)

    def __call__(self, source: Source, needs: frozenset[str]) -> None:
        """Set the evidence of ``needs`` (a subset of :attr:`names`) on ``source.inputs``: a
        :class:`~cepo.credit.CreditInputs` field of that name, or ``inputs.evidence[name]``."""
        raise NotImplementedError


PROVIDERS: dict[str, Provider] = {}
"""Every registered provider, by each name it provides."""


def register(provider: Provider) -> Provider:
    """Register ``provider`` under each of its names (a name registered twice is an error)."""
    for name in provider.names:
        if name in PROVIDERS and type(PROVIDERS[name]) is not type(provider):
            raise ValueError(f"evidence {name!r} is provided twice: {type(PROVIDERS[name]).__name__}, {provider}")
        PROVIDERS[name] = provider
    return provider


def check(reads, owner: str = "a credit rule") -> None:
    """Raise ``ValueError`` naming each evidence name in ``reads`` that no provider provides."""
    unknown = sorted(set(reads) - set(PROVIDERS))
    if unknown:
        known = ", ".join(sorted(PROVIDERS))
        raise ValueError(f"{owner} reads unknown evidence {', '.join(map(repr, unknown))} (known: {known})")


def resources(reads) -> frozenset[str]:
    """What the providers of ``reads`` need the module to keep."""
    check(reads)
    return frozenset().union(*(PROVIDERS[name].resources for name in reads))


@torch.no_grad()
def gather(
    needs: frozenset[str],
    batch: RolloutBatch,
    advantages: torch.Tensor,
    policy: torch.nn.Module,
    scorer: Scorer,
    teacher: TeacherContexts,
    weights: TeacherWeights,
    old_logprobs: torch.Tensor | None = None,
    reference: TeacherWeights | None = None,
) -> CreditInputs:
    """:class:`CreditInputs` holding the evidence in ``needs``.

    Args:
        needs: evidence names (registered in :data:`PROVIDERS`).
        batch: the rollout batch.
        advantages: ``[N]`` sequence advantages.
        policy: the trained policy (its current weights sampled ``batch``).
        scorer: the micro-batched scoring loop.
        teacher: builds and scores the teacher contexts.
        weights: the teacher weights.
        old_logprobs: ``[N, T]`` the policy's log-probs on every row if already computed
            (reused as the student evidence).
        reference: the initial policy, for providers that read it.
    """
    check(needs)
    inputs = CreditInputs(advantages=advantages, mask=batch.response_mask, rewards=batch.rewards)
    rows = torch.nonzero(advantages != 0).flatten()
    source = Source(batch, batch.packed(), rows, policy, scorer, teacher, weights, reference, old_logprobs, inputs)
    providers = {id(PROVIDERS[name]): PROVIDERS[name] for name in needs}.values()
    for provider in sorted(providers, key=lambda p: p.order):
        provider(source, frozenset(needs) & frozenset(provider.names))
    return inputs
