"""The dataset formats GUI-agent teams already have, read as they are and turned into chat rows.

    chat            transformers chat records: ``messages`` with typed content items (JSONL, Parquet)
    sharegpt        LLaMA-Factory / ms-swift: ``messages`` (role/content) or ``conversations`` (from/value)
                    with top-level ``images`` and ``<image>`` placeholders; a JSON array or JSONL; or an entry
                    of a LLaMA-Factory ``dataset_info.json`` given as ``path/to/dataset_info.json#NAME``
    qwen            Qwen's fine-tuning scripts: ``image`` (a path or a list) + ``conversations``
    screenspot      ScreenSpot v1/v2 annotations: ``img_filename``, ``bbox`` [x, y, w, h] pixels,
                    ``instruction``, ``data_type``, ``data_source``
    screenspot-pro  ScreenSpot-Pro: ``img_filename``, ``bbox`` [x1, y1, x2, y2] pixels, ``img_size``,
                    ``instruction``, ``ui_type``, ``platform``, ``application``, ``group``
    alpaca          LLaMA-Factory alpaca: ``instruction`` / ``input`` / ``output`` (+ ``images``, ``system``,
                    ``history``, ``tools``), or a ``dataset_info.json`` entry with ``formatting: alpaca``
    gui-actor       GUI-Actor: ``image`` + ``conversations`` with ``bbox_gt`` (0–1) and
                    ``<ACTION_PLACEHOLDER>``; the box is the reference, the answer the template's
    hf              a Hugging Face ``datasets`` dataset: a folder written by ``save_to_disk``, a folder of
                    Parquet or Arrow shards, an ``.arrow`` file, or a hub id ``hf://ORG/NAME[#SPLIT]``
                    (through ``datasets.load_dataset``, cached); its records are any format above, detected

Any container is read a batch at a time. ``columns`` renames a dataset's columns to the names a format
expects (``{"img_filename": "image_path"}``: the format's ``img_filename`` is the dataset's ``image_path``).

Tool turns (sharegpt ``function_call`` / ``observation`` + ``tools``, ms-swift ``tool_call`` /
``tool_response``, OpenAI ``tool_calls``), a top-level ``system``, and image items spelled the OpenAI,
transformers or base64 way are read by :mod:`.readers` and :mod:`.tools`, GUI-Actor by :mod:`.guiactor`;
video is refused by record.

Every format becomes the ``chat`` row :func:`raylora.data.samples.read` validates, with ``categories`` (the
fields per-category metrics split by). Grounding annotations become a prompt and an answer through the
answer template (:mod:`raylora.data.templates`). A format read wrongly fails loudly: a placeholder count
that does not match the images, a box outside its image, a record of another format — each names the
record (``file.jsonl:LINE``, ``file.json[INDEX]``, ``file.parquet:row N``).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import DataError
from . import coordinates, guiactor, readers, templates, tools

FORMATS = ("chat", "sharegpt", "qwen", "screenspot", "screenspot-pro", "alpaca", "gui-actor", "hf")
PLACEHOLDER = "<image>"

# LLaMA-Factory's sharegpt defaults (data/README.md): the columns and role tags a dataset_info entry may
# override.
_SHAREGPT_COLUMNS = {"messages": "conversations", "images": "images", "system": None}
_SHAREGPT_TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "system_tag": "system",
}
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def rows(
    ref: str, fmt: str = "auto", coords: str = "qwen3vl", template: str = "click", columns: dict | None = None
) -> Iterator:
    """``(where, chat row, root)`` for every record of dataset ``ref`` read as ``fmt`` (``auto``: detected
    from the first record); ``root`` is the folder relative image paths are read from."""
    path, entry = _split_entry(ref)
    options: dict = {}
    if entry is not None:
        path, fmt, options = _dataset_info(path, entry)
    if ref.startswith("hf://") or (fmt == "hf" and not path.exists()):
        raw, root = _hub_rows(ref), Path.cwd()
    else:
        raw, root = _raw_rows(path), path if path.is_dir() else path.parent
    if columns:
        raw = _renamed(raw, columns)
    first = next(raw, None)
    if first is None:
        raise DataError(str(path), "no records (the file is empty)")
    where, row = first
    if isinstance(row, DataError):
        raise row
    fmt = detect(row, where) if fmt in ("auto", "hf") else fmt
    convert = _CONVERTERS[fmt]
    for where, row in itertools.chain([first], raw):
        if isinstance(row, DataError):
            yield where, row, root
            continue
        try:
            yield where, convert(row, where, root, coords, template, **options), root
        except DataError as e:  # the caller decides: stop at the first, or report them all
            yield where, e, root


def detect(row: Any, where: str) -> str:
    """The format a record is written in, from its keys (a DataError naming the record otherwise)."""
    if isinstance(row, dict):
        if "img_filename" in row and "bbox" in row:
            return "screenspot-pro" if "img_size" in row or "ui_type" in row else "screenspot"
        if guiactor.detected(row):
            return "gui-actor"
        if "output" in row and ("instruction" in row or "input" in row):
            return "alpaca"
        if "conversations" in row:
            return "qwen" if "image" in row else "sharegpt"
        if "messages" in row:
            messages = row["messages"] if isinstance(row["messages"], list) else []
            placed = any(
                isinstance(m, dict) and isinstance(m.get("content"), str) and PLACEHOLDER in m["content"]
                for m in messages
            )
            return "sharegpt" if "images" in row or placed else "chat"
    keys = ", ".join(sorted(row)) if isinstance(row, dict) else type(row).__name__
    raise DataError(
        where,
        f"cannot tell the data format from a record with {keys}; give data.format "
        f"({', '.join(FORMATS)}) or map its columns with data.columns",
    )


# -- files -------------------------------------------------------------------------------------------


def _split_entry(ref: str) -> tuple[Path, str | None]:
    if "#" in ref and ref.split("#", 1)[0].endswith("dataset_info.json"):
        path, entry = ref.split("#", 1)
        return Path(path).expanduser(), entry
    return Path(ref).expanduser(), None


def _dataset_info(path: Path, entry: str) -> tuple[Path, str, dict]:
    """A LLaMA-Factory ``dataset_info.json`` entry: its file, its format and its column and tag names."""
    if not path.is_file():
        raise DataError(str(path), "no such file")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(str(path), f"not valid JSON ({e})") from None
    if entry not in info:
        raise DataError(f"{path}#{entry}", f"no such entry (entries: {', '.join(sorted(info))})")
    spec = info[entry]
    formatting = spec.get("formatting", "alpaca")
    if formatting not in ("sharegpt", "alpaca"):
        raise DataError(f"{path}#{entry}", f"formatting {formatting!r} is not supported (sharegpt or alpaca)")
    if "file_name" not in spec:
        raise DataError(f"{path}#{entry}", "needs file_name (hub datasets: download them first)")
    if formatting == "alpaca":
        return path.parent / spec["file_name"], "alpaca", {"columns": spec.get("columns") or {}}
    options = {"columns": spec.get("columns") or {}, "tags": spec.get("tags") or {}}
    return path.parent / spec["file_name"], "sharegpt", options


def _raw_rows(path: Path) -> Iterator[tuple[str, Any]]:
    if path.is_dir():
        yield from _folder_rows(path)
        return
    if not path.is_file():
        raise DataError(str(path), "no such data file")
    if path.suffix == ".parquet":
        yield from _parquet_rows(path)
        return
    if path.suffix == ".arrow":
        yield from _table_rows(_arrow_batches(path), f"{path}:row ")
        return
    if path.suffix == ".json":
        text = _text(path)
        if text.lstrip().startswith("["):
            try:
                records = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{path}:{e.lineno}", f"malformed JSON ({e.msg} at column {e.colno})"
                ) from None
            for index, row in enumerate(records):
                yield f"{path}[{index}]", row
            return
    yield from _jsonl_rows(path)


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}", f"not UTF-8 ({e.reason} at byte {e.start})") from None


def _jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield where, DataError(where, f"not UTF-8 ({e.reason} at byte {e.start})")
                continue
            if not line.strip():
                continue
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as e:
                yield where, DataError(where, f"malformed JSON ({e.msg} at column {e.colno})")


def _parquet_rows(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a broken file
        raise DataError(str(path), f"cannot read Parquet: {e}") from None
    yield from _table_rows(parquet.iter_batches(batch_size=64), f"{path}:row ")


def _folder_rows(folder: Path) -> Iterator[tuple[str, Any]]:
    """A ``save_to_disk`` folder (its ``state.json`` lists the Arrow files), or a folder of shards."""
    if (folder / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in folder.iterdir() if (p / "state.json").is_file())
        raise DataError(str(folder), f"a DatasetDict: name one split's folder ({', '.join(splits)})")
    state = folder / "state.json"
    if state.is_file():
        try:
            files = [folder / f["filename"] for f in json.loads(state.read_text())["_data_files"]]
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(str(state), f"not a datasets state.json ({e})") from None
    else:
        files = sorted(p for p in folder.iterdir() if p.suffix in (".parquet", ".arrow"))
        if not files:
            raise DataError(str(folder), "a folder without save_to_disk's state.json or Parquet/Arrow shards")
    number = 0
    for file in files:
        for where, row in _raw_rows(file):
            number += 1
            yield (f"{folder}:row {number}" if len(files) > 1 or state.is_file() else where), row


def _arrow_batches(path: Path):
    import pyarrow as pa

    try:
        reader = pa.ipc.open_stream(pa.memory_map(str(path)))  # what save_to_disk writes
    except pa.ArrowInvalid:
        try:
            reader = pa.ipc.open_file(pa.memory_map(str(path)))
        except pa.ArrowInvalid as e:
            raise DataError(str(path), f"not an Arrow file ({e})") from None
        return (reader.get_batch(i) for i in range(reader.num_record_batches))
    return iter(reader)


def _hub_rows(ref: str) -> Iterator[tuple[str, Any]]:
    """A dataset on the Hugging Face hub, ``hf://ORG/NAME[#SPLIT]`` (split ``train`` by default), loaded
    through ``datasets`` (downloaded once into its cache)."""
    name, _, split = ref.removeprefix("hf://").partition("#")
    try:
        import datasets
    except ImportError:
        raise DataError(
            ref, "reading a hub dataset needs the datasets package: pip install datasets"
        ) from None
    try:
        dataset = datasets.load_dataset(name, split=split or "train")
    except Exception as e:  # offline, unknown name, unknown split: datasets raises many types
        raise DataError(ref, f"cannot load the hub dataset: {str(e).splitlines()[0]}") from None
    yield from _table_rows(dataset.data.table.to_batches(max_chunksize=64), f"{ref}:row ")


def _renamed(raw: Iterator, columns: dict) -> Iterator[tuple[str, Any]]:
    for where, row in raw:
        if isinstance(row, dict):
            missing = [source for source in columns.values() if source not in row]
            if missing:
                row = DataError(where, f"no column {missing[0]!r} (columns: {', '.join(sorted(row))})")
            else:
                row = {**row, **{target: row[source] for target, source in columns.items()}}
        yield where, row


def _table_rows(batches, prefix: str) -> Iterator[tuple[str, Any]]:
    """Rows of Arrow record batches, a batch at a time (so embedded screenshots are never all in memory);
    ``messages``/``conversations`` stored as JSON strings are parsed."""
    number = 0
    for batch in batches:
        for row in batch.to_pylist():
            number += 1
            where = f"{prefix}{number}"
            for key in ("messages", "conversations"):
                if isinstance(row.get(key), str):
                    try:
                        row[key] = json.loads(row[key])
                    except json.JSONDecodeError as e:
                        row = DataError(where, f"{key} is not valid JSON ({e.msg})")
                        break
            yield where, row


# -- formats -----------------------------------------------------------------------------------------


def _chat(row: Any, where: str, root: Path, coords: str, template: str) -> dict:
    return readers.chat_items(row, where) if isinstance(row, dict) else row


def _sharegpt(
    row: Any, where: str, root: Path, coords: str, template: str, columns=None, tags=None, image_key=None
) -> dict:
    if not isinstance(row, dict):
        raise DataError(where, "a sharegpt record is a JSON object")
    readers.refuse_video(row, where)
    columns = {**_SHAREGPT_COLUMNS, **(columns or {})}
    key = columns["messages"] if columns["messages"] in row else "messages"
    turns = row.get(key)
    if not isinstance(turns, list) or not turns:
        raise DataError(where, f'a sharegpt record needs "{key}": a non-empty list of turns')
    tag = {**_SHAREGPT_TAGS, **(tags or {})}
    if isinstance(turns[0], dict) and "role" in turns[0]:
        tag = {**tag, "role_tag": "role", "content_tag": "content"}
    images = row.get(image_key or columns["images"], row.get("images")) or []
    images = [images] if isinstance(images, (str, dict)) else list(images)
    images = [readers.image_value(image, where) for image in images]
    messages = []
    system = columns.get("system") or "system"  # a top-level system, named by dataset_info or not
    if row.get(system) and not (isinstance(turns[0], dict) and turns[0].get(tag["role_tag"]) == "system"):
        messages.append({"role": "system", "content": str(row[system])})
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise DataError(where, f"{key}[{i}] must be an object")
        said = turn.get(tag["role_tag"])
        named = {tag["user_tag"]: "user", tag["assistant_tag"]: "assistant", tag["system_tag"]: "system"}
        named.update({tag.get("function_tag", "function_call"): "tool_call"})
        named.update({tag.get("observation_tag", "observation"): "tool"})
        role = named.get(said) or _ROLES.get(said) or tools.TOOL_ROLES.get(said)
        if role is None:
            raise DataError(
                where, f"{key}[{i}] has role {said!r} (user, assistant, system, or a tool call/response)"
            )
        text = turn.get(tag["content_tag"])
        if not isinstance(text, str):
            raise DataError(where, f"{key}[{i}].{tag['content_tag']} must be text")
        messages.append({"role": role, "content": text})
    messages = tools.with_tool_turns(messages, row.get(columns.get("tools") or "tools"), where)
    extra = _extra(row)
    if row.get("objects"):
        extra["bbox"] = _place_objects(messages, row["objects"], images, root, where, coords, template)
    return {**_with_images(messages, images, where), **extra}


def _place_objects(
    messages: list[dict], objects: Any, images: list, root: Path, where: str, coords: str, template: str
) -> list[float]:
    """ms-swift grounding: ``<ref-object>`` in the text becomes ``objects.ref`` (in order) and ``<bbox>``
    the template's answer at the center of ``objects.bbox`` (in order); the boxes are in ``bbox_type``'s
    convention (``real``: pixels, ``norm1000``: 0–1000) or, without one, in ``data.coordinates``. Returns
    the last answered box in the answer's convention, for click accuracy."""
    refs, boxes = (objects.get(k) if isinstance(objects, dict) else None for k in ("ref", "bbox"))
    kind = objects.get("bbox_type") if isinstance(objects, dict) else None
    source = {"real": "pixels", "norm1000": "qwen3vl", None: coords}.get(kind)
    if not isinstance(refs, list) or not isinstance(boxes, list) or source is None:
        raise DataError(where, 'objects needs "ref" and "bbox" lists (bbox_type real or norm1000)')
    refs, boxes = [str(r) for r in refs], list(boxes)
    if "resized-pixels" in (source, templates.get(template).answer_convention(coords)):
        raise DataError(where, "objects cannot be placed in resized-pixels; give bbox_type real or norm1000")
    chosen = templates.get(template)
    answer = chosen.answer_convention(coords)
    size = None
    placed = None
    for message in messages:
        while "<ref-object>" in message["content"]:
            if not refs:
                raise DataError(where, "more <ref-object> placeholders than objects.ref")
            message["content"] = message["content"].replace("<ref-object>", refs.pop(0), 1)
        while "<bbox>" in message["content"]:
            if not boxes:
                raise DataError(where, "more <bbox> placeholders than objects.bbox")
            box = boxes.pop(0)
            if not (
                isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)
            ):
                raise DataError(where, f"objects.bbox must hold [x1, y1, x2, y2] boxes, got {box!r}")
            if size is None:
                size = _first_image_size(images, root, where)
            problem = coordinates.out_of_range(box, source, size)
            if problem:
                raise DataError(where, f"objects.bbox {box}: {problem}")
            placed = coordinates.convert_box(box, source, answer, size)
            point = coordinates.convert_point(coordinates.center(box), source, answer, size)
            message["content"] = message["content"].replace("<bbox>", chosen.answer(point), 1)
    if placed is None:
        raise DataError(where, "objects given but no <bbox> placeholder in the text")
    return placed


