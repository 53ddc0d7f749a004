"""The models and tasks of ``benchmarks/gpu_check.py``: random-init folders built from a config, their
FLOPs, and tasks whose rewards vary within a group for a random model.

Nothing is downloaded. A shape copies a published config's sizes (layers, widths, heads, vocabulary);
its tokenizer is cepo's character tokenizer padded with filler tokens to the config's vocabulary, so
that every id a random model samples decodes. ``qwen2.5-0.5b`` is Qwen2.5-0.5B's text model;
``qwen3-vl-2b`` is Qwen3-VL-2B-Instruct's language model (Qwen3-1.7B-like: 28 layers of 2048, 16 query
and 8 KV heads of 128, MLP 6144) and vision tower (24 blocks of 1024, 16-pixel patches merged 2x2,
deepstack features from blocks 5, 11 and 17). The ``tiny-*`` shapes are the same architectures at
test size, for ``--cpu-smoke``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

from cepo.bases.tiny import CHARS, EOS, PAD, UNK, save_tokenizer
from cepo.tasks import Arithmetic
from cepo.tasks.visual import VisualArithmetic


@dataclass(frozen=True)
class Shape:
    """A model's sizes. ``vision_*`` are None for a text model."""

    name: str
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    mlp: int
    rope_theta: float = 1e6
    mrope: tuple[int, int, int] | None = None
    vision_depth: int | None = None
    vision_hidden: int | None = None
    vision_mlp: int | None = None
    vision_heads: int | None = None
    deepstack: tuple[int, ...] = ()
    position_embeddings: int = 2304

    @property
    def is_vl(self) -> bool:
        return self.vision_depth is not None


SHAPES = {
    "qwen2.5-0.5b": Shape("qwen2.5-0.5b", 151936, 896, 24, 14, 2, 64, 4864),
    "qwen3-vl-2b": Shape(
        "qwen3-vl-2b", 151936, 2048, 28, 16, 8, 128, 6144, 5e6, (24, 20, 20), 24, 1024, 4096, 16, (5, 11, 17)
    ),
    "tiny-text": Shape("tiny-text", 512, 64, 2, 2, 1, 32, 128),
    "tiny-vl": Shape("tiny-vl", 512, 64, 2, 2, 1, 32, 128, 1e4, (4, 6, 6), 2, 32, 64, 2, (1,), 64),
}


