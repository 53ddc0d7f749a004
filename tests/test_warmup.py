"""The built-in bases: the cache keys, the learning-rate schedule, and a short real run."""

import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from cepo.bases.warmup import BUILTIN_BASES, builtin_base
from cepo.bases.warmup_kinds import VLWarmupConfig, WarmupConfig


def test_the_bases_keep_their_cache_keys():
    # the cached bases, and the results measured on them (experiments/README.md), are found by
    # these folder names: settings added since must leave them unchanged, and so must the merge
    # of the two warm-ups into one recipe (the literals are what the code before it returned)
    assert BUILTIN_BASES["builtin"].folder() == WarmupConfig().folder() == "base-60ab4eb45adb"
    assert BUILTIN_BASES["builtin-filler"].folder() == "base-0a547286d5c9"
    assert BUILTIN_BASES["builtin-vl"].folder() == VLWarmupConfig().folder() == "vl-base-f783dfc92f8d"
    assert WarmupConfig(lr_decay_steps=550).key() == "180f5e8b7ee5"
    assert WarmupConfig(task="filler").key() == "66b69345f07b"
    assert WarmupConfig(max_new_tokens=41).key() == "82c79305c1e2"
    assert WarmupConfig(max_steps=30, check_every=10, check_size=50).key() == "33a5cc702bff"
    assert VLWarmupConfig(tolerance=1.0).key() == "1b8ec36a5385"
    assert VLWarmupConfig(near_check_every=100).key() == "47bfe21479f6"
    assert VLWarmupConfig(max_steps=30, check_every=10, check_size=50, near_check_every=5).key() == "cad564f81da3"


def test_lr_factor_ramps_then_decays_to_a_tenth():
    cfg = WarmupConfig(lr_warmup_steps=10, lr_decay_steps=100)
    assert cfg.lr_factor(0) == pytest.approx(0.1)
    assert cfg.lr_factor(9) == pytest.approx(1.0)
    assert cfg.lr_factor(59) == pytest.approx(0.55)
    assert cfg.lr_factor(109) == cfg.lr_factor(500) == pytest.approx(0.1)
    constant = WarmupConfig(lr_warmup_steps=10, lr_decay_steps=0)
    assert constant.lr_factor(500) == 1.0


def test_short_warmup_writes_a_loadable_cached_base(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CEPO_CACHE", str(tmp_path))
    cfg = WarmupConfig(max_steps=3, check_every=2, check_size=4, lr_warmup_steps=1, lr_decay_steps=2)
    path = builtin_base(cfg)
    shown = capsys.readouterr().out
    assert "Step" in shown and "3/3" in shown and "Epoch" not in shown, shown  # not "Epoch 2/-2"
    assert path == tmp_path / f"base-{cfg.key()}"
    summary = json.loads((path / "cepo_warmup.json").read_text())
    assert summary["steps"] == 3 and [s for s, _ in summary["val_accuracy_curve"]] == [2, 3]
    AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.decode(tok("7+1= 8", add_special_tokens=False).input_ids) == "7+1= 8"
    mtime = (path / "model.safetensors").stat().st_mtime
    assert builtin_base(cfg) == path and (path / "model.safetensors").stat().st_mtime == mtime  # reused