def _first_image_size(images: list, root: Path, where: str) -> tuple[int, int]:
    import io

    if not images:
        raise DataError(where, "objects need an image to place their boxes on")
    ref = images[0]
    if isinstance(ref, dict):
        ref = ref.get("bytes") or ref.get("path")
    if isinstance(ref, (bytes, bytearray)):
        return _image_size(io.BytesIO(ref), where, "(bytes)")
    return _image_size(root / str(ref), where, str(ref))


def _qwen(row: Any, where: str, root: Path, coords: str, template: str) -> dict:
    return _sharegpt(row, where, root, coords, template, image_key="image")


def _alpaca(row: Any, where: str, root: Path, coords: str, template: str, columns=None) -> dict:
    return _sharegpt(readers.alpaca(row, where, columns), where, root, coords, template)


def _gui_actor(row: Any, where: str, root: Path, coords: str, template: str) -> dict:
    read = guiactor.read(row, where, root, coords, template)
    return {**_qwen(read["record"], where, root, coords, template), "bbox": read["bbox"]}


def _with_images(messages: list[dict], images: list, where: str) -> dict:
    """Chat messages with typed items: ``<image>`` placeholders become image items in order; with no
    placeholder at all, the images go before the first user text."""
    placed = sum(m["content"].count(PLACEHOLDER) for m in messages)
    if placed and placed != len(images):
        raise DataError(where, f"{placed} {PLACEHOLDER} placeholder(s) but {len(images)} image(s)")
    queue = list(images)
    # With no placeholder the images go to the first user turn, or (ms-swift's assistant-only
    # pre-training records) to the first turn there is.
    host = next((m for m in messages if m["role"] == "user"), None) or next(
        (m for m in messages if m["role"] != "system"), None
    )
    out = []
    for message in messages:
        items: list[dict] = []
        parts = message["content"].split(PLACEHOLDER)
        for k, part in enumerate(parts):
            if k:
                items.append({"type": "image", "image": queue.pop(0)})
            text = part.strip() if len(parts) > 1 else part  # whitespace around a placeholder is layout
            if text.strip():
                items.append({"type": "text", "text": text})
        if not placed and queue and message is host:
            items = [{"type": "image", "image": ref} for ref in queue] + items
            queue = []
        out.append({"role": message["role"], "content": items})
    return {"messages": out}


