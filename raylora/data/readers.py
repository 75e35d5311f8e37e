"""Record layouts read on top of :mod:`.formats`' chat rows: LLaMA-Factory alpaca, tool turns, typed image
items in their several spellings, GUI-Actor grounding records, and video (refused, by record).

    alpaca      LLaMA-Factory ``instruction`` / ``input`` / ``output`` (+ ``system``, ``history``, ``images``,
                ``tools``), also through a ``dataset_info.json`` entry's ``formatting: alpaca`` + ``columns``
    tool turns  sharegpt ``function_call`` / ``observation`` (+ the ``tools`` column), ms-swift
                ``tool_call`` / ``tool_response`` (or ``tool``), OpenAI ``tool_calls`` / ``tool`` messages:
                rendered as Qwen's chat template renders tool use — a call as the assistant's
                ``<tool_call>{json}</tool_call>``, responses as a user turn of ``<tool_response>`` blocks,
                the tools in the system turn
    images      OpenAI ``{"type": "image_url", "image_url": {"url": ...}}`` (a path, an http(s) URL or a
                ``data:`` URI), transformers ``{"type": "image", "path" | "url" | "image": ...}``, and
                ``{"bytes": "<base64>"}`` → the ``{"type": "image", "image": ...}`` items samples read
    gui-actor   ``image`` + ``conversations`` whose assistant turn holds ``<ACTION_PLACEHOLDER>`` (or a
                pyautogui click) and ``bbox_gt`` [x1, y1, x2, y2] in 0–1 of the image (pixels when a value is
                above 1): the box is the record's reference and the answer is the template's, at its center

Video is not trained on yet: a record with ``videos``, a ``<video>`` placeholder or a video item is refused,
naming the record, rather than left in the prompt as text.
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from typing import Any

from ..errors import DataError
from . import coordinates, templates

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
TOOL_ROLES = {
    "function_call": "tool_call",
    "tool_call": "tool_call",
    "observation": "tool",
    "tool_response": "tool",
    "tool": "tool",
}
"""Turn roles of sharegpt (LLaMA-Factory's function/observation tags) and ms-swift that carry tool use."""
ACTION_PLACEHOLDER = "<ACTION_PLACEHOLDER>"
_TOOLS_INTRO = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
_TOOLS_OUTRO = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": '
    "<args-json-object>}\n</tool_call>"
)


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


# -- tool turns --------------------------------------------------------------------------------------


def tool_call_text(content: Any, where: str) -> str:
    """A function call (a JSON string or object ``{"name", "arguments"}``, or a list of them) as Qwen's
    template writes the assistant's tool calls."""
    calls = content
    if isinstance(content, str):
        try:
            calls = json.loads(content)
        except ValueError:
            raise DataError(
                where, f"a tool call must be JSON {{name, arguments}}, got {content[:60]!r}"
            ) from None
    calls = calls if isinstance(calls, list) else [calls]
    blocks = []
    for call in calls:
        call = call.get("function", call) if isinstance(call, dict) else call
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise DataError(where, f"a tool call needs a name and arguments, got {call!r}")
        arguments = call.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                pass  # kept as the string it is
        body = json.dumps({"name": call["name"], "arguments": arguments}, ensure_ascii=False)
        blocks.append(f"<tool_call>\n{body}\n</tool_call>")
    return "\n".join(blocks)


def with_tool_turns(messages: list[dict], tools: Any, where: str) -> list[dict]:
    """Messages whose roles may include ``tool_call`` and ``tool`` (text content) as system/user/assistant
    turns: calls become assistant text, consecutive responses one user turn, ``tools`` the system's end."""
    out: list[dict] = []
    for message in messages:
        if message["role"] == "tool_call":
            out.append({"role": "assistant", "content": tool_call_text(message["content"], where)})
        elif message["role"] == "tool":
            _respond(out, message["content"])
        else:
            out.append(dict(message))
    out = _unmarked(out)
    return _with_tools(out, tools, where) if tools else out


def chat_tool_messages(messages: list, where: str) -> list:
    """Chat messages with tool use — OpenAI ``tool_calls`` and ``tool`` messages, ms-swift ``tool_call`` /
    ``tool_response`` roles — as plain turns (see :func:`with_tool_turns`); other messages unchanged."""

    def role(m: Any) -> str | None:
        if not isinstance(m, dict):
            return None
        return "tool_call" if m.get("tool_calls") else TOOL_ROLES.get(m.get("role"))

    if not any(role(m) for m in messages):
        return messages
    out: list = []
    for message in messages:
        if role(message) == "tool_call":
            text = _plain(message.get("content")) if message.get("tool_calls") else ""
            call = tool_call_text(message.get("tool_calls") or message.get("content"), where)
            out.append({"role": "assistant", "content": f"{text}\n{call}" if text else call})
        elif role(message) == "tool":
            _respond(out, _plain(message.get("content")))
        else:
            out.append(message)
    return _unmarked(out)


