"""The rollout batch: what the DataModule hands to the training step.

:class:`RolloutBatch` holds the tensors the step computes with and, in its ``provenance``
(:class:`Provenance`, read-only), the texts, token-id lists and images they were packed from.

Rows are group-major: the ``G`` rollouts of prompt ``p`` are rows ``p*G .. p*G+G-1``.
Sequences are packed ``[left-padded prompt | right-padded response]`` so that every
response starts at column ``response_start``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from cepo.prompts.formats import Plain, PromptFormat
from cepo.scoring import Packed


@dataclass(frozen=True)
class Provenance:
    """Where a batch's rows came from: the texts, token ids and images behind its tensors.

    The step's math never reads these; the teachers and distillation objectives (to render
    their contexts), CIPO's and HDPO's extra samples, the module's lag check (the weight version)
    and the token-weight logger do. Per prompt (``P`` entries): ``prompts``,
    ``answers``, ``solutions``, ``prompt_ids``, ``messages``, ``images``; per row (``N``):
    ``responses``, ``extracted``, ``response_ids``.

    Attributes:
        prompts: prompt texts, as the policy continued them (rendered by the prompt format).
        answers: reference answers.
        solutions: reference solutions (may be empty strings).
        responses: decoded responses.
        extracted: answers extracted from the responses (None when absent).
        prompt_ids: prompt token-id lists.
        response_ids: response token-id lists.
        weight_version: the policy version the engine generated with.
        messages: conversations before the assistant turn (None: each prompt text is the user
            turn), from which teachers and corrections re-render their contexts.
        prompt_format: how ``messages`` were rendered into ``prompts`` (None: ``Plain``).
        images: processed images of each prompt (``cepo.vision.Images`` or None), for a
            vision-language policy; None: a text batch.
        vision: the policy's image handling (``cepo.vision.Vision``), with ``images``.
        token_roles: the task's role of each character of a response text (``token_roles`` of
            tasks that mark which tokens decide the answer, e.g. ``FillerArithmetic``), None when
            the task has none; the token-weight logger's ``|Delta|`` per role reads it.
    """

    prompts: list[str]
    answers: list[str]
    solutions: list[str]
    responses: list[str]
    extracted: list[str | None]
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    weight_version: int
    messages: list[list[dict[str, str]]] | None = None
    prompt_format: PromptFormat | None = None
    images: list | None = None
    vision: object | None = None
    token_roles: Callable[[str], list[str]] | None = None

    @property
    def format(self) -> PromptFormat:
        """The prompt format the prompts were rendered with."""
        return self.prompt_format if self.prompt_format is not None else Plain()

    def conversation(self, group: int) -> list[dict[str, str]]:
        """The conversation of prompt ``group`` before the assistant turn."""
        return self.messages[group] if self.messages is not None else [{"role": "user", "content": self.prompts[group]}]

    def image(self, group: int):
        """Prompt ``group``'s processed images, or None (a text batch or a prompt without)."""
        return None if self.images is None else self.images[group]


