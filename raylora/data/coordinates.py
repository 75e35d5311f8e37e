"""One registry of GUI coordinate conventions, shared by data import, answer templates, evaluation and
serving: the most common silent bug in GUI fine-tuning is a point written in one convention and read in
another.

    qwen3vl         0–1000 relative to the image (Qwen3-VL, Qwen2-VL, UI-TARS v1, OS-Atlas)
    mai-ui          0–999 relative (MAI-UI scales by 999)
    pixels          absolute pixels of the original screenshot (ScreenSpot boxes, UI-TARS-1.5 on the
                    original image)
    resized-pixels  absolute pixels of the image as the processor resized it (Qwen2.5-VL)
    unit            0–1 floats (ShowUI)

Every conversion goes through 0–1 floats, so points and boxes round-trip between any two conventions
within a pixel. :func:`out_of_range` names a value outside its convention (or outside the image): it is how
a pixels-vs-relative mix-up is caught before training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Size = tuple[int, int]  # (width, height)


@dataclass(frozen=True)
class Convention:
    """How one family writes a coordinate: ``extent(size, resized)`` is the value of the image's far edge."""

    name: str
    relative: float | None  # the far edge's value for relative conventions; None for pixel ones
    integer: bool  # answers are written as integers
    resized: bool = False  # pixels of the processor's resized image, not the original

    def extent(self, size: Size, resized: Size | None) -> tuple[float, float]:
        if self.relative is not None:
            return self.relative, self.relative
        if self.resized:
            if resized is None:
                raise ValueError(f"{self.name} needs the processor's resized image size")
            return float(resized[0]), float(resized[1])
        return float(size[0]), float(size[1])


CONVENTIONS: dict[str, Convention] = {
    "qwen3vl": Convention("qwen3vl", 1000.0, integer=True),
    "mai-ui": Convention("mai-ui", 999.0, integer=True),
    "pixels": Convention("pixels", None, integer=True),
    "resized-pixels": Convention("resized-pixels", None, integer=True, resized=True),
    "unit": Convention("unit", 1.0, integer=False),
}
NAMES = tuple(CONVENTIONS)


def get(name: str) -> Convention:
    """The convention called ``name`` (a ValueError naming the known ones otherwise)."""
    try:
        return CONVENTIONS[name]
    except KeyError:
        raise ValueError(f"unknown coordinate convention {name!r} (known: {', '.join(NAMES)})") from None


def to_unit(point: tuple[float, float], src: str, size: Size, resized: Size | None = None):
    """A point in convention ``src`` as 0–1 fractions of the image."""
    ex, ey = get(src).extent(size, resized)
    return point[0] / ex, point[1] / ey


def from_unit(
    point: tuple[float, float], dst: str, size: Size, resized: Size | None = None, rounded: bool = True
):
    """0–1 fractions as a point in convention ``dst`` (rounded when ``dst`` writes integers, unless not
    ``rounded``: boxes are kept exact, so a hit test never moves a point across an edge)."""
    convention = get(dst)
    ex, ey = convention.extent(size, resized)
    x, y = point[0] * ex, point[1] * ey
    if not rounded:
        return x, y
    if convention.integer:
        return _clamp(round(x), ex), _clamp(round(y), ey)
    return round(x, 4), round(y, 4)


def convert_point(point, src: str, dst: str, size: Size, resized: Size | None = None, rounded: bool = True):
    """A point from convention ``src`` to ``dst`` for an image of ``size`` (``resized`` by the processor)."""
    return from_unit(to_unit(point, src, size, resized), dst, size, resized, rounded)


def convert_box(box, src: str, dst: str, size: Size, resized: Size | None = None, rounded: bool = True):
    """A box ``[x1, y1, x2, y2]`` from convention ``src`` to ``dst``."""
    x1, y1 = convert_point(box[:2], src, dst, size, resized, rounded)
    x2, y2 = convert_point(box[2:], src, dst, size, resized, rounded)
    return [x1, y1, x2, y2]


def to_pixels(point, src: str, size: Size, resized: Size | None = None) -> tuple[float, float]:
    """A point in convention ``src`` as float pixels of the displayed image of ``size``: where scoring
    compares every point and box."""
    if get(src).relative is None and not get(src).resized:
        return float(point[0]), float(point[1])
    x, y = to_unit(point, src, size, resized)
    return x * size[0], y * size[1]


def box_to_pixels(box, src: str, size: Size, resized: Size | None = None) -> tuple[float, ...]:
    """A box ``[x1, y1, x2, y2]`` in convention ``src`` as float pixels of the image of ``size``."""
    return (*to_pixels(box[:2], src, size, resized), *to_pixels(box[2:], src, size, resized))


def xywh_to_xyxy(box) -> list[float]:
    """ScreenSpot v1/v2's ``[x, y, w, h]`` as ``[x1, y1, x2, y2]``."""
    x, y, w, h = box
    return [x, y, x + w, y + h]


def center(box) -> tuple[float, float]:
    """The center of ``[x1, y1, x2, y2]``."""
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def out_of_range(values, convention: str, size: Size, resized: Size | None = None) -> str | None:
    """Why points or boxes (flat ``x, y, x, y, ...``) do not fit ``convention`` on this image, or None."""
    ex, ey = get(convention).extent(size, resized)
    for i, value in enumerate(values):
        limit = ex if i % 2 == 0 else ey
        if not (isinstance(value, (int, float)) and math.isfinite(value) and -1e-6 <= value <= limit + 1e-6):
            axis = "x" if i % 2 == 0 else "y"
            return f"{axis}={value!r} is outside {convention}'s 0–{limit:g}" + (
                f" for a {size[0]}×{size[1]} image" if get(convention).relative is None else ""
            )
    return None


def resized_size(size: Size, min_pixels: int, max_pixels: int, factor: int = 32) -> Size:
    """The size Qwen's processors resize an image to (``smart_resize``): each side a multiple of ``factor``
    (32 for Qwen3-VL, 28 for Qwen2.5-VL), the area within ``[min_pixels, max_pixels]``, the aspect kept."""
    width, height = size
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return w, h


@dataclass(frozen=True)
class Bounds:
    """The processor's image-area bounds and side multiple, which ``resized-pixels`` depend on."""

    min_pixels: int
    max_pixels: int
    factor: int = 28  # Qwen2.5-VL's (14-pixel patches merged 2×2), the family that answers resized pixels

    def resized(self, size: Size) -> Size:
        """The size the processor resizes an image of ``size`` to."""
        return resized_size(size, self.min_pixels, self.max_pixels, self.factor)


def _clamp(value: int, extent: float) -> int:
    return min(max(value, 0), int(extent))
