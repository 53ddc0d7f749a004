"""The rollout engine interface: generate ``n`` samples per prompt, receive new weights.

An engine never owns the policy's training state. It is told the policy's *weight
version* (the number of optimizer steps taken) at every sync and stamps every generation
with the version it used, so that the trainer can refuse stale (off-policy) rollouts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


@dataclass
class SamplingConfig:
    """How rollouts are sampled (the same settings for every engine).

    Every engine processes the next-token logits in vLLM's order: the penalties on the raw
    logits (repetition, then presence), then temperature, top-k and top-p; greedy decoding
    takes the argmax after the penalties. The log-probs an engine reports are those of the
    distribution it sampled from, penalties included. The trainer scores rollouts without
    penalties (temperature only), so with a penalty on, the engine/trainer log-prob gap
    (``train/logprob_gap_mean``) is expected to be nonzero. Penalties are meant for evaluation
    sampling: on training rollouts they make the update off-policy unless corrected (e.g. by
    ``model.tis_cap``).

    Attributes:
        temperature: softmax temperature; 0 means greedy.
        top_p: nucleus sampling mass (1.0 disables it).
        top_k: keep the k most likely tokens (0 disables it).
        max_new_tokens: longest response.
        stop: extra stop strings (the tokenizer's EOS always stops).
        presence_penalty: subtracted once from the logit of every token that already appears in
            the response generated so far (the prompt does not count), as vLLM's
            ``presence_penalty``; in [-2, 2], 0 disables it, > 0 discourages repeats.
        repetition_penalty: for every token that appears in the prompt or in the response so
            far, the logit is divided by it when positive and multiplied by it otherwise, as
            vLLM's ``repetition_penalty`` (and transformers' ``RepetitionPenaltyLogitsProcessor``
            over the whole sequence); > 0, 1 disables it, > 1 discourages repeats.
        seed: base seed; generation ``i`` uses ``seed + i`` so runs repeat. The DataModule adds
            the run's global seed (``seed_everything``), so different seeds sample differently.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 32
    stop: list[str] = field(default_factory=list)
    seed: int = 0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"sampling.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"sampling.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"sampling.top_k must be >= 0, got {self.top_k}")
        if self.max_new_tokens < 1:
            raise ValueError(f"sampling.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not -2.0 <= self.presence_penalty <= 2.0:  # also refuses NaN
            raise ValueError(f"sampling.presence_penalty must be in [-2, 2], got {self.presence_penalty}")
        if not 0 < self.repetition_penalty < math.inf:  # also refuses NaN
            raise ValueError(f"sampling.repetition_penalty must be > 0 and finite, got {self.repetition_penalty}")

    @property
    def penalized(self) -> bool:
        """Whether any penalty changes the logits."""
        return self.presence_penalty != 0 or self.repetition_penalty != 1


@dataclass
class PromptImages:
    """The images of the prompts of one ``generate`` call (vision-language policies).

    Attributes:
        images: per prompt, its processed images (``cepo.vision.Images``) or None.
        vision: the policy's image handling (``cepo.vision.Vision``).
    """

    images: list
    vision: object


@dataclass
class Generation:
    """Responses for ``P`` prompts x ``n`` samples, group-major (``N = P*n`` rows).

    Attributes:
        response_ids: ``N`` lists of token ids (EOS included when the response ended).
        logprobs: ``N`` lists of the engine's log-probs of the sampled tokens, or None.
        weight_version: the policy version whose weights produced these samples.
    """

    response_ids: list[list[int]]
    logprobs: list[list[float]] | None
    weight_version: int


class RolloutEngine:
    """Base class of rollout engines (transformers, vLLM)."""

    weight_version: int = -1

    def setup(self, policy: torch.nn.Module, tokenizer, model_path: str) -> None:
        """Bind to the trainer's policy (called once the policy exists)."""
        raise NotImplementedError

    def sync_weights(self, policy: torch.nn.Module, version: int) -> None:
        """Make the engine generate with ``policy``'s current weights from now on."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        """What decides the engine's next draws (saved in checkpoints for an exact resume)."""
        return {"calls": getattr(self, "_calls", 0)}

    def load_state_dict(self, state: dict) -> None:
        if "calls" in state:
            self._calls = int(state["calls"])

    def generate(
        self, prompt_ids: list[list[int]], n: int, sampling: SamplingConfig, images: PromptImages | None = None
    ) -> Generation:
        """``n`` samples for each prompt, group-major (``images``: the prompts' images, for a
        vision-language policy; engines without image support raise when given some)."""
        raise NotImplementedError
