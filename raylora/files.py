"""Files written whole and files known by their content: the two file rules every layer shares."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def write_atomic(path: Path, data: str | bytes) -> None:
    """Replace file ``path`` with ``data`` whole or not at all (a temporary file renamed into place; on a
    full disk the old file stays as it was)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
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
