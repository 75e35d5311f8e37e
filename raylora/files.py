"""Files written whole, files known by their content, folders one can write in: the file rules every layer
shares."""

from __future__ import annotations

import hashlib
import os
import tempfile
import uuid
from pathlib import Path


def write_atomic(path: Path, data: str | bytes) -> None:
    """Replace file ``path`` with ``data`` whole or not at all (a temporary file renamed into place; on a
    full disk the old file stays as it was). The temporary name is unique to this call, so writers on
    several hosts sharing an NFS folder, or threads of one process, never write into each other's."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # name the file the user knows, not the temporary one
        raise OSError(e.errno, e.strerror, str(path)) from e
    finally:
        tmp.unlink(missing_ok=True)


def digest(path: str | None) -> str | None:
    """sha256 of a data file's bytes (None when it is not a local file)."""
    if not path or not Path(path).is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def unwritable(folder: Path) -> str | None:
    """Why nothing can be written under ``folder`` (created later if missing), or None: the nearest existing
    ancestor is a file, a read-only mount or a folder without write permission."""
    existing = Path(folder).expanduser().absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    try:  # a real write: a read-only mount or missing permission answers here, root or not
        fd, name = tempfile.mkstemp(prefix=".raylora-check-", dir=existing)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        return f"cannot write in {existing} ({e.strerror or e})"
    return None
