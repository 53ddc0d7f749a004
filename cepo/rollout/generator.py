"""The rollout sampler: prompts in, verified and packed rollouts out.

One object owns everything that turns prompts into a :class:`~cepo.rollout.batch.RolloutBatch`:
the engine, the verifier (the task), the sampling settings and the packing. It is connected to
the policy once (:meth:`RolloutGenerator.connect`, with the :class:`~cepo.policy.PolicyRef` the
module shares) and re-syncs the engine whenever the policy's weight version moved. The
DataModule uses it for every training batch, and its evaluator
(:class:`~cepo.rollout.evaluator.Evaluator`) draws the held-out answers with its engine and
prompt format; objectives that build extra samples (CIPO's corrections, HDPO's privileged
rollouts) receive it in their ``setup``.
"""

from __future__ import annotations

import logging
import time

import torch

from cepo.policy import PolicyRef
from cepo.prompts.formats import Plain, PromptFormat
from cepo.rewards import Reward, RewardInputs, combine
from cepo.rollout.batch import Provenance, RolloutBatch, pack, pad_right
from cepo.rollout.engine import Generation, PromptImages, RolloutEngine, SamplingConfig
from cepo.tasks import Example, Task

log = logging.getLogger(__name__)


class RolloutGenerator:
    """Generates, verifies and packs rollouts with the connected policy's current weights.

    Args:
        engine: the rollout engine.
        task: the verifier (and reward) of training rollouts.
        sampling: rollout sampling settings.
        group_size: rollouts per prompt ``G``.
        success_threshold: a rollout with reward at or above this counts as correct.
        prompt_format: how a problem's user turn becomes the text the policy continues
            (default :class:`~cepo.prompts.Plain`).
        rewards: reward components summed with their weights (:mod:`cepo.rewards`); None: the
            task's own reward.
    """

    def __init__(
        self,
        engine: RolloutEngine,
        task: Task,
        sampling: SamplingConfig,
        group_size: int,
        success_threshold: float,
        prompt_format: PromptFormat | None = None,
        rewards: list[Reward] | None = None,
    ) -> None:
        self.engine = engine
        self.rewards = list(rewards) if rewards else None
        self.prompt_format = prompt_format if prompt_format is not None else Plain()
        self.task = task
        self.sampling = sampling
        self.group_size = group_size
        self.success_threshold = success_threshold
        self.policy: PolicyRef | None = None
        self.warned_long = False  # a training prompt too long for the context was reported

    @property
    def temperature(self) -> float:
        """The temperature log-prob passes use: the sampling one (1 for greedy rollouts)."""
        return self.sampling.temperature or 1.0

    @property
    def tokenizer(self):
        return self.policy.tokenizer

    def connect(self, policy: PolicyRef) -> None:
        """Bind the engine to the policy (once; later calls with the same policy do nothing)."""
        if self.policy is policy:
            return
        self.policy = policy
        self.engine.setup(policy.model, policy.tokenizer, policy.path)

    def sync(self) -> None:
        """Give the engine the policy's current weights if its version moved."""
        if self.policy is None:
            raise RuntimeError("RolloutGenerator.connect was not called (the module connects it in configure_model)")
        if self.engine.weight_version != self.policy.version:
            self.engine.sync_weights(self.policy.model, self.policy.version)

    # -- encoding ----------------------------------------------------------------------
    def conversations(self, examples: list[Example]) -> list[list[dict[str, str]]]:
        """Each example's conversation before the assistant turn."""
        return [self.prompt_format.messages(e.prompt, e.messages) for e in examples]

    def render(self, conversations: list[list[dict[str, str]]]) -> list[str]:
        """The texts the policy continues."""
        return [self.prompt_format.render(m, self.tokenizer) for m in conversations]

    def images(self, examples: list[Example]) -> list | None:
        """Each example's processed images (None for a text policy or a batch without images)."""
        vision = self.policy.vision
        if vision is None or not any(e.images for e in examples):
            return None
        return [vision.encode(e.images) if e.images else None for e in examples]

    def encode(self, texts: list[str], images: list | None = None) -> list[list[int]]:
        """Token ids of each prompt text (no special tokens added; images expanded)."""
        return [self.policy.encode(t, None if images is None else im) for t, im in zip(texts, images or texts)]

    # -- training rollouts -------------------------------------------------------------
    def rollout(self, examples: list[Example]) -> RolloutBatch:
        """``G`` verified rollouts per example, with the current weights."""
        conversations = self.conversations(examples)
        texts = self.render(conversations)
        images = self.images(examples)
        answers, solutions = [e.answer for e in examples], [e.solution for e in examples]
        prompt_ids = self.encode(texts, images)
        self.warn_long(prompt_ids)
        return self.sample(prompt_ids, texts, answers, solutions, None, conversations, images)

    def warn_long(self, prompt_ids: list[list[int]]) -> None:
        """Warn once when training prompts and ``max_new_tokens`` exceed the context (training
        prompts are never cut; the data module refuses a run where none of them fit)."""
        context = self.context_length()
        if self.warned_long or context is None:
            return
        room = context - self.sampling.max_new_tokens
        long = sum(len(p) > room for p in prompt_ids)
        if long:
            self.warned_long = True
            log.warning(
                "%d of %d training prompts are longer than the %d tokens the context (%d) leaves after "
                "data.sampling.max_new_tokens (%d); they are not cut (this warning is shown once)",
                long,
                len(prompt_ids),
                room,
                context,
                self.sampling.max_new_tokens,
            )

    def sample(
        self,
        prompt_ids: list[list[int]],
        prompts: list[str],
        answers: list[str],
        solutions: list[str],
        n: int | None = None,
        messages: list[list[dict[str, str]]] | None = None,
        images: list | None = None,
    ) -> RolloutBatch:
        """``n`` (default ``group_size``) verified samples per already-encoded prompt.

        ``prompts`` are the prompt texts and ``messages`` the conversations they were rendered
        from with this sampler's prompt format (None: each text is the user turn); ``images``
        the prompts' processed images (``cepo.vision.Images`` or None each; None: no images).
        """
        g = n or self.group_size
        tokenizer = self.tokenizer
        t0 = time.perf_counter()
        gen = self.generate(prompt_ids, g, self.sampling, images)
        t1 = time.perf_counter()
        responses = tokenizer.batch_decode(gen.response_ids, skip_special_tokens=True)
        row_answers = [a for a in answers for _ in range(g)]
        components = None
        truncated = self.truncated(gen.response_ids, self.sampling.max_new_tokens)
        if self.rewards is None:
            rewards = torch.tensor([self.task.reward(r, a) for r, a in zip(responses, row_answers)], dtype=torch.float)
        else:
            scored = RewardInputs(
                [p for p in prompts for _ in range(g)],
                responses,
                row_answers,
                [len(r) for r in gen.response_ids],
                truncated,
                self.sampling.max_new_tokens,
                self.task,
            )
            totals, parts = combine(self.rewards, scored)
            rewards = torch.tensor(totals, dtype=torch.float)
            components = {k: torch.tensor(v, dtype=torch.float) for k, v in parts.items()}
        extracted = [self.task.extract_answer(r) for r in responses]
        t2 = time.perf_counter()
        rows_prompt = [p for p in prompt_ids for _ in range(g)]
        input_ids, attention, start, resp_mask = pack(rows_prompt, gen.response_ids, tokenizer.pad_token_id)
        engine_lp = None
        if gen.logprobs is not None:
            engine_lp = pad_right(gen.logprobs, resp_mask.shape[1])
        device = self.policy.device
        return RolloutBatch(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            response_start=start,
            response_mask=resp_mask.to(device),
            rewards=rewards.to(device),
            correct=(rewards >= self.success_threshold).to(device),
            engine_logprobs=None if engine_lp is None else engine_lp.to(device),
            group_size=g,
            provenance=Provenance(
                prompts=list(prompts),
                answers=list(answers),
                solutions=list(solutions),
                responses=responses,
                extracted=extracted,
                prompt_ids=[list(p) for p in prompt_ids],
                response_ids=gen.response_ids,
                weight_version=gen.weight_version,
                messages=messages,
                prompt_format=self.prompt_format,
                images=images,
                vision=self.policy.vision,
                token_roles=getattr(self.task, "token_roles", None),
            ),
            timings={"generate": t1 - t0, "score": t2 - t1},
            temperature=self.temperature,
            reward_components=components,
            truncated=torch.tensor(truncated, device=device),
        )

    def generate(
        self, prompt_ids: list[list[int]], n: int, sampling: SamplingConfig, images: list | None = None
    ) -> Generation:
        """The engine's ``n`` samples per prompt with ``sampling``. A vision-language policy's engine
        always gets the prompts' images (it also bans the vision tokens from text prompts); a
        text-only engine never does."""
        if self.policy.vision is None:
            return self.engine.generate(prompt_ids, n, sampling)
        per_prompt = images if images is not None else [None] * len(prompt_ids)
        return self.engine.generate(prompt_ids, n, sampling, images=PromptImages(per_prompt, self.policy.vision))

    def context_length(self) -> int | None:
        """Tokens (prompt + response) the policy and the engine accept, or None when unknown."""
        limits = [
            getattr(getattr(self.policy.model, "config", None), "max_position_embeddings", None),
            getattr(self.engine, "max_model_len", None),
        ]
        limits = [int(n) for n in limits if isinstance(n, int) and n > 0]
        return min(limits) if limits else None

    def truncated(self, response_ids: list[list[int]], limit: int) -> list[bool]:
        """Whether each response hit ``limit`` tokens without its EOS."""
        eos = self.tokenizer.eos_token_id
        return [len(r) >= limit and (not r or r[-1] != eos) for r in response_ids]
