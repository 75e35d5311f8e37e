"""The starter specs shipped with raylora (``search_spaces/`` in the repository, ``raylora.search_spaces``
once installed), each a commented study a user copies with ``raylora init`` and edits."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..errors import UserError

DEFAULT = "quickstart"


def names() -> list[str]:
    """The starters' names: ``quickstart``, ``scope_study``, ``qlora_budget``."""
    folder = resources.files("raylora.search_spaces")
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def text(name: str) -> str:
    """The commented YAML of starter ``name``."""
    if name not in names():
        raise UserError("init", f"no starter spec {name!r} (choose one of: {', '.join(names())})")
    return resources.files("raylora.search_spaces").joinpath(f"{name}.yaml").read_text()


def write(name: str, directory: Path, force: bool = False) -> Path:
    """Copy starter ``name`` to ``directory/<name>.yaml``; never overwrite a file unless ``force``."""
    content = text(name)
    target = Path(directory) / f"{name}.yaml"
    if target.exists() and not force:
        raise UserError("init", f"{target} already exists (--force replaces it)")
    if target.parent.exists() and not target.parent.is_dir():
        raise UserError("init", f"{target.parent} is not a folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(content)
    return target
