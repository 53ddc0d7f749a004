"""Images of dataset rows: a file path, inline base64, or a ``{"bytes": ...}`` dict, decoded to RGB.

A row's image *spec* is one of:

- a path, relative to the folder of the JSONL file that holds the row (or absolute, ``~`` expanded);
- a data URL, ``data:image/png;base64,...``;
- raw base64 of the image file (told from a path by the file magic of PNG, JPEG, GIF, WebP or
  BMP, or by a long run of base64 characters with no ``.`` in it, when no such file exists);
- a dict ``{"bytes": <base64 or bytes>, "path": ...}`` as Hugging Face ``datasets`` exports its
  ``Image`` feature (``bytes`` wins; with ``bytes`` null, ``path`` is read as above).

Every image is decoded completely when it is loaded (``Image.load``), so a truncated or corrupt
file fails here, naming the row's ``file:line`` and the image's position in the row (from 0, as
in the row's ``images`` list), never later in the middle of training.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
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


def _image_bytes(spec: object, base_dir: Path) -> tuple[bytes, str]:
    """The encoded image of ``spec`` and a short description of where it came from."""
    if isinstance(spec, dict):
        data = spec.get("bytes")
        if isinstance(data, (bytes, bytearray)):
            return bytes(data), "the 'bytes' value"
        if isinstance(data, str) and data:
            return _b64decode(data, "'bytes'"), "the 'bytes' value"
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
        return _b64decode(m["data"], "the data URL's payload"), "data URL"
    path = _resolve(spec, base_dir)
    try:
        exists = path.is_file()
    except (OSError, ValueError):  # too long for a file name, or a NUL byte
        exists = False
    if not exists and _looks_base64(spec):
        return _b64decode(spec, "base64 string"), "base64 string"
    if "\0" in spec:
        raise _Bad(f"not a file path (it holds a NUL byte): {_short(spec)}")
    return _read_path(path), str(path)


def _decode(data: bytes, source: str) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # decode now: a truncated file fails here, not in a training step
            return img.convert("RGB")
    except Image.DecompressionBombError as err:
        raise _Bad(f"{source}: {err}") from None
    except Exception as err:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ValueError...
        reason = "not an image file PIL can read" if isinstance(err, Image.UnidentifiedImageError) else str(err)
        raise _Bad(f"cannot decode {source} ({reason})") from None


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
        data, source = _image_bytes(spec, Path(base_dir))
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
