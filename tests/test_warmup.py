"""The built-in base: the cache key, the learning-rate schedule, and a short real run."""

import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from cepo.bases.warmup import WarmupConfig, builtin_base, lr_factor, warmup_key


def test_default_base_keeps_its_cache_key():
    # experiments/README.md's tables were measured on base-60ab4eb45adb: settings added since
    # must leave the default's key (its cache folder) unchanged
    assert warmup_key(WarmupConfig()) == "60ab4eb45adb"
    assert warmup_key(WarmupConfig(lr_decay_steps=550)) != warmup_key(WarmupConfig())


def test_lr_factor_ramps_then_decays_to_a_tenth():
    cfg = WarmupConfig(lr_warmup_steps=10, lr_decay_steps=100)
    assert lr_factor(cfg, 0) == pytest.approx(0.1)
    assert lr_factor(cfg, 9) == pytest.approx(1.0)
    assert lr_factor(cfg, 59) == pytest.approx(0.55)
    assert lr_factor(cfg, 109) == lr_factor(cfg, 500) == pytest.approx(0.1)
    constant = WarmupConfig(lr_warmup_steps=10, lr_decay_steps=0)
    assert lr_factor(constant, 500) == 1.0


def test_short_warmup_writes_a_loadable_cached_base(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CEPO_CACHE", str(tmp_path))
    cfg = WarmupConfig(max_steps=3, check_every=2, check_size=4, lr_warmup_steps=1, lr_decay_steps=2)
    path = builtin_base(cfg)
    shown = capsys.readouterr().out
    assert "Step" in shown and "3/3" in shown and "Epoch" not in shown, shown  # not "Epoch 2/-2"
    assert path == tmp_path / f"base-{warmup_key(cfg)}"
    summary = json.loads((path / "cepo_warmup.json").read_text())
    assert summary["steps"] == 3 and [s for s, _ in summary["val_accuracy_curve"]] == [2, 3]
    AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.decode(tok("7+1= 8", add_special_tokens=False).input_ids) == "7+1= 8"
    mtime = (path / "model.safetensors").stat().st_mtime
    assert builtin_base(cfg) == path and (path / "model.safetensors").stat().st_mtime == mtime  # reused
