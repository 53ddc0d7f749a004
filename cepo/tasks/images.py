"""Images of dataset rows: a file path, inline base64, or a ``{"bytes": ...}`` dict, decoded to RGB.

A row's image *spec* is one of:

- a path, relative to the folder of the JSONL file that holds the row (or absolute, ``~`` expanded);
- a data URL, ``data:image/png;base64,...``;
- raw base64 of the image file (told from a path by the file magic of PNG, JPEG, GIF, WebP or
  BMP, or by a long run of base64 characters with no ``.`` in it, when no such file exists);
- a dict ``{"bytes": <base64 or bytes>, "path": ...}`` as Hugging Face ``datasets`` exports its
  ``Image`` feature (``bytes`` wins; with ``bytes`` null, ``path`` is read as above).

A dataset row keeps its images *encoded* (:class:`EncodedImage`: the file's bytes, or only its path
for a path spec) and decodes one when a batch needs it, straight to the size the policy's image
processor would resize it to (:meth:`EncodedImage.decode`): a decoded 4000x4000 RGB image costs
64 MB (PIL keeps 4 bytes a pixel), its PNG file a few hundred KB.

Loading checks each image without decoding its pixels: the header must be an image PIL reads, a
PNG's chunk checksums must hold (a truncated or corrupted file fails here) and a JPEG decodes at
an eighth of its size; other formats are decoded once and dropped. A failure names the row's
``file:line`` (or ``file: row N``) and the image's position in the row (from 0, as in the row's
``images`` list). A file that passes these checks and still fails to decode later (a path whose
file changed, a PNG whose compressed data is wrong under valid checksums) fails in its batch with
the same message. :func:`load_image` decodes one spec completely, at once.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from collections.abc import Callable
from pathlib import Path

from PIL import Image

_DATA_URL = re.compile(r"data:(?P<mime>[\w.+/-]*)(?P<params>(?:;[\w.+-]+(?:=[\w.+-]+)?)*),(?P<data>.*)", re.S)
_BASE64 = re.compile(r"[A-Za-z0-9+/\s]+={0,2}\s*")
# Base64 of the first bytes of PNG, JPEG, GIF, WebP (RIFF) and BMP files.
_MAGIC_B64 = ("iVBORw0KGgo", "/9j/", "R0lGOD", "UklGR", "Qk")
_SHOWN = 60  # characters of a spec quoted in an error


class _Bad(Exception):
    """An image that cannot be loaded; the message is the reason (``where`` is added by the caller)."""


def _short(text: str) -> str:
    return repr(text if len(text) <= _SHOWN else text[:_SHOWN] + "...")


def _b64decode(data: str, what: str) -> bytes:
    try:
        return base64.b64decode(re.sub(r"\s+", "", data), validate=True)
    except (binascii.Error, ValueError) as err:
        raise _Bad(f"{what} is not valid base64 ({err})") from None


def _looks_base64(spec: str) -> bool:
    """Whether a string that is not an existing file reads as raw base64 of an image."""
    head = spec.lstrip()
    if head.startswith(_MAGIC_B64) and _BASE64.fullmatch(spec):
        return True
    return len(spec) >= 64 and "." not in spec and bool(_BASE64.fullmatch(spec))


def _resolve(spec: str, base_dir: Path) -> Path:
    try:
        path = Path(spec).expanduser()
    except RuntimeError:  # ~user that does not exist: taken literally
        path = Path(spec)
    return path if path.is_absolute() else base_dir / path


def _read_path(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise _Bad(f"file not found: {path}") from None
    except OSError as err:
        raise _Bad(f"cannot read {_short(str(path))}: {err.strerror or err}") from None


def _image_bytes(spec: object, base_dir: Path) -> tuple[bytes, str, Path | None]:
    """The encoded image of ``spec``, a short description of where it came from, and its file
    (None for an image held in the row)."""
    if isinstance(spec, dict):
        data = spec.get("bytes")
        if isinstance(data, (bytes, bytearray)):
            return bytes(data), "the 'bytes' value", None
        if isinstance(data, str) and data:
            return _b64decode(data, "'bytes'"), "the 'bytes' value", None
        if data is None and isinstance(spec.get("path"), str) and spec["path"]:
            return _image_bytes(spec["path"], base_dir)
        raise _Bad("a dict image needs 'bytes' (base64) or, with 'bytes' null, a 'path'")
    if not isinstance(spec, str) or not spec.strip():
        got = "an empty string" if isinstance(spec, str) else type(spec).__name__
        raise _Bad(f"must be a path, a base64 string or {{'bytes': base64}}, got {got}")
    if spec.startswith("data:"):
        m = _DATA_URL.fullmatch(spec)
        if m is None or ";base64" not in m["params"]:
            raise _Bad(f"a data URL must be data:<type>;base64,<data>, got {_short(spec)}")
        return _b64decode(m["data"], "the data URL's payload"), "data URL", None
    path = _resolve(spec, base_dir)
    try:
        exists = path.is_file()
    except (OSError, ValueError):  # too long for a file name, or a NUL byte
        exists = False
    if not exists and _looks_base64(spec):
        return _b64decode(spec, "base64 string"), "base64 string", None
    if "\0" in spec:
        raise _Bad(f"not a file path (it holds a NUL byte): {_short(spec)}")
    return _read_path(path), str(path), path


def _decode(data: bytes, source: str, fit: Fit | None = None) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as img:
            target = fit(*img.size) if fit is not None else img.size
            if target != img.size:
                img.draft("RGB", target)  # JPEG: a smaller scale straight from the file
            img.load()  # decode now: a truncated file fails here
            rgb = img if img.mode == "RGB" else img.convert("RGB")
            # resize before the with block frees the file: one full-size copy at most
            return rgb.resize(target, Image.Resampling.BICUBIC) if rgb.size != target else rgb
    except Image.DecompressionBombError as err:
        raise _Bad(f"{source}: {err}") from None
    except Exception as err:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ValueError...
        reason = "not an image file PIL can read" if isinstance(err, Image.UnidentifiedImageError) else str(err)
        raise _Bad(f"cannot decode {source} ({reason})") from None


def _header(data: bytes, source: str) -> tuple[int, int]:
    """The (width, height) of an encoded image, checked as the module docstring says."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            size = img.size
            if img.format == "PNG":
                img.verify()  # every chunk's CRC, no pixels decoded (~1 ms for a 4000x4000 PNG)
            else:
                img.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))  # JPEG: decodes at 1/8
                img.load()
            return size
    except Image.DecompressionBombError as err:
        raise _Bad(f"{source}: {err}") from None
    except Exception as err:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ValueError...
        reason = "not an image file PIL can read" if isinstance(err, Image.UnidentifiedImageError) else str(err)
        raise _Bad(f"cannot decode {source} ({reason})") from None


