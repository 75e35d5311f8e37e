"""Publishing a built artifact so that many processes may ask for it at once and all see one copy.

Every artifact is built in a temporary directory beside its target and renamed into place; the marker
file, written last, says a directory is complete.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

# Bump when the bytes written change, so existing homes rebuild instead of reusing a stale layout.
FORMAT_VERSION = 3  # 3: homes where a rank-1 worker published a model without weights rebuild
MARKER_FILE = "raylora_builtin.json"


def publish(target: Path, build: Callable[[Path], None], marker: dict) -> Path:
    """Build into a fresh dir beside ``target``, then rename it into place unless another process won."""
    if (target / MARKER_FILE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _discard_incomplete(target)
    staging = _fresh_sibling(target, "build")
    try:
        build(staging)
        # The marker is written last: a directory holding it is complete.
        (staging / MARKER_FILE).write_text(json.dumps({"format_version": FORMAT_VERSION, **marker}, indent=2))
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / MARKER_FILE).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _fresh_sibling(target: Path, purpose: str) -> Path:
    """Create an empty, uniquely named hidden directory next to ``target``; ``os.mkdir`` honours the umask."""
    path = target.parent / f".{target.name}.{purpose}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    os.mkdir(path)
    return path


def _discard_incomplete(target: Path) -> None:
    """Move aside a target without a marker (left by hand or by an older tool) so the rename can succeed."""
    if not target.exists() or (target / MARKER_FILE).is_file():
        return
    trash = _fresh_sibling(target, "trash")
    try:
        os.rename(target, trash / target.name)
    except OSError:
        pass  # another process moved it first
    shutil.rmtree(trash, ignore_errors=True)