def tokenizer(vocab: int, vision: bool):
    """cepo's character tokenizer padded with filler tokens ``<|f123|>`` to ``vocab`` ids (the vision
    tokens last, for a VL shape)."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    from cepo.vision import VISION_TOKENS

    words = {PAD: 0, EOS: 1, UNK: 2}
    for ch in CHARS:
        words[ch] = len(words)
    end = vocab - (len(VISION_TOKENS) if vision else 0)
    words.update({f"<|f{i}|>": i for i in range(len(words), end)})
    tok = Tokenizer(models.WordLevel(vocab=words, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK)
    fast.padding_side = "left"
    if vision:
        extra = [AddedToken(t, special=True, normalized=False) for t in VISION_TOKENS]
        fast.add_special_tokens({"additional_special_tokens": extra})
    assert len(fast) == vocab, (len(fast), vocab)
    return fast


def config(shape: Shape, tok):
    """The transformers config of ``shape`` (tied embeddings, as both published models)."""
    import transformers

    ids = dict(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
    text = dict(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.mlp,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": shape.rope_theta},
        **ids,
    )
    if not shape.is_vl:
        return transformers.Qwen2Config(**text, tie_word_embeddings=True)
    from cepo.vision import VISION_TOKENS

    text.update(head_dim=shape.head_dim)
    text["rope_parameters"].update(mrope_section=list(shape.mrope), mrope_interleaved=True)
    vision = dict(
        depth=shape.vision_depth,
        hidden_size=shape.vision_hidden,
        intermediate_size=shape.vision_mlp,
        num_heads=shape.vision_heads,
        out_hidden_size=shape.hidden,
        patch_size=16,
        spatial_merge_size=2,
        temporal_patch_size=2,
        in_channels=3,
        num_position_embeddings=shape.position_embeddings,
        deepstack_visual_indexes=list(shape.deepstack),
        hidden_act="gelu_pytorch_tanh",
    )
    v = dict(zip(VISION_TOKENS, tok.convert_tokens_to_ids(list(VISION_TOKENS))))
    return transformers.Qwen3VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=v["<|image_pad|>"],
        video_token_id=v["<|video_pad|>"],
        vision_start_token_id=v["<|vision_start|>"],
        vision_end_token_id=v["<|vision_end|>"],
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )


def build(shape: Shape, path: Path, image_size: int, device: str = "cpu", seed: int = 0) -> Path:
    """Write a random-init ``shape`` (float32 weights), its tokenizer and, for a VL shape, its image
    processor (pixel bounds that keep ``image_size`` x ``image_size`` images whole) to ``path``."""
    import torch
    import transformers

    tok = tokenizer(shape.vocab, shape.is_vl)
    cfg = config(shape, tok)
    cls = transformers.Qwen3VLForConditionalGeneration if shape.is_vl else transformers.Qwen2ForCausalLM
    torch.manual_seed(seed)
    with torch.device(device):  # initialising 2B parameters on the GPU takes a second, not a minute
        model = cls(cfg)
    model.save_pretrained(path)
    del model
    save_tokenizer(tok, path)
    if shape.is_vl:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        processor = Qwen2VLImageProcessorPil(
            min_pixels=32 * 32, max_pixels=image_size**2, patch_size=16, merge_size=2, temporal_patch_size=2
        )
        processor.save_pretrained(path)
    return Path(path)


# -- FLOPs ----------------------------------------------------------------------------------------
def linear_params(shape: Shape) -> int:
    """Weights of the language model's decoder layers' matrix products (no embeddings, no norms)."""
    q = shape.heads * shape.head_dim
    kv = shape.kv_heads * shape.head_dim
    attention = shape.hidden * (q + 2 * kv) + q * shape.hidden
    return shape.layers * (attention + 3 * shape.hidden * shape.mlp)


def lora_share(shape: Shape, rank: int = 16) -> float:
    """LoRA's trained weights (rank ``rank`` on every linear layer of the language model) as a share
    of :func:`linear_params`."""
    q = shape.heads * shape.head_dim
    kv = shape.kv_heads * shape.head_dim
    d, m = shape.hidden, shape.mlp
    per_layer = rank * ((d + q) * 2 + 2 * (d + kv) + 3 * (d + m))
    return shape.layers * per_layer / linear_params(shape)


def vision_params(shape: Shape) -> int:
    if not shape.is_vl:
        return 0
    d, m = shape.vision_hidden, shape.vision_mlp
    blocks = shape.vision_depth * (4 * d * d + 2 * d * m)
    merger = 4 * d * 4 * d + 4 * d * shape.hidden  # 2x2 patches -> one token, once plus per deepstack index
    return blocks + merger * (1 + len(shape.deepstack))


def forward_flops(shape: Shape, rows: int, prompt: int, response: int, image_tokens: int = 0) -> float:
    """Model FLOPs of one forward pass over ``rows`` sequences of ``prompt`` + ``response`` tokens
    (``image_tokens`` of the prompt are images: their vision tower runs too): 2 per weight per token,
    attention's two products over the causal context, the LM head on the response positions only
    (cepo computes logits only where it reads them)."""
    seq = prompt + response
    q = shape.heads * shape.head_dim
    dense = 2 * linear_params(shape) * seq + 2 * shape.vocab * shape.hidden * response
    attention = 4 * shape.layers * q * seq * (seq + 1) / 2
    vision = 0.0
    if image_tokens:
        patches = 4 * image_tokens
        vision = 2 * vision_params(shape) * patches + 4 * shape.vision_depth * shape.vision_hidden * patches**2
    return rows * (dense + attention + vision)


def train_flops(shape: Shape, rows: int, prompt: int, response: int, image_tokens: int, trainable: float) -> float:
    """Forward and backward: the backward pass costs one forward for the activations' gradients and
    ``trainable`` (the trained share of the weights: about 0 with LoRA, 1 without) for the weights'."""
    return (2 + trainable) * forward_flops(shape, rows, prompt, response, image_tokens)


def generate_flops(shape: Shape, rows: int, prompt: int, response: int, image_tokens: int = 0) -> float:
    """Prefill of the prompts, then one token per row and step over the growing KV cache."""
    q = shape.heads * shape.head_dim
    prefill = forward_flops(shape, rows, prompt, 0, image_tokens) + 2 * shape.vocab * shape.hidden * rows
    per_token = 2 * (linear_params(shape) + shape.vocab * shape.hidden)
    attention = 4 * shape.layers * q * (prompt * response + response * (response + 1) / 2)
    return prefill + rows * (per_token * response + attention)


def image_tokens(shape: Shape, image_size: int) -> int:
    """Tokens of one ``image_size`` x ``image_size`` image: 16-pixel patches merged 2x2."""
    return math.ceil(image_size / 32) ** 2 if shape.is_vl else 0


# -- tasks ----------------------------------------------------------------------------------------
PREAMBLE = "Work out the arithmetic below step by step, then give the final number. "


def parity(response: str) -> float:
    """1 when the response's characters sum to an odd code point total: about half of a random
    model's rollouts, so groups have a reward spread and every row trains."""
    return float(sum(map(ord, response)) % 2)


class ParityArithmetic(Arithmetic):
    """The built-in arithmetic prompts, each after a preamble of ``prompt_tokens`` characters (one
    token each), rewarded by :func:`parity`."""

    def __init__(self, prompt_tokens: int = 0, **kw) -> None:
        super().__init__(**kw)
        self.preamble = (PREAMBLE * (prompt_tokens // len(PREAMBLE) + 1))[:prompt_tokens]

    def split(self, name: str):
        return [dataclasses.replace(e, prompt=self.preamble + e.prompt) for e in super().split(name)]

    def reward(self, response: str, answer: str) -> float:
        return parity(response)


class ParityVisual(VisualArithmetic):
    """The built-in visual arithmetic task (one image per prompt), rewarded by :func:`parity`."""

    def reward(self, response: str, answer: str) -> float:
        return parity(response)