def _respond(out: list, text: str) -> None:
    """A tool response appended as Qwen's template renders it: consecutive ones share one user turn."""
    block = f"<tool_response>\n{text}\n</tool_response>"
    if out and isinstance(out[-1], dict) and out[-1].get("_responses"):
        out[-1]["content"] += "\n" + block
    else:
        out.append({"role": "user", "content": block, "_responses": True})


def _unmarked(messages: list) -> list:
    return [{k: v for k, v in m.items() if k != "_responses"} if isinstance(m, dict) else m for m in messages]


def _plain(content: Any) -> str:
    if isinstance(content, list):
        return "".join(i.get("text", "") for i in content if isinstance(i, dict))
    return content if isinstance(content, str) else ""


def _with_tools(messages: list[dict], tools: Any, where: str) -> list[dict]:
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except ValueError:
            raise DataError(where, "tools must be a JSON list of function signatures") from None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise DataError(where, "tools must be a list of function signatures (objects)")
    lines = "".join(
        "\n" + json.dumps(t if "type" in t else {"type": "function", "function": t}) for t in tools
    )
    block = _TOOLS_INTRO + lines + _TOOLS_OUTRO
    if messages and messages[0]["role"] == "system":
        first = messages[0]["content"]
        if isinstance(first, list):
            return [
                {"role": "system", "content": [*first, {"type": "text", "text": "\n\n" + block}]},
                *messages[1:],
            ]
        return [{"role": "system", "content": first + "\n\n" + block}, *messages[1:]]
    return [{"role": "system", "content": block}, *messages]


# -- typed image items -------------------------------------------------------------------------------


def chat_items(row: dict, where: str) -> dict:
    """A chat record whose image items are in any spelling (``image_url``, ``path``, ``url``, base64
    ``bytes``) with ``{"type": "image", "image": ...}`` items, and tool messages as plain turns."""
    refuse_video(row, where)
    messages = row.get("messages")
    if not isinstance(messages, list):
        return row
    messages = chat_tool_messages(messages, where)
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
        out = _with_tools(out, row["tools"], where)
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


# -- GUI-Actor ---------------------------------------------------------------------------------------


def is_gui_actor(row: Any) -> bool:
    """Whether a record is GUI-Actor's: a ``bbox_gt`` on the record or a turn, or ``<ACTION_PLACEHOLDER>``."""
    if not isinstance(row, dict) or not isinstance(row.get("conversations"), list):
        return False
    if "bbox_gt" in row:
        return True
    return any(
        isinstance(t, dict) and ("bbox_gt" in t or ACTION_PLACEHOLDER in str(t.get("value", "")))
        for t in row["conversations"]
    )


def gui_actor(row: dict, where: str, root: Path, coords: str, template: str) -> dict:
    """A GUI-Actor record as a chat row: its answer turn rendered in ``template`` at the center of
    ``bbox_gt``, which becomes the record's ``bbox`` in the answer's convention."""
    refuse_video(row, where)
    turns = row["conversations"]
    answer_at = _answer_turn(turns)
    if answer_at is None:
        raise DataError(where, "a GUI-Actor record needs an assistant (gpt) turn to answer")
    box = turns[answer_at].get("bbox_gt", row.get("bbox_gt"))
    if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
        raise DataError(where, f"bbox_gt must be [x1, y1, x2, y2] (0–1 of the image), got {box!r}")
    images = row.get("image") or row.get("images") or []
    images = [images] if isinstance(images, str) else list(images)
    if len(images) != 1:
        raise DataError(where, f"a GUI-Actor record grounds on one image, it has {len(images)}")
    size = _size(root / images[0], where)
    source = "unit" if max(box) <= 1 else "pixels"
    problem = coordinates.out_of_range(box, source, size)
    if problem or box[0] > box[2] or box[1] > box[3]:
        raise DataError(where, f"bbox_gt {box} does not fit the {size[0]}×{size[1]} image ({problem})")
    chosen = templates.get(template)
    convention = chosen.answer_convention(coords)
    point = coordinates.convert_point(coordinates.center(box), source, convention, size)
    conversations = [dict(t) for t in turns]
    conversations[answer_at]["value"] = chosen.answer(point)
    has_system = any(t.get("from") == "system" for t in conversations if isinstance(t, dict))
    if chosen.system and not has_system:
        conversations.insert(0, {"from": "system", "value": chosen.system})
    record = {"conversations": conversations, "image": images}
    return {"record": record, "bbox": coordinates.convert_box(box, source, convention, size)}


def _answer_turn(turns: list) -> int | None:
    said = [i for i, t in enumerate(turns) if isinstance(t, dict) and t.get("from") in ("gpt", "assistant")]
    for i in said:
        if ACTION_PLACEHOLDER in str(turns[i].get("value", "")):
            return i
    for i in said:
        if "bbox_gt" in turns[i]:
            return i
    return said[-1] if said else None


def _size(path: Path, where: str) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError) as e:
        raise DataError(where, f"cannot read image {path}: {e}") from None