Fit = Callable[[int, int], tuple[int, int]]
"""``fit(width, height) -> (width, height)``: the size an image is used at."""


class EncodedImage:
    """One image of a dataset row, kept encoded until a batch needs it.

    Args:
        data: the image file's bytes, or None to read ``path`` when decoding.
        path: the image file (for a path spec; None for inline bytes).
        source: how errors name the image (its path, or e.g. "the 'bytes' value").
        size: ``(width, height)`` from the file's header.
        where: what names the row in an error, ``file:line``.
        index: the image's position in the row (from 0).
    """

    __slots__ = ("data", "path", "source", "size", "where", "index")

    def __init__(
        self, data: bytes | None, path: Path | None, source: str, size: tuple[int, int], where: str, index: int
    ) -> None:
        self.data, self.path, self.source, self.size = data, path, source, size
        self.where, self.index = where, index

    def __repr__(self) -> str:
        held = f"{len(self.data)} bytes" if self.data is not None else str(self.path)
        return f"EncodedImage({self.size[0]}x{self.size[1]}, {held})"

    def decode(self, fit: Fit | None = None) -> Image.Image:
        """The image in RGB, at ``fit(width, height)`` when given (resized with bicubic
        resampling, as Qwen-VL processors resize; a JPEG is decoded at the smallest of its
        1/2, 1/4, 1/8 scales at least that large first), else at its own size.

        Raises:
            ValueError: ``"{where}: image {index}: <reason>"`` when the file cannot be read or decoded.
        """
        try:
            data = self.data if self.data is not None else _read_path(self.path)
            return _decode(data, self.source, fit)
        except _Bad as err:
            raise ValueError(f"{self.where}: image {self.index}: {err}") from None


def open_image(spec: object, base_dir: str | Path, where: str, index: int = 0) -> EncodedImage:
    """The image of one spec (see the module docstring), checked but kept encoded: the bytes of an
    inline image, only the path of a file.

    Raises:
        ValueError: ``"{where}: image {index}: <reason>"``, as :func:`load_image`.
    """
    try:
        data, source, path = _image_bytes(spec, Path(base_dir))
        size = _header(data, source)
    except _Bad as err:
        raise ValueError(f"{where}: image {index}: {err}") from None
    return EncodedImage(data if path is None else None, path, source, size, where, index)


def open_images(specs: object, base_dir: str | Path, where: str) -> list[EncodedImage]:
    """The images of a row's ``images`` value (a list of specs, one spec, or None), kept encoded."""
    if specs is None:
        return []
    if not isinstance(specs, list):
        specs = [specs]
    return [open_image(spec, base_dir, where, i) for i, spec in enumerate(specs)]


def load_image(spec: object, base_dir: str | Path, where: str, index: int = 0) -> Image.Image:
    """The image of one spec (see the module docstring), decoded and converted to RGB.

    Args:
        spec: a path, a data URL, raw base64, or ``{"bytes": base64}`` / ``{"path": ...}``.
        base_dir: the folder relative paths start from (the JSONL file's folder).
        where: what names the row in an error, ``file:line``.
        index: the image's position in the row (from 0), named in an error.

    Raises:
        ValueError: ``"{where}: image {index}: <reason>"`` for a missing, unreadable or undecodable
            image or a spec of the wrong kind.
    """
    try:
        data, source, _ = _image_bytes(spec, Path(base_dir))
        return _decode(data, source)
    except _Bad as err:
        raise ValueError(f"{where}: image {index}: {err}") from None


def load_images(specs: object, base_dir: str | Path, where: str) -> list[Image.Image]:
    """The images of a row's ``images`` value: a list of specs, one spec, or None (no images)."""
    if specs is None:
        return []
    if not isinstance(specs, list):
        specs = [specs]
    return [load_image(spec, base_dir, where, i) for i, spec in enumerate(specs)]
