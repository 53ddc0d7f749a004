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