@dataclass
class RolloutBatch:
    """One step's rollouts, verified and packed: the tensors the step reads, and their provenance.

    Attributes:
        input_ids: ``[N, L]`` prompt + response token ids.
        attention_mask: ``[N, L]``.
        response_start: column of the first response token.
        response_mask: ``[N, T]`` bool, ``T = L - response_start``.
        rewards: ``[N]`` float.
        correct: ``[N]`` bool, reward at or above the success threshold.
        engine_logprobs: ``[N, T]`` the engine's log-probs of the sampled tokens (0 off the
            mask), or None (greedy evaluation).
        group_size: ``G``.
        provenance: the texts, token ids and images behind the rows (:class:`Provenance`).
        timings: seconds per stage so far (``generate``, ``score``).
        row_weight: ``[N]`` float multiplying each row's advantage in the surrogate (None: all
            1). Objectives that append rows set it (CIPO's correction weight; 0 keeps a row
            out of the surrogate, as HDPO's privileged rollouts).
        num_original: rows that came from the rollout engine on the task's own prompts
            (appended rows follow them); None: all of them.
        temperature: the sampling temperature (log-prob passes divide logits by it, so they
            score the distribution that was sampled).
        reward_components: ``{name: [N]}`` unweighted scores of each reward component (None:
            the task's own reward).
        truncated: ``[N]`` bool, responses cut by the length limit (no EOS), or None.
        info: how the batch was drawn (dynamic sampling's rounds and group counts, one-step-off
            staleness), logged as ``train/<key>``.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_start: int
    response_mask: torch.Tensor
    rewards: torch.Tensor
    correct: torch.Tensor
    engine_logprobs: torch.Tensor | None
    group_size: int
    provenance: Provenance
    timings: dict[str, float] = field(default_factory=dict)
    row_weight: torch.Tensor | None = None
    num_original: int | None = None
    temperature: float = 1.0
    reward_components: dict[str, torch.Tensor] | None = None
    truncated: torch.Tensor | None = None
    info: dict[str, float] = field(default_factory=dict)

    @property
    def num_rollouts(self) -> int:
        return self.input_ids.shape[0]

    def with_provenance(self, **changes) -> RolloutBatch:
        """A copy whose provenance has ``changes`` (the tensors and the ``timings``/``info`` dicts are
        shared, not copied)."""
        return dataclasses.replace(self, provenance=dataclasses.replace(self.provenance, **changes))

    def packed(self) -> Packed:
        """The rows as :class:`~cepo.scoring.Packed`, for the scoring loop."""
        src = self.provenance
        images = None if src.images is None else [src.images[i // self.group_size] for i in range(self.num_rollouts)]
        return Packed(
            self.input_ids,
            self.attention_mask,
            self.response_start,
            self.response_mask,
            self.temperature,
            images,
            src.vision,
        )


def concat(a: RolloutBatch, b: RolloutBatch, pad_id: int, b_weight: float = 1.0) -> RolloutBatch:
    """``a``'s rows followed by ``b``'s, re-packed (both group-major with the same group size).

    Args:
        a: the rollout batch (its ``row_weight`` is kept, default 1).
        b: appended rows (e.g. corrections), generated with the same weights.
        pad_id: padding token id.
        b_weight: ``row_weight`` of ``b``'s rows.
    """
    if a.group_size != b.group_size:
        raise ValueError(f"cannot concatenate batches of group sizes {a.group_size} and {b.group_size}")
    if a.temperature != b.temperature:
        raise ValueError(f"cannot concatenate rollouts sampled at temperatures {a.temperature} and {b.temperature}")
    pa, pb = a.provenance, b.provenance
    if pa.weight_version != pb.weight_version:
        raise ValueError(f"cannot concatenate rollouts of weight versions {pa.weight_version} and {pb.weight_version}")
    g = a.group_size
    rows_prompt = [p for p in pa.prompt_ids + pb.prompt_ids for _ in range(g)]
    response_ids = pa.response_ids + pb.response_ids
    input_ids, attention, start, mask = pack(rows_prompt, response_ids, pad_id)
    device = a.input_ids.device
    engine_lp = None
    if a.engine_logprobs is not None and b.engine_logprobs is not None:
        width = mask.shape[1]
        engine_lp = torch.cat(
            [torch.nn.functional.pad(x, (0, width - x.shape[1])) for x in (a.engine_logprobs, b.engine_logprobs)]
        )
    weight_a = a.row_weight if a.row_weight is not None else torch.ones(a.num_rollouts, device=device)
    weight_b = torch.full((b.num_rollouts,), float(b_weight), device=device)
    timings = dict(a.timings)  # the caller times building b
    provenance = Provenance(
        prompts=pa.prompts + pb.prompts,
        answers=pa.answers + pb.answers,
        solutions=pa.solutions + pb.solutions,
        responses=pa.responses + pb.responses,
        extracted=pa.extracted + pb.extracted,
        prompt_ids=pa.prompt_ids + pb.prompt_ids,
        response_ids=response_ids,
        weight_version=pa.weight_version,
        messages=None if pa.messages is None and pb.messages is None else _conversations(pa) + _conversations(pb),
        prompt_format=pa.prompt_format,
        images=None if pa.images is None and pb.images is None else _images(pa) + _images(pb),
        vision=pa.vision if pa.vision is not None else pb.vision,
        token_roles=pa.token_roles,
    )
    return RolloutBatch(
        input_ids=input_ids.to(device),
        attention_mask=attention.to(device),
        response_start=start,
        response_mask=mask.to(device),
        rewards=torch.cat([a.rewards, b.rewards]),
        correct=torch.cat([a.correct, b.correct]),
        engine_logprobs=engine_lp,
        group_size=g,
        provenance=provenance,
        timings=timings,
        row_weight=torch.cat([weight_a, weight_b]),
        num_original=a.num_original if a.num_original is not None else a.num_rollouts,
        temperature=a.temperature,
    )


def _images(src: Provenance) -> list:
    return list(src.images) if src.images is not None else [None] * len(src.prompts)


def _conversations(src: Provenance) -> list[list[dict[str, str]]]:
    return [src.conversation(p) for p in range(len(src.prompts))]


def pack(
    prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]:
    """Pack ``[prompt | response]`` rows; prompts are left-padded, responses right-padded.

    Args:
        prompt_ids: ``N`` prompt id lists (one per row, repeat a prompt per rollout).
        response_ids: ``N`` response id lists.
        pad_id: padding token id.

    Returns:
        ``input_ids [N, L]``, ``attention_mask [N, L]``, ``response_start``, ``response_mask [N, T]``.
    """
    lp = max(len(p) for p in prompt_ids)
    t = max(1, max(len(r) for r in response_ids))
    pairs = list(zip(prompt_ids, response_ids))  # one tensor each, built from Python lists
    ids = [[pad_id] * (lp - len(p)) + list(p) + list(r) + [pad_id] * (t - len(r)) for p, r in pairs]
    attn = [[0] * (lp - len(p)) + [1] * (len(p) + len(r)) + [0] * (t - len(r)) for p, r in pairs]
    input_ids = torch.tensor(ids, dtype=torch.long).reshape(len(pairs), lp + t)
    attention = torch.tensor(attn, dtype=torch.long).reshape(len(pairs), lp + t)
    response_mask = attention[:, lp:].bool()
    return input_ids, attention, lp, response_mask


def pad_right(rows: list[list[float]], width: int) -> torch.Tensor:
    """``[N, width]`` float tensor, rows right-padded with 0."""
    out = torch.zeros((len(rows), width), dtype=torch.float)
    for i, r in enumerate(rows):
        if r:
            out[i, : len(r)] = torch.tensor(r[:width], dtype=torch.float)
    return out


def gather_groups(parts: list[tuple[RolloutBatch, int]], pad_id: int) -> RolloutBatch:
    """A batch of the groups ``(batch, group index)`` of ``parts``, in that order, re-packed.

    The batches must share the group size, temperature and weight version (rounds of one step's
    sampling); their timings are summed. Appended-row fields (``row_weight``) must be unset.
    """
    first = parts[0][0]
    g, src = first.group_size, first.provenance
    for b, _ in parts:
        if (b.group_size, b.temperature, b.provenance.weight_version) != (g, first.temperature, src.weight_version):
            raise ValueError("cannot gather groups of batches of different group sizes, temperatures or weights")
        if b.row_weight is not None:
            raise ValueError("cannot gather groups of batches with appended rows")
    rows = [(b, p * g + i) for b, p in parts for i in range(g)]
    groups = [(b.provenance, p) for b, p in parts]
    response_ids = [b.provenance.response_ids[r] for b, r in rows]
    input_ids, attention, start, mask = pack([b.provenance.prompt_ids[r // g] for b, r in rows], response_ids, pad_id)
    device = first.input_ids.device
    width = mask.shape[1]

    def cat(name: str) -> torch.Tensor | None:
        if getattr(first, name) is None:
            return None
        values = [getattr(b, name)[r] for b, r in rows]
        if values[0].dim() == 0:
            return torch.stack(values)
        return torch.stack([torch.nn.functional.pad(v[:width], (0, width - len(v[:width]))) for v in values])

    timings: dict[str, float] = {}
    for b in {id(b): b for b, _ in parts}.values():
        for k, v in b.timings.items():
            timings[k] = timings.get(k, 0.0) + v
    components = None
    if first.reward_components is not None:
        components = {k: torch.stack([b.reward_components[k][r] for b, r in rows]) for k in first.reward_components}
    provenance = Provenance(
        prompts=[s.prompts[p] for s, p in groups],
        answers=[s.answers[p] for s, p in groups],
        solutions=[s.solutions[p] for s, p in groups],
        responses=[b.provenance.responses[r] for b, r in rows],
        extracted=[b.provenance.extracted[r] for b, r in rows],
        prompt_ids=[s.prompt_ids[p] for s, p in groups],
        response_ids=response_ids,
        weight_version=src.weight_version,
        messages=None if all(s.messages is None for s, _ in groups) else [s.conversation(p) for s, p in groups],
        prompt_format=src.prompt_format,
        images=None if all(s.images is None for s, _ in groups) else [s.image(p) for s, p in groups],
        vision=next((s.vision for s, _ in groups if s.vision is not None), None),
        token_roles=src.token_roles,
    )
    return RolloutBatch(
        input_ids=input_ids.to(device),
        attention_mask=attention.to(device),
        response_start=start,
        response_mask=mask.to(device),
        rewards=cat("rewards"),
        correct=cat("correct"),
        engine_logprobs=cat("engine_logprobs"),
        group_size=g,
        provenance=provenance,
        timings=timings,
        temperature=first.temperature,
        reward_components=components,
        truncated=cat("truncated"),
    )
