"""One-step-off rollouts: generate the next step's batch while this step trains.

A background thread generates batch ``k+1`` with a frozen copy of the weights that batch ``k``
starts from, while the trainer runs step ``k`` on the live policy; batch ``k+1`` is then one
rollout step stale (``num_minibatches`` optimizer updates behind). The trainer corrects for it:
it recomputes the old log-probs with its current weights and weights each token by the truncated
importance ratio to the engine's log-probs (``model.tis_cap``), docs/algorithms.md §10.

The copy has its own engine (a copy of the DataModule's, made before it was set up) and its own
:class:`~cepo.rollout.generator.RolloutGenerator`; evaluation keeps using the DataModule's
sampler on the live policy. The first step, and the first step after a resume, generate at once
with the current weights (staleness 0).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from cepo.policy import PolicyRef
from cepo.rollout.batch import RolloutBatch
from cepo.rollout.generator import RolloutGenerator


class OneStepOff:
    """The background generator of the next rollout batch.

    Args:
        sampler: a :class:`RolloutGenerator` with its own (not yet set up) engine, used for every
            training rollout; :meth:`connect` binds it to a frozen copy of the policy.
    """

    def __init__(self, sampler: RolloutGenerator) -> None:
        self.sampler = sampler
        self.live: PolicyRef | None = None
        self.frozen: PolicyRef | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future | None = None
        self.state_at_launch: dict | None = None  # the DataModule's draw state before the pending batch

    @property
    def pending(self) -> bool:
        return self._pending is not None

    def connect(self, policy: PolicyRef) -> None:
        """Copy the policy once (the copy generates) and bind the sampler's engine to the copy."""
        if self.live is policy:
            return
        self.live = policy
        model = copy.deepcopy(policy.model).requires_grad_(False)
        self.frozen = PolicyRef(model, policy.tokenizer, policy.path, policy.version, policy.vision)
        self.sampler.connect(self.frozen)

    @torch.no_grad()
    def _snapshot(self) -> None:
        """The copy takes the live policy's current weights and version."""
        if self.frozen.version != self.live.version:
            self.frozen.model.load_state_dict(self.live.model.state_dict())
            self.frozen.version = self.live.version
        self.sampler.sync()

    def next(self, build: Callable[[RolloutGenerator], RolloutBatch], state: Callable[[], dict]) -> RolloutBatch:
        """This step's batch, and the next step's launched in the background.

        Args:
            build: one step's batch from a sampler (draws its prompts from the stream).
            state: the DataModule's draw state (stream position, engine counters), recorded
                before the next batch's draws so that a checkpoint taken while it is pending
                resumes by drawing it again.
        """
        t0 = time.perf_counter()
        if self._pending is None:  # the first step, or the first after a resume: on-policy
            self._snapshot()
            batch = build(self.sampler)
            timings = dict(batch.timings)
        else:
            batch = self._pending.result()
            self._pending = None
            timings = {f"{k}_background": v for k, v in batch.timings.items()}
            timings["wait"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        self.state_at_launch = state()
        self._snapshot()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="cepo-rollouts")
        self._pending = self._pool.submit(build, self.sampler)
        timings["snapshot"] = time.perf_counter() - t1
        batch.timings = timings
        return batch

    def wait(self) -> None:
        """Let the pending batch finish (its result is dropped: the run has stopped)."""
        if self._pending is not None:
            self._pending.exception()
            self._pending = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
