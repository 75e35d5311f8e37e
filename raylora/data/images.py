"""Screenshots: where a record's image is, how large it is as displayed, and its pixels — one rule each,
used by every format, by training, by ``eval``, ``score`` and the study's evaluation.

    resolve   an image reference in a record → an absolute path, bytes, or a fetched file
    size      (width, height) as displayed: the header's size with its EXIF orientation applied
    load      RGB pixels: the EXIF orientation applied, transparency composited on white (as transformers'
              ``convert_to_rgb`` does)
    limits    why the processor would refuse an image of this size (aspect ratio over 200), or None

A relative path is looked for, in this order, in the data file's folder, in ``images/`` inside it, in
``images/`` beside it (ScreenSpot ships ``annotations/`` and ``images/`` side by side), then in the
working directory (ms-swift reads paths as given); the first that exists is used, as an absolute path,
so a record means the same file in every process whatever its working directory.

The EXIF orientation is read once per file by :func:`_orientation`, the same way for the size and the
pixels: a labeller drew the box on the displayed (rotated) image, so that is the image every coordinate
refers to.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from ..errors import DataError

MAX_IMAGE_PIXELS = 50_000_000
"""The largest screenshot accepted (50 megapixels; ScreenSpot-Pro's largest are ~20). Larger ones are
refused by name rather than decoded: the processor resizes to ``data.image.max_pixels`` anyway, and a
196-megapixel file costs gigabytes to decode in every loader worker."""
MAX_ASPECT = 200
"""Qwen2-VL/2.5-VL/3-VL's ``smart_resize`` raises for an image whose long side is over 200 times its short
side (transformers 5.24; it has no smallest-side limit: smaller images are scaled up to ``min_pixels``)."""

_TRANSPOSE = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE"}
_TRANSPOSE |= {6: "ROTATE_270", 7: "TRANSVERSE", 8: "ROTATE_90"}  # PIL.ImageOps.exif_transpose's table


# -- where ------------------------------------------------------------------------------------------


def resolve(value: Any, root: Path, where: str) -> Any:
    """An image reference of a record (a path relative to the data file's folder ``root``, an absolute
    path, a ``file://`` or ``data:`` URI, an http(s) URL, bytes, or a ``{"bytes"|"path": ...}`` column) as
    an absolute path or bytes; a DataError naming ``where`` when there is no such file."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, dict) and isinstance(value.get("bytes"), (bytes, bytearray)):
        return bytes(value["bytes"])  # a Hugging Face datasets Image column
    if isinstance(value, dict) and isinstance(value.get("path"), str):
        value = value["path"]
    if not isinstance(value, str) or not value:
        raise DataError(where, "an image needs a path (relative to the data file), a URI or bytes")
    if value.startswith("data:"):
        return _data_uri(value, where)
    if value.startswith(("http://", "https://")):
        return _fetched(value, where)
    if value.startswith("file://"):
        from urllib.parse import unquote, urlsplit

        value = unquote(urlsplit(value).path)
    path = Path(value).expanduser()
    for candidate in candidates(path, root):
        if candidate.is_file():
            return os.path.abspath(candidate)
    odd = next((c for c in candidates(path, root) if c.exists()), None)
    if odd is not None:  # a FIFO, a device or a folder would hang or fail the loader later
        raise DataError(where, f"not a regular file: {odd}")
    if path.is_absolute():
        raise DataError(where, f"image not found: {path}")
    raise DataError(
        where,
        f"image not found: {root / path} (nor in images/ in or beside that folder, nor in the working "
        "directory)",
    )


def candidates(path: Path, root: Path) -> list[Path]:
    """Where a record's image ``path`` is looked for, in order (the module docstring's rule)."""
    if path.is_absolute():
        return [path]
    return [root / path, root / "images" / path, root.parent / "images" / path, Path.cwd() / path]


def _data_uri(value: str, where: str) -> bytes:
    import base64

    header, _, payload = value.partition(",")
    if ";base64" not in header:
        raise DataError(where, "a data: image URI must be base64 (data:image/png;base64,...)")
    try:
        return base64.b64decode(payload, validate=True)
    except ValueError as e:
        raise DataError(where, f"a data: image URI that is not valid base64 ({e})") from None


def _fetched(url: str, where: str) -> str:
    """An http(s) image, fetched once into ``$RAYLORA_HOME/cache/images`` (offline: a clear error)."""
    import hashlib
    import urllib.request

    from .. import environment

    suffix = Path(url.split("?")[0]).suffix[:8] or ".img"
    target = (
        environment.home() / "cache" / "images" / (hashlib.sha256(url.encode()).hexdigest()[:32] + suffix)
    )
    if target.is_file():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            body = response.read()
    except OSError as e:
        raise DataError(where, f"cannot fetch image {url}: {e}") from None
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(body)
    os.replace(tmp, target)
    return str(target)


# -- what -------------------------------------------------------------------------------------------


def size(ref: Any, where: str = "image") -> tuple[int, int]:
    """An image's displayed (width, height) from its header alone (EXIF orientation applied); a DataError
    naming ``where`` when it is not an image, is empty, or is larger than :data:`MAX_IMAGE_PIXELS`."""
    with _opened(ref, where) as image:
        width, height = image.size
        return (height, width) if _orientation(image) in (5, 6, 7, 8) else (width, height)


def load(ref: Any, where: str = "image"):
    """A path or encoded bytes → the displayed image as RGB (a DataError naming ``where`` when it cannot be
    decoded, or when the processor would refuse it: see :func:`limits`)."""
    from PIL import Image

    with _opened(ref, where) as image:
        problem = limits(image.size)
        if problem:
            raise DataError(where, f"{_name(ref)}: {problem}")
        method = _TRANSPOSE.get(_orientation(image))
        try:
            image.load()
            shown = image.transpose(getattr(Image.Transpose, method)) if method else image
            return _rgb(shown)
        except (OSError, ValueError, SyntaxError) as e:  # truncated or corrupt pixel data
            raise DataError(where, f"cannot decode image {_name(ref)}: {e}") from None


def limits(dims: tuple[int, int]) -> str | None:
    """Why Qwen's image processor would refuse an image of ``dims`` (width, height), or None."""
    width, height = dims
    if max(width, height) / min(width, height) > MAX_ASPECT:
        return (
            f"a {width}×{height} image has an aspect ratio of {max(width, height) / min(width, height):.0f}, "
            f"over the processor's {MAX_ASPECT}"
        )
    return None


def _rgb(image):
    """transformers' ``convert_to_rgb``: an image with transparency composited on white, others converted."""
    from PIL import Image

    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _orientation(image) -> int:
    """The EXIF orientation (1–8) from what the header holds. A PNG's ``eXIf`` chunk counts only before the
    pixel data (where the PNG spec puts it): reading further would decode the whole image for its size."""
    if image.format == "PNG" and "exif" not in image.info:
        return 1
    try:
        value = image.getexif().get(0x0112, 1)
    except Exception:  # a malformed EXIF block: PIL raises several types; the image is shown as stored
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _opened(ref: Any, where: str):
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(ref) if isinstance(ref, bytes) else ref)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(where, f"image {_name(ref)} is larger than {MAX_IMAGE_PIXELS:,} pixels") from None
    except (OSError, ValueError, SyntaxError) as e:  # not an image at all, or an unreadable file
        raise DataError(where, f"cannot read image {_name(ref)}: {e}") from None
    width, height = image.size
    if width == 0 or height == 0:
        image.close()
        raise DataError(where, f"image {_name(ref)} is empty ({width}×{height})")
    if width * height > MAX_IMAGE_PIXELS:
        image.close()
        raise DataError(
            where, f"image {_name(ref)} is {width}×{height}, larger than {MAX_IMAGE_PIXELS:,} pixels"
        )
    return image


def _name(ref: Any) -> str:
    return f"({len(ref)} bytes)" if isinstance(ref, bytes) else str(ref)
