"""Shared fixtures: tiny random models built from a config (no downloads)."""

import os

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _current_test(request):
    """Lets ``tests.helpers.run_cli`` check that a test starting subprocesses is marked ``e2e``."""
    from tests import helpers

    helpers.CURRENT_TEST = request.node
    yield
    helpers.CURRENT_TEST = None


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    from cepo.bases.tiny import build_tiny

    return build_tiny(
        tmp_path_factory.mktemp("tiny") / "model",
        seed=0,
        num_layers=2,
        hidden_size=64,
        intermediate_size=128,
        num_heads=2,
        num_kv_heads=1,
    )  # head_dim 32: vLLM-CPU attention needs >= 32


@pytest.fixture(scope="session")
def tiny_model(tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    return model, AutoTokenizer.from_pretrained(tiny_dir)
