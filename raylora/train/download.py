"""Fetching a hub checkpoint before anything loads it, so a first download is seen, not silent.

Loading itself (``from_pretrained``) runs with transformers' progress bars off; a model that is not in the
Hugging Face cache yet is downloaded here first, with the hub's progress bars on a terminal and a line
before and after elsewhere. Local folders, ``builtin:`` models and cached checkpoints cost nothing.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

from ..errors import UserError, first_line

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# What loading a Qwen3-VL checkpoint reads: configs, safetensors weights, tokenizer and chat template.
WANTED = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"]


def is_hub_id(ref: str) -> bool:
    """Whether ``ref`` names a hub repository (``owner/name``) rather than a local folder."""
    return bool(HUB_ID.match(ref)) and not ref.startswith((".", "/", "~")) and not Path(ref).exists()


def ensure_local(ref: str, revision: str | None = None, log: Callable[[str], None] = print) -> None:
    """Download hub checkpoint ``ref`` into the Hugging Face cache unless it is there already."""
    if not is_hub_id(ref):
        return
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    try:
        snapshot_download(ref, revision=revision, allow_patterns=WANTED, local_files_only=True)
        return  # cached
    except Exception:  # not (wholly) in the cache: download it
        pass
    log(f"downloading {ref}{f'@{revision}' if revision else ''} into the Hugging Face cache ...")
    (enable_progress_bars if sys.stderr.isatty() else disable_progress_bars)()
    try:
        path = snapshot_download(ref, revision=revision, allow_patterns=WANTED)
    except Exception as e:  # offline, unknown repository, gated model, no space left
        raise UserError("model.name_or_path", f"cannot download {ref}: {first_line(e, 300)}") from None
    finally:
        disable_progress_bars()
    log(f"downloaded {ref} to {path}")
