"""The built-in base model: a ~1M-parameter Llama-family causal LM with a character tokenizer.

Both are saved in the Hugging Face folder format, so the rest of cepo loads them with
``AutoModelForCausalLM``/``AutoTokenizer.from_pretrained(path)`` exactly like a hub model.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
CHARS = string.digits + string.ascii_letters + string.punctuation + " \n"


def char_tokenizer() -> PreTrainedTokenizerFast:
    """A tokenizer with one token per printable ASCII character (plus pad/eos/unk)."""
    vocab = {PAD: 0, EOS: 1, UNK: 2}
    for ch in CHARS:
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK, padding_side="left"
    )


def tiny_config(
    vocab_size: int,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 512,
    max_positions: int = 256,
) -> LlamaConfig:
    """A small Llama config (defaults give about 1M parameters) with tied embeddings."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
        torch_dtype="float32",
    )


def build_tiny(path: str | Path, seed: int = 0, **config_overrides) -> Path:
    """Write a randomly initialised tiny model and its tokenizer to ``path``."""
    import torch

    path = Path(path)
    tokenizer = char_tokenizer()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(len(tokenizer), **config_overrides))
    model.save_pretrained(path)
    save_tokenizer(tokenizer, path)
    return path


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, path: str | Path) -> None:
    """Save so that ``AutoTokenizer`` loads the character tokenizer as it is.

    The class is named explicitly: for some model types (Qwen2, for one) transformers
    otherwise substitutes its BPE tokenizer class, which rebuilds the pre-tokenizer and
    silently drops spaces. Llama has no such override, hence the Llama config.
    """
    tokenizer.save_pretrained(path)
    cfg_path = Path(path) / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2))


def vl_tokenizer() -> PreTrainedTokenizerFast:
    """The character tokenizer plus the Qwen2-VL vision tokens (special, matched inside text)."""
    from tokenizers import AddedToken

    from cepo.vision import VISION_TOKENS

    tokenizer = char_tokenizer()
    extra = [AddedToken(t, special=True, normalized=False) for t in VISION_TOKENS]
    tokenizer.add_special_tokens({"additional_special_tokens": extra})
    return tokenizer


def build_tiny_vl(
    path: str | Path,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    vision_depth: int = 1,
    vision_dim: int = 32,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    family: str = "qwen2_vl",
) -> Path:
    """Write a randomly initialised tiny Qwen2-VL-architecture model, its tokenizer and its (PIL)
    image processor to ``path``.

    ``family`` picks the architecture: ``qwen2_vl`` (the built-in base's), ``qwen2_5_vl``
    (windowed vision attention) or ``qwen3_vl`` (16-pixel patches, deepstack features); the
    pixel bounds default to 56x56 .. 112x112 (64x64 .. 128x128 for ``qwen3_vl``).

    Text model: ``hidden_size``, ``num_layers``, 2 heads / 1 KV head (head dim 32, the smallest
    vLLM's CPU attention accepts), multimodal RoPE sections (4, 6, 6). Vision tower: 14-pixel
    patches merged 2x2 into one token each (a 56x56 image is 4 tokens), ``vision_depth`` blocks of
    width ``vision_dim``.
    """
    import torch
    import transformers
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from cepo.vision import VISION_TOKENS, VL_MODEL_TYPES

    if family not in VL_MODEL_TYPES:
        raise ValueError(f"family must be one of {', '.join(VL_MODEL_TYPES)}, got {family!r}")
    patch = 16 if family == "qwen3_vl" else 14
    min_pixels = min_pixels or (4 * patch) ** 2
    max_pixels = max_pixels or (8 * patch) ** 2
    path = Path(path)
    tokenizer = vl_tokenizer()
    ids = dict(zip(VISION_TOKENS, tokenizer.convert_tokens_to_ids(list(VISION_TOKENS))))
    heads = hidden_size // 32
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=1,
        max_position_embeddings=512,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]},
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    vision = dict(
        depth=vision_depth,
        num_heads=2,
        hidden_size=hidden_size,
        patch_size=patch,
        spatial_merge_size=2,
        temporal_patch_size=2,
        in_channels=3,
    )
    if family == "qwen2_vl":
        vision.update(embed_dim=vision_dim, mlp_ratio=2)
    else:  # the vision width is hidden_size, the language model's is out_hidden_size
        vision.update(hidden_size=vision_dim, intermediate_size=2 * vision_dim, out_hidden_size=hidden_size)
    if family == "qwen2_5_vl":
        vision.update(window_size=2 * 2 * patch, fullatt_block_indexes=[vision_depth - 1])
    if family == "qwen3_vl":
        text.update(head_dim=32)
        text["rope_parameters"] = {**text["rope_parameters"], "mrope_interleaved": True}
        vision.update(num_position_embeddings=64, deepstack_visual_indexes=[vision_depth - 1])
    names = {"qwen2_vl": "Qwen2VL", "qwen2_5_vl": "Qwen2_5_VL", "qwen3_vl": "Qwen3VL"}[family]
    config = getattr(transformers, f"{names}Config")(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    getattr(transformers, f"{names}ForConditionalGeneration")(config).save_pretrained(path)
    save_tokenizer(tokenizer, path)
    processor = Qwen2VLImageProcessorPil(
        min_pixels=min_pixels, max_pixels=max_pixels, patch_size=patch, merge_size=2, temporal_patch_size=2
    )
    processor.save_pretrained(path)
    return path
