"""Fault injection for testing what a study does when trials break (never set in normal use).

``RAYLORA_INJECT_OOM="training.lora.r=32"`` makes every trial whose spec has that value raise
``torch.OutOfMemoryError`` at its first step, as a GPU that is too small would.
``RAYLORA_INJECT_ERROR="training.lora.r=32"`` makes it raise a ``RuntimeError`` there instead (a trial that
fails for a reason of its own).
"""

from __future__ import annotations

import os

from ..environment import INJECT_ERROR
from ..environment import INJECT_OOM as ENV


def maybe_oom(spec) -> None:
    """Raise an injected out-of-memory error if ``RAYLORA_INJECT_OOM`` matches this spec (or a plain
    error for ``RAYLORA_INJECT_ERROR``)."""
    if _matches(spec, os.environ.get(INJECT_ERROR)):
        raise RuntimeError(f"injected by {INJECT_ERROR}={os.environ[INJECT_ERROR]}")
    if _matches(spec, os.environ.get(ENV)):
        import torch

        raise torch.OutOfMemoryError(f"injected by {ENV}={os.environ[ENV]}")


def _matches(spec, condition: str | None) -> bool:
    if not condition:
        return False
    import yaml

    path, _, text = condition.partition("=")
    return spec.get(path.strip()) == yaml.safe_load(text)
