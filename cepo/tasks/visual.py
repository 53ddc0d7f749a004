"""A built-in visual task: arithmetic whose operands are only in the picture.

The prompt ``<image>+=`` shows a small RGB image (56x56 by default) with one digit ``a`` drawn in
its left half and one digit ``b`` in its right half (each half is one 28x28 patch of a Qwen2-VL
style encoder at the default size), and is answered ``" 3+8 = 11"``: the response first reads the
two digits off the image, then computes. The operation (``+``, ``-`` or ``*``, chosen per problem
from ``ops``) is written in the text; the numbers are not, so text alone cannot beat chance (the
``blank_images`` control shows it). A response mixes *decisive* characters (the digits read from
the image, and the result's) with *copied* ones (the operator from the prompt) and *filler*
(spaces and ``=``).

Each digit is shifted by up to ``jitter`` pixels from its half's centre and the image gets light
pixel noise, all drawn from the problem's seed, so no two problems share an image. Splits come
from fixed seeds; no (a, b, op, shifts) of the validation or test split appears in training.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from functools import cache, cached_property
from typing import NamedTuple

from PIL import Image, ImageChops, ImageDraw, ImageFont

from cepo.tasks.arithmetic import COPIED, DECISIVE, FILLER, final_number
from cepo.tasks.base import IMAGE_PLACEHOLDER, Example, Task

OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
_NUMBER = re.compile(r"\d+")
_INK, _PAPER = 0, 255


class Look(NamedTuple):
    """How one problem's image is drawn: each digit's shift from its half's centre (pixels) and
    the seed of the pixel noise."""

    dx_a: int = 0
    dy_a: int = 0
    dx_b: int = 0
    dy_b: int = 0
    noise_seed: int = 0


CENTRED = Look()
"""Both digits centred in their halves (and the noise of seed 0)."""


@cache
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont | None:
    """Pillow's bundled scalable font at ``size`` pixels, or None when this Pillow has no FreeType
    (then :func:`_glyph` scales up the bitmap font)."""
    try:
        font = ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow < 10.1, or built without FreeType
        return None
    return font if isinstance(font, ImageFont.FreeTypeFont) else None


@cache
def _glyph(digit: int, height: int) -> Image.Image:
    """The digit as an ``L`` mask (255 = ink) cropped to its ink, about ``height`` pixels tall."""
    font = _font(round(height * 1.35))  # a font's digits are about 0.73 of its size tall
    canvas = Image.new("L", (4 * height, 4 * height), 0)
    bitmap = getattr(ImageFont, "load_default_imagefont", ImageFont.load_default)  # Pillow < 10.1: load_default
    ImageDraw.Draw(canvas).text((height, height), str(digit), fill=255, font=font or bitmap())
    mask = canvas.crop(canvas.getbbox())
    if font is None:  # the small bitmap font, scaled up
        mask = mask.resize((max(1, round(mask.width * height / mask.height)), height), Image.Resampling.NEAREST)
    return mask


def render(a: int, b: int, look: Look = CENTRED, size: int = 56, noise: float = 0.15) -> Image.Image:
    """The ``size`` x ``size`` RGB image of a problem: ``a`` centred in the left half and ``b``
    in the right half, each shifted by the ``look``'s offsets, dark on light, with uniform pixel
    noise of up to ``noise`` of the range darkening the image. Each half depends only on its own
    digit, shift and the noise seed (a digit is clipped at its half's edge)."""
    half = size // 2
    image = Image.new("L", (size, size), _PAPER)
    for digit, dx, dy, x0 in ((a, look.dx_a, look.dy_a, 0), (b, look.dx_b, look.dy_b, half)):
        glyph = _glyph(digit, round(size * 0.55))
        tile = Image.new("L", (half, size), _PAPER)
        left = (half - glyph.width) // 2 + dx
        top = (size - glyph.height) // 2 + dy
        tile.paste(_INK, (left, top), glyph)
        image.paste(tile, (x0, 0))
    rgb = Image.merge("RGB", (image, image, image))
    amplitude = round(255 * noise)
    if amplitude:
        raw = random.Random(look.noise_seed).randbytes(3 * size * size)
        speckle = Image.frombytes("RGB", (size, size), raw).point(_scale_lut(amplitude))
        rgb = ImageChops.subtract(rgb, speckle)
    return rgb


@cache
def _scale_lut(amplitude: int) -> list[int]:
    """The RGB lookup table mapping a byte ``v`` to ``v * amplitude // 255``."""
    return [v * amplitude // 255 for v in range(256)] * 3


def blank(size: int = 56) -> Image.Image:
    """A plain light image of ``size`` x ``size``: the control that shows nothing."""
    return Image.new("RGB", (size, size), (_PAPER,) * 3)


class _Problem(NamedTuple):
    a: int
    b: int
    op: str
    look: Look

    def key(self) -> tuple:
        """What held-out problems may not share with training ones (the noise seed excluded)."""
        return (self.a, self.b, self.op, *self.look[:4])


def _draw(rng: random.Random, ops: str, jitter: int) -> _Problem:
    op = rng.choice(ops)
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    if op == "-" and a < b:  # results stay non-negative
        a, b = b, a
    shifts = [rng.randint(-jitter, jitter) for _ in range(4)]
    return _Problem(a, b, op, Look(*shifts, noise_seed=rng.getrandbits(32)))


class RenderedSplit(Sequence):
    """A split whose examples (and images) are drawn when indexed, the same every time: eager
    images would cost ~240 MB for 20,000 problems at 56x56 (PIL keeps RGB in 4 bytes a pixel) and
    grow with the square of ``image_size``. A ``Sequence``: ``len``, indexing, slicing (another
    ``RenderedSplit``), iteration; ``list(split)`` draws them all."""

    def __init__(self, task: VisualArithmetic, problems: list[_Problem]) -> None:
        self.task, self.problems = task, problems

    def __len__(self) -> int:
        return len(self.problems)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return RenderedSplit(self.task, self.problems[i])
        return self.task.example(self.problems[i])


class VisualArithmetic(Task):
    """One operation on two digits shown in an image: ``<image>+=`` -> ``" 3+8 = 11"``.

    The digits ``a, b`` in [0, 9] are drawn in the image's left and right halves; the operation
    is in the text (``-`` keeps ``a >= b``). The answer is ``str(a op b)``.

    Args:
        ops: the operations problems are drawn from, any of ``+``, ``-``, ``*`` (e.g. ``"+-*"``).
        image_size: the image's side in pixels (even, >= 16); 56 puts each digit in its own
            28x28 patch.
        jitter: the most pixels a digit is shifted from its half's centre, each axis.
        noise: the most a pixel is darkened by noise, as a fraction of the range (0: none).
        blank_images: replace every image by a blank one of the same size (a control: the text
            alone cannot beat chance).
        train_size: training problems (held-out ones removed, so possibly slightly fewer).
        val_size: validation problems.
        test_size: test problems.
        seed: seed of the split generator; the same seed gives the same splits everywhere.
    """

    def __init__(
        self,
        ops: str = "+",
        image_size: int = 56,
        jitter: int = 3,
        noise: float = 0.15,
        blank_images: bool = False,
        train_size: int = 20000,
        val_size: int = 500,
        test_size: int = 500,
        seed: int = 1234,
    ) -> None:
        if not ops or set(ops) - set(OPS):
            raise ValueError(f"task.ops must be a non-empty string of {''.join(OPS)}, got {ops!r}")
        if image_size < 16 or image_size % 2:
            raise ValueError(f"task.image_size must be even and >= 16, got {image_size}")
        if not 0 <= jitter <= image_size // 8:
            raise ValueError(f"task.jitter must be in [0, image_size / 8 = {image_size // 8}], got {jitter}")
        if not 0 <= noise <= 1:
            raise ValueError(f"task.noise must be in [0, 1], got {noise}")
        self.ops = "".join(dict.fromkeys(ops))
        self.image_size, self.jitter, self.noise = image_size, jitter, float(noise)
        self.blank_images = bool(blank_images)
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        self.seed = seed
        pairs = sum(55 if op == "-" else 100 for op in self.ops)
        keys = pairs * (2 * jitter + 1) ** 4
        if val_size + test_size > keys:
            raise ValueError(
                f"task.val_size + task.test_size ({val_size + test_size}) exceed the {keys} distinct problems of "
                f"ops={self.ops!r}, jitter={jitter}"
            )

    def example(self, p: tuple[int, int, str, Look]) -> Example:
        """The example of one problem ``(a, b, op, look)``, its image drawn now."""
        p = _Problem(*p)
        image = blank(self.image_size) if self.blank_images else render(p.a, p.b, p.look, self.image_size, self.noise)
        c = OPS[p.op](p.a, p.b)
        return Example(
            prompt=f"{IMAGE_PLACEHOLDER}{p.op}=",
            answer=str(c),
            solution=f" {p.a}{p.op}{p.b} = {c}",
            images=[image],
        )

    @cached_property
    def _problems(self) -> dict[str, list[_Problem]]:
        held_out: dict[str, list[_Problem]] = {}
        seen: set[tuple] = set()
        for offset, name in ((1, "val"), (2, "test")):
            rng = random.Random(self.seed * 1000 + offset)
            rows: list[_Problem] = []
            while len(rows) < self.sizes[name]:
                p = _draw(rng, self.ops, self.jitter)
                if p.key() not in seen:
                    seen.add(p.key())
                    rows.append(p)
            held_out[name] = rows
        rng = random.Random(self.seed * 1000)
        train = (_draw(rng, self.ops, self.jitter) for _ in range(self.sizes["train"]))
        return {"train": [p for p in train if p.key() not in seen], **held_out}

    def problems(self, name: str) -> list[tuple[int, int, str, Look]]:
        """The ``(a, b, op, look)`` of each problem of split ``name``, in the split's order."""
        if name not in self.sizes:
            raise ValueError(f"unknown split {name!r}; expected one of {sorted(self.sizes)}")
        return [tuple(p) for p in self._problems[name]]

    def split(self, name: str) -> RenderedSplit:
        """The examples of split ``name``; each image is drawn when its example is indexed."""
        if name not in self.sizes:
            raise ValueError(f"unknown split {name!r}; expected one of {sorted(self.sizes)}")
        return RenderedSplit(self, self._problems[name])

    def extract_answer(self, response: str) -> str | None:
        return final_number(response)

    def token_roles(self, response: str) -> list[str]:
        """Per-character roles (decisive / copied / filler) for credit diagnostics."""
        return token_roles(response)


def token_roles(response: str) -> list[str]:
    """The role of each character of a visual arithmetic response (``" 3+8 = 11"``).

    ``decisive``: the digits before the first ``=`` (read from the image, which the text does not
    show) and the first number after each ``=`` (a result). ``copied``: operators (the prompt
    writes the operation) and any later number after an ``=``. ``filler``: spaces, ``=`` and
    anything else.
    """
    roles = [FILLER] * len(response)
    start = 0
    for k, segment in enumerate(response.split("=")):
        for n, m in enumerate(_NUMBER.finditer(segment)):
            role = DECISIVE if k == 0 or n == 0 else COPIED
            for i in range(m.start(), m.end()):
                roles[start + i] = role
        for i, ch in enumerate(segment):
            if ch in OPS:
                roles[start + i] = COPIED
        start += len(segment) + 1
    return roles