def _screenspot(row: Any, where: str, root: Path, coords: str, template: str, pro: bool = False) -> dict:
    fields = ("img_filename", "bbox", "instruction")
    if not isinstance(row, dict) or any(f not in row for f in fields):
        raise DataError(where, f"a ScreenSpot record needs {', '.join(fields)}")
    box = row["bbox"]
    if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
        raise DataError(where, f"bbox must be four numbers, got {box!r}")
    box = list(box) if pro else coordinates.xywh_to_xyxy(box)
    image = _image_path(row["img_filename"], root, where)
    size = tuple(row["img_size"]) if pro and row.get("img_size") else _image_size(image, where)
    problem = coordinates.out_of_range(box, "pixels", size)
    if problem or box[0] > box[2] or box[1] > box[3]:
        raise DataError(where, f"bbox {row['bbox']} does not fit the {size[0]}×{size[1]} image ({problem})")
    chat = templates.grounding_row(str(image), row["instruction"], box, size, template, coords)
    keep = ("ui_type", "platform", "application", "group") if pro else ("data_type", "data_source")
    chat["categories"] = {k: str(row[k]) for k in keep if row.get(k) is not None}
    if row.get("id") is not None:
        chat["id"] = row["id"]
    return chat


def _screenspot_pro(row: Any, where: str, root: Path, coords: str, template: str) -> dict:
    return _screenspot(row, where, root, coords, template, pro=True)


def _image_path(name: Any, root: Path, where: str) -> Path:
    if not isinstance(name, str) or not name:
        raise DataError(where, "img_filename must be a file name")
    for folder in (root, root / "images", root.parent / "images"):  # ScreenSpot ships images beside
        if (folder / name).is_file():
            return folder / name
    raise DataError(where, f"image not found: {root / name}")


def _image_size(source, where: str, name: str | None = None) -> tuple[int, int]:
    """An image's (width, height) from its header; ``source`` a path or a file object."""
    from PIL import Image

    try:
        with Image.open(source) as image:
            return image.size
    except Exception as e:  # PIL raises many types for a broken file
        raise DataError(where, f"cannot read image {name or source}: {e}") from None


def _extra(row: dict) -> dict:
    return {key: row[key] for key in ("bbox", "id", "categories") if key in row}


_CONVERTERS = {
    "chat": _chat,
    "sharegpt": _sharegpt,
    "qwen": _qwen,
    "screenspot": _screenspot,
    "screenspot-pro": _screenspot_pro,
    "alpaca": _alpaca,
    "gui-actor": _gui_actor,
}
