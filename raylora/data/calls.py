"""Call expressions in a model's text, read as call syntax (pure Python, no torch).

GUI models answer with calls — ``click(start_box='(120,45)')``, ``pyautogui.write('f(x) = 1')``,
``type(content='Say (hi) there\\'s')`` — inside free text: a thought before, a ``.`` or a leftover
``<|im_end|>`` after. A regular expression that stops at the first ``)`` cuts such a call; :func:`find` reads
the arguments instead, as a small tokenizer:

    strings    single or double quoted, with backslash escapes (``\\n``, ``\\t``, ``\\'``, ``\\"``,
               ``\\\\``, ``\\uXXXX``; any other escape is kept as written, as Python does)
    numbers    ``12``, ``-3.5``, ``.5``, ``1e3``
    sequences  ``[...]`` and ``(...)``, nested, read as lists
    objects    ``{...}``, read as JSON when they are JSON
    names      ``True``/``False``/``None``; any other bare name is kept as its text

A call whose arguments do not read (unbalanced, truncated) is left out, and so is a call inside another one
(its arguments are the outer call's business). What surrounds the calls is ignored.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

_NAME = re.compile(r"(?<![\w.])([A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*)\s*\(")
_KEYWORD = re.compile(r"([A-Za-z_]\w*)\s*=(?!=)")
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_BARE = re.compile(r"[A-Za-z_][\w.]*")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"', "0": "\0"}
_CONSTANTS = {"True": True, "False": False, "None": None, "true": True, "false": False, "null": None}
_CLOSE = {"(": ")", "[": "]"}


class _Bad(Exception):
    """The text at this position is not a value."""


@dataclass(frozen=True)
class Call:
    """One call: its (possibly dotted) ``name``, positional ``args``, keyword ``kwargs``, and where it
    spans in the text (``start``, ``end``: just past its closing ``)``)."""

    name: str
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    start: int = 0
    end: int = 0


def find(text: str) -> list[Call]:
    """Every top-level call in ``text`` whose arguments read, in order."""
    calls: list[Call] = []
    for match in _NAME.finditer(text):
        if calls and match.start() < calls[-1].end:
            continue  # inside the previous call (a quoted argument, a nested call)
        try:
            args, kwargs, end = _arguments(text, match.end())
        except (_Bad, RecursionError):  # RecursionError: brackets nested past Python's stack
            continue
        calls.append(Call(match.group(1), tuple(args), kwargs, match.start(), end))
    return calls


def _arguments(text: str, pos: int) -> tuple[list, dict, int]:
    args: list = []
    kwargs: dict = {}
    pos = _space(text, pos)
    if text.startswith(")", pos):
        return args, kwargs, pos + 1
    while True:
        pos = _space(text, pos)
        keyword = _KEYWORD.match(text, pos)
        if keyword:
            pos = keyword.end()
        value, pos = _value(text, _space(text, pos))
        if keyword:
            kwargs[keyword.group(1)] = value
        elif kwargs:
            raise _Bad  # a positional argument after a keyword one is not a call
        else:
            args.append(value)
        pos = _space(text, pos)
        if text.startswith(",", pos):
            pos = _space(text, pos + 1)
            if text.startswith(")", pos):  # a trailing comma
                return args, kwargs, pos + 1
            continue
        if text.startswith(")", pos):
            return args, kwargs, pos + 1
        raise _Bad


def _value(text: str, pos: int):
    """The value starting at ``pos`` and the position just past it."""
    if pos >= len(text):
        raise _Bad
    char = text[pos]
    if char in "'\"":
        return _string(text, pos)
    if char in _CLOSE:
        return _sequence(text, pos, _CLOSE[char])
    if char == "{":
        return _object(text, pos)
    number = _NUMBER.match(text, pos)
    if number:
        literal = number.group()
        return (float(literal) if any(c in literal for c in ".eE") else int(literal)), number.end()
    bare = _BARE.match(text, pos)
    if bare:
        name = bare.group()
        return _CONSTANTS.get(name, name), bare.end()
    raise _Bad


def _string(text: str, pos: int) -> tuple[str, int]:
    quote, out, i = text[pos], [], pos + 1
    while i < len(text):
        char = text[i]
        if char == quote:
            return "".join(out), i + 1
        if char == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", text[i + 2 : i + 6]):
                out.append(chr(int(text[i + 2 : i + 6], 16)))
                i += 6
                continue
            out.append(_ESCAPES.get(nxt, "\\" + nxt))
            i += 2
            continue
        out.append(char)
        i += 1
    raise _Bad  # unterminated


def _sequence(text: str, pos: int, close: str) -> tuple[list, int]:
    items: list = []
    pos = _space(text, pos + 1)
    while not text.startswith(close, pos):
        value, pos = _value(text, pos)
        items.append(value)
        pos = _space(text, pos)
        if text.startswith(",", pos):
            pos = _space(text, pos + 1)
        elif not text.startswith(close, pos):
            raise _Bad
    return items, pos + 1


def _object(text: str, pos: int):
    try:
        return json.JSONDecoder().raw_decode(text, pos)
    except (ValueError, RecursionError):
        raise _Bad from None


def _space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos
