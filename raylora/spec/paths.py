"""The dotted-path language: ``training.lora.r`` names one value of the spec.

``--set``, ``search:`` keys, error messages and trial params all use it. Paths walk pydantic sections:
a field whose type is a model is a section, anything else is a value. The root's ``search`` section maps
paths to distributions and is not itself settable by path.
"""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel

from ..errors import SpecError

NOT_SETTABLE = ("search",)  # root fields that no dotted path reaches


def section_type(annotation: Any) -> type[BaseModel] | None:
    """The section a field holds, or None for a value."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _fields(model: type[BaseModel], root: bool) -> dict:
    return {n: f for n, f in model.model_fields.items() if not (root and n in NOT_SETTABLE)}


def leaf_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every settable dotted path under ``model``."""
    paths = []
    for name, field in _fields(model, not prefix).items():
        path = f"{prefix}{name}"
        sub = section_type(field.annotation)
        paths.extend(leaf_paths(sub, path + ".") if sub else [path])
    return paths


def check_path(root: type[BaseModel], path: str, where: str) -> None:
    """Raise a SpecError naming the unknown part of ``path`` and the closest real paths."""
    model: type[BaseModel] | None = root
    done: list[str] = []
    for part in path.split("."):
        if model is None:
            raise SpecError(where, f"{'.'.join(done)} is a value, not a section; {path!r} is not a spec path")
        fields = _fields(model, model is root)
        if part not in fields:
            prefix = ".".join(done)
            allowed = ", ".join(fields)
            close = difflib.get_close_matches(path, leaf_paths(root), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            at = f" under {prefix}" if prefix else ""
            raise SpecError(where, f"unknown key {part!r}{at} (allowed: {allowed}){hint}")
        model = section_type(fields[part].annotation)
        done.append(part)
    if model is not None:
        raise SpecError(where, f"{path} is a section, not a value; set one of its keys")


def allowed_keys(root: type[BaseModel], dotted: str) -> list[str]:
    """The keys of the section that holds ``dotted`` (for "unknown key" messages)."""
    parent = dotted.rsplit(".", 1)[0] if "." in dotted else ""
    model: type[BaseModel] | None = root
    for part in parent.split(".") if parent else []:
        field = model.model_fields.get(part) if model else None
        model = section_type(field.annotation) if field else None
    return list(model.model_fields) if model else []


def get(obj: Any, path: str) -> Any:
    """The value at ``path`` of a spec object."""
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def set_in(data: dict, path: str, value: Any) -> None:
    """Set ``path`` in plain nested dicts, creating sections on the way."""
    parts = path.split(".")
    node = data
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def flatten(data: Any, prefix: str = "", out: dict | None = None) -> dict[str, Any]:
    """Plain nested dicts as ``{dotted.path: value}``."""
    out = {} if out is None else out
    if isinstance(data, dict) and data:
        for key, value in data.items():
            flatten(value, f"{prefix}.{key}" if prefix else key, out)
    else:
        out[prefix] = data
    return out
