"""Images for vision-language policies of the Qwen2-VL family (Qwen2-VL, Qwen2.5-VL, Qwen3-VL).

A prompt carries one ``<image>`` placeholder per image (``cepo.tasks.IMAGE_PLACEHOLDER``). For a
vision-language policy, :class:`Vision` turns it into the model's own tokens
(``<|vision_start|><|image_pad|><|vision_end|>``), runs the image processor (the PIL one: no
torchvision) within ``min_pixels``/``max_pixels``, and expands each ``<|image_pad|>`` into one pad
per merged patch. Forward passes then need three more inputs (:meth:`Vision.model_inputs`):
``pixel_values`` and ``image_grid_thw`` of the rows' images in row order, and the rotary positions
of multimodal RoPE, computed by the model's own ``get_rope_index`` from the whole sequence (plain
``cumsum(mask) - 1`` positions are wrong for rows with images). Response tokens count as text, and
the vision tokens are banned from sampling (:attr:`Vision.banned`).

A dataset row keeps its images encoded (:class:`cepo.tasks.images.EncodedImage`); :meth:`Vision.encode`
decodes each straight to the size the processor would resize it to (:meth:`Vision.fit`), so no
full-size copy outlives its own decoding and the processor's output is the same as from the full
image (for every format but JPEG, which is decoded at a reduced scale first).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
VL_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
PLACEHOLDER = "<image>"


@dataclass
class VisionSettings:
    """How a vision-language policy handles images (ignored for text models).

    Attributes:
        min_pixels: smallest image area after resizing (None: the processor's own).
        max_pixels: largest image area after resizing (None: the processor's own).
        train_vision: train the vision tower too (default: frozen; LoRA adapts the language model).
    """

    min_pixels: int | None = None
    max_pixels: int | None = None
    train_vision: bool = False


@dataclass
class Images:
    """One prompt's images, processed.

    Attributes:
        pixel_values: ``[patches, D]`` the images' patches, one image after another.
        grid_thw: ``[n_images, 3]`` each image's (time, height, width) grid of patches.
        tokens: image tokens per image in the expanded prompt.
        raw: the PIL images, at the size the processor uses them (for engines that process
            images themselves, e.g. vLLM, and for the token-weight pages' thumbnails).
    """

    pixel_values: torch.Tensor
    grid_thw: torch.Tensor
    tokens: list[int]
    raw: list


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a peft wrapper (or the model itself)."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) and hasattr(model, "peft_config") else model


class Vision:
    """A vision-language policy's image handling (tokens, processor, forward inputs).

    Args:
        processor: the policy's image processor (``Qwen2VLImageProcessorPil`` or alike).
        tokenizer: the policy's tokenizer (with the vision special tokens).
        config: the model config (``image_token_id``, ``vision_config.spatial_merge_size``).
        min_pixels: smallest image area after resizing (None: the processor's own).
        max_pixels: largest image area after resizing (None: the processor's own).
    """

    def __init__(self, processor, tokenizer, config, min_pixels: int | None = None, max_pixels: int | None = None):
        self.processor = processor
        self.tokenizer = tokenizer
        self.image_token_id = int(config.image_token_id)
        # Features computed once per prompt are handed to the model for Qwen2-VL (verified equal to
        # its own encoding); Qwen2.5-VL and Qwen3-VL (deepstack features) encode their pixels per row.
        self.share_features = getattr(config, "model_type", None) == "qwen2_vl"
        self.merge = int(getattr(config.vision_config, "spatial_merge_size", 2))
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        self.banned = [i for i in tokenizer.convert_tokens_to_ids(list(VISION_TOKENS)) if i is not None and i >= 0]
        start, end = VISION_TOKENS[0], VISION_TOKENS[1]
        self.placeholder = f"{start}{VISION_TOKENS[2]}{end}"

    @classmethod
    def from_folder(cls, path: str, tokenizer, config, min_pixels: int | None = None, max_pixels: int | None = None):
        """The folder's image processor (PIL backend), or None for a text-only model."""
        if getattr(config, "model_type", None) not in VL_MODEL_TYPES:
            return None
        from transformers import AutoImageProcessor

        processor = AutoImageProcessor.from_pretrained(path)
        return cls(processor, tokenizer, config, min_pixels, max_pixels)

    def fit(self, width: int, height: int) -> tuple[int, int]:
        """The ``(width, height)`` the processor resizes a ``width`` x ``height`` image to: sides
        multiples of ``patch_size * merge_size``, the area within the pixel bounds (the Qwen-VL
        ``smart_resize``); the size itself when the processor does not say its bounds."""
        p = self.processor
        size = getattr(p, "size", None) or {}
        lo = self.min_pixels or getattr(p, "min_pixels", None) or size.get("shortest_edge")
        hi = self.max_pixels or getattr(p, "max_pixels", None) or size.get("longest_edge")
        patch, merge = getattr(p, "patch_size", None), getattr(p, "merge_size", None)
        if not (lo and hi and patch and merge and getattr(p, "do_resize", True)):
            return width, height
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        h, w = smart_resize(height, width, int(patch) * int(merge), int(lo), int(hi))
        return w, h

    def size_override(self) -> dict:
        """The processor-call argument that applies ``min_pixels``/``max_pixels`` (``size``, its
        ``shortest_edge``/``longest_edge`` areas; the processor's own where one is unset), or none.
        Passing ``min_pixels``/``max_pixels`` to the call itself is deprecated (gone in transformers 5.23)."""
        if not (self.min_pixels or self.max_pixels):
            return {}
        size = getattr(self.processor, "size", None) or {}
        lo = self.min_pixels or getattr(self.processor, "min_pixels", None) or size.get("shortest_edge")
        hi = self.max_pixels or getattr(self.processor, "max_pixels", None) or size.get("longest_edge")
        return {"size": {k: int(v) for k, v in (("shortest_edge", lo), ("longest_edge", hi)) if v}}

    def encode(self, images: list) -> Images:
        """Process a prompt's images (resized within the pixel bounds): PIL images, or encoded
        ones (anything with ``decode(fit)``, :class:`cepo.tasks.images.EncodedImage`), decoded
        now at :meth:`fit`'s size."""
        images = [im.decode(self.fit) if hasattr(im, "decode") else im for im in images]
        out = self.processor(images=list(images), return_tensors="pt", **self.size_override())
        grid = out["image_grid_thw"].long()
        tokens = (grid.prod(-1) // self.merge**2).tolist()
        return Images(out["pixel_values"].float(), grid, tokens, [self.fitted(im) for im in images])

    def fitted(self, image):
        """``image`` (PIL) at :meth:`fit`'s size, as the processor resizes it (bicubic), for the
        engines that process images themselves: vLLM then needs no bounds of its own."""
        size = self.fit(*image.size)
        if tuple(size) == tuple(image.size):
            return image
        from PIL import Image

        return image.resize(size, Image.Resampling.BICUBIC)

    def prompt_ids(self, text: str, images: Images | None) -> list[int]:
        """Token ids of a rendered prompt: each ``<image>`` becomes the model's vision tokens, each
        image pad expanded to the image's token count."""
        n = text.count(PLACEHOLDER)
        if n != (len(images.tokens) if images is not None else 0):
            raise ValueError(
                f"a prompt has {n} {PLACEHOLDER} placeholder(s) but {len(images.tokens) if images else 0} image(s)"
            )
        ids = self.tokenizer(text.replace(PLACEHOLDER, self.placeholder), add_special_tokens=False).input_ids
        if images is None:
            return ids
        out, k = [], 0
        for token in ids:
            if token == self.image_token_id:
                out += [token] * images.tokens[k]
                k += 1
            else:
                out.append(token)
        return out

    def strip(self, text: str) -> str:
        """``text`` without its images (for image-blind teachers)."""
        return text.replace(PLACEHOLDER, "")

    def model_inputs(
        self,
        model: torch.nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        prompt_width: int,
        images: list[Images | None],
    ) -> dict:
        """Forward kwargs for rows ``input_ids`` (``[B, L]``, prompts in the first ``prompt_width``
        columns) whose images are ``images`` (one entry per row): the image features (each
        prompt's encoded once), the token types and the 3-D rotary positions."""
        kinds = torch.zeros_like(input_ids)
        kinds[:, :prompt_width] = (input_ids[:, :prompt_width] == self.image_token_id).long()
        present = [im for im in images if im is not None]
        grid = torch.cat([im.grid_thw for im in present]) if present else None
        inner = base_model(model).model
        position, _ = inner.get_rope_index(
            input_ids, mm_token_type_ids=kinds, image_grid_thw=grid, attention_mask=attention_mask
        )
        out = {"position_ids": position, "mm_token_type_ids": kinds}
        if present and not self.share_features:
            device = input_ids.device
            out["pixel_values"] = torch.cat([im.pixel_values for im in present]).to(device)
            out["image_grid_thw"] = grid.to(device)
        elif present:
            # each prompt's images go through the vision tower once, however many rows (rollouts,
            # teacher contexts) of this pass share them
            device = input_ids.device
            features: dict[int, list[torch.Tensor]] = {}
            for im in present:
                if id(im) not in features:
                    pooled = inner.get_image_features(
                        im.pixel_values.to(device), im.grid_thw.to(device), return_dict=True
                    ).pooler_output
                    features[id(im)] = list(pooled)
            pooled = tuple(f for im in present for f in features[id(im)])
            out["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=pooled)}
        return out
