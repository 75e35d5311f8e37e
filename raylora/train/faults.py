"""Fault injection for testing what a study does when trials break (never set in normal use).

``RAYLORA_INJECT_OOM="training.lora.r=32"`` makes every trial whose spec has that value raise
``torch.OutOfMemoryError`` at its first step, as a GPU that is too small would.
"""

from __future__ import annotations

import os

from ..environment import INJECT_OOM as ENV


def maybe_oom(spec) -> None:
    """Raise an injected out-of-memory error if ``RAYLORA_INJECT_OOM`` matches this spec."""
    condition = os.environ.get(ENV)
    if not condition:
        return
    import torch
    import yaml

    path, _, text = condition.partition("=")
    if spec.get(path.strip()) == yaml.safe_load(text):
        raise torch.OutOfMemoryError(f"injected by {ENV}={condition}")
