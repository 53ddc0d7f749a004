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
    min_pixels: int = 56 * 56,
    max_pixels: int = 112 * 112,
) -> Path:
    """Write a randomly initialised tiny Qwen2-VL-architecture model, its tokenizer and its (PIL)
    image processor to ``path``.

    Text model: ``hidden_size``, ``num_layers``, 2 heads / 1 KV head (head dim 32, the smallest
    vLLM's CPU attention accepts), multimodal RoPE sections (4, 6, 6). Vision tower: 14-pixel
    patches merged 2x2 into one token each (a 56x56 image is 4 tokens), ``vision_depth`` blocks of
    width ``vision_dim``.
    """
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from cepo.vision import VISION_TOKENS

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
        embed_dim=vision_dim,
        num_heads=2,
        mlp_ratio=2,
        hidden_size=hidden_size,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        in_channels=3,
    )
    config = Qwen2VLConfig(
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
    Qwen2VLForConditionalGeneration(config).save_pretrained(path)
    save_tokenizer(tokenizer, path)
    processor = Qwen2VLImageProcessorPil(
        min_pixels=min_pixels, max_pixels=max_pixels, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    processor.save_pretrained(path)
    return path
