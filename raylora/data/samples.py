"""Dataset samples read and checked: any format :mod:`.formats` reads → one :class:`Sample` each
(conversation, images, target box), and the screenshots themselves (header size, decoding).

A record, one per JSONL line (image paths are relative to the file; ``bbox`` is optional, in the same
0–1000 space as the answer)::

    {"messages": [{"role": "user", "content": [{"type": "image", "image": "shots/1.png"},
                                               {"type": "text", "text": "click the OK button"}]},
                  {"role": "assistant", "content": [{"type": "text", "text": "click(412, 230)"}]}],
     "bbox": [380, 200, 445, 260]}

Parquet files hold the same columns; ``messages`` may be nested columns or a JSON string, and an image may
be a path or the encoded image bytes. Turning a record into the model's inputs is
:mod:`raylora.train.encode`'s business.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError
from . import formats


@dataclass(frozen=True)
class Sample:
    """One validated conversation; ``images`` are paths or bytes in the order they appear."""

    messages: list[dict]
    images: list[Any]
    bbox: tuple[float, float, float, float] | None
    where: str
    categories: dict = field(default_factory=dict)
    """Fields per-category metrics split by (ScreenSpot's ``data_type``, ``platform``, ...)."""
    id: Any = None

    def prompt_messages(self) -> list[dict]:
        """The conversation up to (not including) its last assistant turn."""
        last = max(i for i, m in enumerate(self.messages) if m["role"] == "assistant")
        return self.messages[:last]

    def instruction(self) -> str:
        """The text of the user turn the last assistant turn answers."""
        return _text_of(self.prompt_messages()[-1]["content"])

    def answer(self) -> str:
        """The text of the last assistant turn."""
        last = [m for m in self.messages if m["role"] == "assistant"][-1]
        return _text_of(last["content"])


# -- reading -----------------------------------------------------------------------------------------


def read(
    path: str | Path,
    limit: int | None = None,
    fmt: str = "auto",
    coordinates: str = "qwen3vl",
    template: str = "click",
    spill_dir: Path | None = None,
    columns: dict | None = None,
) -> list[Sample]:
    """Read and validate the records of a dataset in any of :mod:`raylora.data.formats`; the first bad one
    raises DataError naming it. With ``spill_dir``, images given as bytes are written there (named by their
    content) and referenced by path, so a dataset of embedded screenshots is not held in memory."""
    records = []
    for where, row, root in formats.rows(str(path), fmt, coordinates, template, columns):
        if isinstance(row, DataError):
            raise row
        records.append(_record(row, where, root, coordinates, spill_dir))
        if limit is not None and len(records) >= limit:
            break
    if not records:
        raise DataError(str(path), "no records")
    return records


def problems(
    path: str | Path,
    fmt: str = "auto",
    coordinates: str = "qwen3vl",
    template: str = "click",
    most: int = 20,
    columns: dict | None = None,
) -> list[DataError]:
    """Every bad record of a dataset (up to ``most``), each naming its record: ``raylora validate``. Every
    image is opened and decoded in full (a truncated file, a text file named ``.png``, a zero-sized or
    oversized image)."""
    found: list[DataError] = []
    count = 0
    try:
        for where, row, root in formats.rows(str(path), fmt, coordinates, template, columns):
            count += 1
            try:
                if isinstance(row, DataError):
                    raise row
                for ref in _record(row, where, root, coordinates).images:
                    load_image(ref, where)
            except DataError as e:
                found.append(e)
                if len(found) >= most:
                    found.append(DataError(str(path), f"stopped after {most} bad records"))
                    break
    except DataError as e:  # the file itself: missing, empty, not a dataset
        return [e]
    return found


def _record(
    row: Any, where: str, root: Path, convention: str = "qwen3vl", spill_dir: Path | None = None
) -> Sample:
    if not isinstance(row, dict) or not isinstance(row.get("messages"), list) or not row["messages"]:
        raise DataError(where, 'a record needs "messages": a non-empty list of {"role", "content"} turns')
    images: list[Any] = []
    messages = []
    for i, message in enumerate(row["messages"]):
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant"):
            raise DataError(where, f"messages[{i}] needs a role of system, user or assistant")
        content = message.get("content")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        if not isinstance(content, list):
            raise DataError(where, f"messages[{i}].content must be a string or a list of items")
        items = []
        for j, item in enumerate(content):
            kind = item.get("type") if isinstance(item, dict) else None
            if kind == "text" and isinstance(item.get("text"), str):
                items.append({"type": "text", "text": item["text"]})
            elif kind == "image":
                ref = _image_ref(item.get("image"), root, f"{where}: messages[{i}].content[{j}]")
                images.append(_spilled(ref, spill_dir) if spill_dir is not None else ref)
                items.append({"type": "image"})
            else:
                raise DataError(where, f"messages[{i}].content[{j}] must be a text or image item")
        messages.append({"role": message["role"], "content": items})
    if not any(m["role"] == "assistant" and _text_of(m["content"]).strip() for m in messages):
        raise DataError(where, "no assistant turn with text: there is nothing to learn from this record")
    categories = {str(k): str(v) for k, v in (row.get("categories") or {}).items()}
    _check_range(row, messages, where, convention, images)
    return Sample(messages, images, _bbox(row.get("bbox"), where), where, categories, row.get("id"))


def _image_ref(value: Any, root: Path, where: str) -> Any:
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
    path = path if path.is_absolute() else root / path
    if not path.is_file():
        raise DataError(where, f"image not found: {path}")
    return str(path)


def _spilled(ref: Any, folder: Path) -> Any:
    """Image bytes as a file named by their content (written once), so records hold a path, not pixels."""
    if not isinstance(ref, bytes):
        return ref
    import hashlib
    import os

    target = folder / hashlib.sha256(ref).hexdigest()[:32]
    if not target.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(ref)
        os.replace(tmp, target)
    return str(target)


def _check_range(row: dict, messages: list[dict], where: str, convention: str, images: list) -> None:
    """An answer point or box outside the convention's range is the pixels-vs-relative mix-up: relative
    conventions are checked against their range, ``pixels`` against the first image's size (read from its
    header). ``resized-pixels`` depend on the processor's bounds and are not checked here."""
    from . import actions, coordinates

    chosen = coordinates.get(convention)
    if chosen.resized or (chosen.relative is None and not images):
        return
    answer = [m for m in messages if m["role"] == "assistant"][-1]
    action = actions.parse(_text_of(answer["content"]))
    point = action.point if action is not None else None
    values = [*(point or ()), *(row.get("bbox") or ())]
    if not values:
        return
    size = (1, 1) if chosen.relative is not None else image_size(images[0], where)
    problem = coordinates.out_of_range(values, convention, size)
    if problem:
        raise DataError(where, f"{problem}: is data.coordinates ({convention}) the convention of this data?")


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
    import os
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


def _bbox(value: Any, where: str) -> tuple[float, float, float, float] | None:
    if value is None:
        return None
    ok = isinstance(value, list) and len(value) == 4 and all(isinstance(v, (int, float)) for v in value)
    if not ok or not (value[0] <= value[2] and value[1] <= value[3]):
        raise DataError(where, f"bbox must be [x0, y0, x1, y1] with x0 <= x1 and y0 <= y1, got {value!r}")
    return tuple(float(v) for v in value)


def _text_of(content: list[dict]) -> str:
    return "".join(item["text"] for item in content if item["type"] == "text")


MAX_IMAGE_PIXELS = 50_000_000
"""The largest screenshot accepted (50 megapixels; ScreenSpot-Pro's largest are ~20). Larger ones are
refused by name rather than decoded: the processor resizes to ``data.image.max_pixels`` anyway, and a
196-megapixel file costs gigabytes to decode in every loader worker."""


def image_size(ref: Any, where: str = "image") -> tuple[int, int]:
    """An image's (width, height) from its header alone; a DataError naming ``where`` when it is not an
    image, is empty, or is larger than :data:`MAX_IMAGE_PIXELS`."""
    with _opened(ref, where) as image:
        return image.size


def load_image(ref: Any, where: str = "image"):
    """A path or encoded bytes → an RGB PIL image (a DataError naming ``where`` when it cannot be decoded)."""
    with _opened(ref, where) as image:
        try:
            return image.convert("RGB")
        except (OSError, ValueError, SyntaxError) as e:  # truncated or corrupt pixel data
            raise DataError(where, f"cannot decode image {_name(ref)}: {e}") from None


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
