"""YAML text → plain data, remembering the line of every key so errors can point at it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from ..errors import SpecError


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` as a float (YAML 1.1 wants ``1.0e-4``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_value(text: str, where: str) -> Any:
    """One YAML scalar or flow collection, as given to ``--set path=value``."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        raise SpecError(where, f"cannot parse {text!r} as YAML ({_problem(e)})") from None


def load(path: Path) -> tuple[dict, dict[str, int]]:
    """Parse a YAML mapping; return it with ``{dotted.path: line}`` for every key."""
    if not path.is_file():
        raise SpecError(str(path), "no such spec file")
    text = path.read_text()
    if not text.strip():
        raise SpecError(str(path), "the spec file is empty; `raylora init` writes a commented example")
    try:
        node = yaml.compose(text, Loader=_Loader)
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise SpecError(where, f"YAML syntax error: {_problem(e)}") from None
    if data is None:
        raise SpecError(str(path), "the spec file is empty; `raylora init` writes a commented example")
    if not isinstance(data, dict):
        raise SpecError(f"{path}:1", f"the spec must be a mapping of sections, got {type(data).__name__}")
    lines: dict[str, int] = {}
    _collect_lines(node, "", lines)
    return data, lines


def _collect_lines(node: yaml.Node, prefix: str, out: dict[str, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            path = f"{prefix}.{key.value}" if prefix else str(key.value)
            out[path] = key.start_mark.line + 1
            _collect_lines(value, path, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            path = f"{prefix}[{i}]"
            out[path] = item.start_mark.line + 1
            _collect_lines(item, path, out)


def _problem(e: yaml.YAMLError) -> str:
    return " ".join(str(getattr(e, "problem", None) or e).split())
