"""Record layouts read on top of :mod:`.formats`' chat rows: LLaMA-Factory alpaca, typed image items in
their several spellings, and video (refused, by record). Tool turns are :mod:`.tools`' business.

    alpaca      LLaMA-Factory ``instruction`` / ``input`` / ``output`` (+ ``system``, ``history``, ``images``,
                ``tools``), also through a ``dataset_info.json`` entry's ``formatting: alpaca`` + ``columns``
    images      OpenAI ``{"type": "image_url", "image_url": {"url": ...}}`` (a path, an http(s) URL or a
                ``data:`` URI), transformers ``{"type": "image", "path" | "url" | "image": ...}``, and
                ``{"bytes": "<base64>"}`` → the ``{"type": "image", "image": ...}`` items samples read

Video is not trained on yet: a record with ``videos``, a ``<video>`` placeholder or a video item is refused,
naming the record, rather than left in the prompt as text.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from ..errors import DataError
from . import tools

ALPACA_COLUMNS = {
    "prompt": "instruction",
    "query": "input",
    "response": "output",
    "history": "history",
    "system": "system",
    "images": "images",
    "videos": "videos",
    "tools": "tools",
}
"""LLaMA-Factory's alpaca column names (its data/README.md), which a dataset_info entry may rename."""


def refuse_video(row: dict, where: str) -> None:
    """A DataError naming the record when it carries video (a ``videos`` column, ``<video>``, an item)."""
    if row.get("videos") or row.get("video"):
        raise DataError(where, "video is not supported yet (this record has videos); remove or filter it")
    for turns in (row.get("messages"), row.get("conversations")):
        for turn in turns if isinstance(turns, list) else []:
            content = turn.get("content", turn.get("value")) if isinstance(turn, dict) else None
            if isinstance(content, str) and "<video>" in content:
                raise DataError(where, "video is not supported yet (a <video> placeholder); remove it")
            for item in content if isinstance(content, list) else []:
                if isinstance(item, dict) and (item.get("type") == "video" or "video" in item):
                    raise DataError(where, "video is not supported yet (a video item); remove it")


# -- alpaca ------------------------------------------------------------------------------------------


def alpaca(row: Any, where: str, columns: dict | None = None) -> dict:
    """An alpaca record as a sharegpt-style record (``messages`` of role/content, ``images``, ``tools``)."""
    if not isinstance(row, dict):
        raise DataError(where, "an alpaca record is a JSON object")
    names = {**ALPACA_COLUMNS, **(columns or {})}
    refuse_video({"videos": row.get(names["videos"])}, where)
    prompt, query, response = (row.get(names[k]) for k in ("prompt", "query", "response"))
    if not isinstance(response, str) or not (isinstance(prompt, str) or isinstance(query, str)):
        raise DataError(
            where, f'an alpaca record needs "{names["prompt"]}" (and/or "{names["query"]}") and '
            f'"{names["response"]}" as text'
        )  # fmt: skip
    messages = []
    for i, pair in enumerate(row.get(names["history"]) or []):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
            raise DataError(where, f"{names['history']}[{i}] must be [instruction, response]")
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    user = "\n".join(t for t in (prompt, query) if isinstance(t, str) and t)
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": response}]
    out = {"messages": messages, "images": row.get(names["images"]) or []}
    for key in ("system", "tools"):
        if row.get(names[key]):
            out[key] = row[names[key]]
    return {**out, **{k: row[k] for k in ("bbox", "id", "categories") if k in row}}


# -- typed image items -------------------------------------------------------------------------------


def chat_items(row: dict, where: str) -> dict:
    """A chat record whose image items are in any spelling (``image_url``, ``path``, ``url``, base64
    ``bytes``) with ``{"type": "image", "image": ...}`` items, and tool messages as plain turns."""
    refuse_video(row, where)
    messages = row.get("messages")
    if not isinstance(messages, list):
        return row
    messages = tools.chat_tool_messages(messages, where)
    out = []
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            items = [
                _image_item(item, f"{where}: messages[{i}].content[{j}]") for j, item in enumerate(content)
            ]
            message = {**message, "content": items}
        out.append(message)
    if row.get("system") and not any(isinstance(m, dict) and m.get("role") == "system" for m in out):
        out = [{"role": "system", "content": str(row["system"])}, *out]
    if row.get("tools"):
        out = tools.with_tools(out, row["tools"], where)
    return {**row, "messages": out}


def _image_item(item: Any, where: str) -> Any:
    if not isinstance(item, dict):
        return item
    kind = item.get("type")
    if kind == "image_url" or (kind is None and "image_url" in item):
        url = item.get("image_url")
        url = url.get("url") if isinstance(url, dict) else url
        return {"type": "image", "image": image_value(url, where)}
    if kind == "image" or (kind is None and "image" in item):
        value = item.get("image")
        if value is None and isinstance(item.get("bytes"), str):
            value = base64_image(item["bytes"], where)
        if value is None:
            value = item.get("path") or item.get("url") or item.get("bytes")
        if value is None:
            raise DataError(where, 'an image item needs "image", "path", "url" or "bytes"')
        return {"type": "image", "image": image_value(value, where)}
    return item


def image_value(value: Any, where: str) -> Any:
    """A path, URL or ``data:`` URI as it is; ``{"bytes": base64 text}`` and ``{"path": ...}`` unwrapped."""
    if isinstance(value, dict):
        if isinstance(value.get("bytes"), str):
            return base64_image(value["bytes"], where)
        if value.get("bytes") is None and isinstance(value.get("path"), str):
            return value["path"]
        if value.get("bytes") is None and isinstance(value.get("url"), str):
            return value["url"]
    return value


def base64_image(text: str, where: str) -> bytes:
    """The bytes of an image written as base64 text (a bare payload or a ``data:`` URI)."""
    payload = text.partition(",")[2] if text.startswith("data:") else text
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise DataError(where, f"image bytes that are not valid base64 ({e})") from None
