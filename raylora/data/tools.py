"""Tool use, whatever a dataset calls it, rendered the way Qwen's chat template renders it: a call
(sharegpt ``function_call``, ms-swift ``tool_call``, OpenAI ``tool_calls``; JSON ``{"name", "arguments"}``)
as the assistant's ``<tool_call>\n{json}\n</tool_call>``; responses (sharegpt ``observation``, ms-swift
``tool_response`` / ``tool``, OpenAI ``tool``) as one user turn of ``<tool_response>`` blocks; the ``tools``
signatures in a ``<tools>`` block at the end of the system turn. Rendering them as text keeps training,
evaluation and ``data inspect`` on one path whatever chat template the model has.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import DataError

TOOL_ROLES = {
    "function_call": "tool_call",
    "tool_call": "tool_call",
    "observation": "tool",
    "tool_response": "tool",
    "tool": "tool",
}
"""Turn roles of sharegpt (LLaMA-Factory's function/observation tags) and ms-swift that carry tool use."""
_TOOLS_INTRO = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
_TOOLS_OUTRO = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": '
    "<args-json-object>}\n</tool_call>"
)


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
    return with_tools(out, tools, where) if tools else out


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


def with_tools(messages: list[dict], tools: Any, where: str) -> list[dict]:
    """``messages`` with the ``tools`` signatures (a list or a JSON string) at the end of the system turn."""
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
