"""Embedded defaults that let raylora run with no GPU and no network.

Two references are built in, each built once under ``$RAYLORA_HOME`` and then read like user inputs:

* ``builtin:tiny-qwen3-vl`` (:mod:`.tiny_model`): a real tiny Qwen3-VL checkpoint folder, loaded through
  the same ``from_pretrained`` path as a hub checkpoint.
* ``builtin:gui-grounding`` (:mod:`.gui_data`): synthetic GUI screenshots as JSONL in the chat format.

    tiny_model   the tiny Qwen3-VL checkpoint (model, tokenizer, processor)
    gui_data     the synthetic GUI grounding dataset
    _publish     build in a temporary folder, rename into place: many processes, one copy
"""

from __future__ import annotations

from ._publish import FORMAT_VERSION, MARKER_FILE
from .gui_data import GUI_DATA, ensure_gui_dataset
from .tiny_model import MAX_PIXELS, TINY_MODEL, ensure_tiny_model

__all__ = [
    "FORMAT_VERSION",
    "GUI_DATA",
    "MARKER_FILE",
    "MAX_PIXELS",
    "TINY_MODEL",
    "ensure_gui_dataset",
    "ensure_tiny_model",
    "is_builtin",
    "resolve_data",
    "resolve_model",
]


def is_builtin(ref: str) -> bool:
    """Tell whether ``ref`` names a builtin artifact (``builtin:<name>``)."""
    return ref.startswith("builtin:")


def resolve_model(ref: str) -> str:
    """Map ``builtin:tiny-qwen3-vl`` to its local directory, building it once; return other refs unchanged."""
    if not is_builtin(ref):
        return ref
    _check_known(ref, (TINY_MODEL,))
    return str(ensure_tiny_model())


def resolve_data(ref: str, split: str, seed: int = 0) -> str:
    """Map ``builtin:gui-grounding`` and ``train``/``eval`` to that JSONL path; return other refs as is."""
    if not is_builtin(ref):
        return ref
    _check_known(ref, (GUI_DATA,))
    train, eval_ = ensure_gui_dataset(seed=seed)
    paths = {"train": train, "eval": eval_}
    if split not in paths:
        raise ValueError(f"unknown split {split!r} for {GUI_DATA}; known: {sorted(paths)}")
    return str(paths[split])


def _check_known(ref: str, expected: tuple[str, ...]) -> None:
    known = (TINY_MODEL, GUI_DATA)
    if ref not in known:
        raise ValueError(f"unknown builtin {ref!r}; known builtins: {', '.join(known)}")
    if ref not in expected:
        raise ValueError(f"{ref!r} cannot be used here; expected one of: {', '.join(expected)}")
