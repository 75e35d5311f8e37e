"""A checkpoint's manifest: each file's size and sha256, written last and checked before a resume.

Renaming a folder into place makes a checkpoint whole against a crash of its writer, not against a power
loss: without fsync the renamed files can come back empty or cut. So every file is fsynced before the
rename and the folder after it (:func:`fsync_tree`), and the checkpoint is judged by its content: a
checkpoint whose files do not match its manifest is never resumed from.

    {"files": {"adapter/adapter_model.safetensors": {"size": 123, "sha256": "..."}, ...}}
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..files import digest
from ..layout import MANIFEST


def write(folder: Path) -> None:
    """Write ``folder``'s manifest (every file below it but the manifest itself); call it last."""
    files = {
        path.relative_to(folder).as_posix(): {"size": path.stat().st_size, "sha256": digest(str(path))}
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }
    (folder / MANIFEST).write_text(json.dumps({"files": files}, indent=1) + "\n")


def problem(fs, folder: str) -> str | None:
    """Why checkpoint ``folder`` on pyarrow filesystem ``fs`` cannot be trusted, or None when every file
    its manifest names is there with its size and sha256. A folder without a manifest (written before
    manifests) is checked by whether its adapter's safetensors header reads."""
    text = _read(fs, f"{folder}/{MANIFEST}")
    if text is None:
        return _legacy_problem(fs, folder)
    try:
        files = json.loads(text)["files"]
    except (ValueError, KeyError, TypeError):
        return f"{MANIFEST} does not parse"
    for name, expected in files.items():
        found = _size_and_sha256(fs, f"{folder}/{name}")
        if found is None:
            return f"{name} is missing"
        if found[0] != expected["size"]:
            return f"{name} has {found[0]} bytes, its manifest says {expected['size']}"
        if found[1] != expected["sha256"]:
            return f"{name} does not match its sha256"
    return None


def unloadable(folder: Path) -> str | None:
    """Why local checkpoint ``folder`` does not load (its adapter's safetensors, its trainer state), or
    None: what matches a manifest was written whole, but not necessarily readable."""
    from safetensors import safe_open

    from ..errors import first_line
    from ..layout import ADAPTER, STATE_FILE

    weights = folder / ADAPTER / "adapter_model.safetensors"  # its absence is the manifest's to judge
    try:
        if weights.exists():
            with safe_open(str(weights), "pt") as f:
                f.keys()
        if (folder / STATE_FILE).exists():
            import torch

            torch.load(folder / STATE_FILE, weights_only=True, map_location="cpu")
    except Exception as e:  # safetensors, pickle and zip errors alike
        return f"does not load: {type(e).__name__}: {first_line(e)}"
    return None


def fsync_tree(root: Path) -> None:
    """fsync every file and folder below ``root`` and ``root`` itself (local and NFS filesystems)."""
    for path in sorted(root.rglob("*"), key=lambda p: -len(p.parts)):
        fsync(path)
    fsync(root)


def fsync(path: Path) -> None:
    """fsync one file or folder (a folder's fsync makes the names in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _legacy_problem(fs, folder: str) -> str | None:
    from ..layout import ADAPTER

    head = _read(fs, f"{folder}/{ADAPTER}/adapter_model.safetensors", binary=True, limit=8)
    if head is None or len(head) < 8 or int.from_bytes(head, "little") == 0:
        return f"no {MANIFEST}, and its adapter's safetensors header does not read"
    return None


def _size_and_sha256(fs, path: str) -> tuple[int, str] | None:
    sha, size = hashlib.sha256(), 0
    try:
        with fs.open_input_stream(path) as f:
            while chunk := f.read(1 << 20):
                sha.update(chunk)
                size += len(chunk)
    except (OSError, FileNotFoundError):
        return None
    return size, sha.hexdigest()


def _read(fs, path: str, binary: bool = False, limit: int = -1):
    try:
        with fs.open_input_stream(path) as f:
            data = f.read(limit) if limit >= 0 else f.read()
    except (OSError, FileNotFoundError):
        return None
    return data if binary else data.decode(errors="replace")
