"""Checks a spec's local inputs before anything starts: model folder, data files, LoRA targets."""

from __future__ import annotations

from pathlib import Path

from ..errors import SpecError, UserError, raise_all
from ..spec import Spec
from . import download


def local_inputs(spec: Spec) -> None:
    """Raise every problem with the spec's model path, data files and target modules at once."""
    from .. import builtin

    errors: list[UserError] = []
    model_dir = None
    try:
        model_dir = _model_dir(spec.model.name_or_path)
    except UserError as e:
        errors.append(e)
    for key in ("train", "eval"):
        ref = getattr(spec.data, key)
        if ref is None or builtin.is_builtin(ref):
            if ref is not None and ref != builtin.GUI_DATA:
                errors.append(
                    SpecError(f"data.{key}", f"unknown builtin {ref!r} (known: {builtin.GUI_DATA})")
                )
            continue
        try:
            _check_data(spec, ref, f"data.{key}")
        except UserError as e:
            errors.append(e)
    if spec.model.name_or_path == builtin.TINY_MODEL and spec.training.lora.target_modules is not None:
        model_dir = builtin.ensure_tiny_model()
    if model_dir is not None and spec.training.lora.target_modules is not None:
        try:
            _check_targets(spec, model_dir)
        except UserError as e:
            errors.append(e)
    raise_all(errors)


def _model_dir(ref: str) -> Path | None:
    """The local folder holding the model's config, or None for a hub id (checked when it loads)."""
    from .. import builtin

    if builtin.is_builtin(ref):
        if ref != builtin.TINY_MODEL:
            raise SpecError("model.name_or_path", f"unknown builtin {ref!r} (known: {builtin.TINY_MODEL})")
        return None
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SpecError(
                "model.name_or_path", f"{ref} has no config.json; is it a model checkpoint folder?"
            )
        return path
    if download.is_hub_id(ref):
        return None
    raise SpecError(
        "model.name_or_path", f"no such model folder: {ref} (give a local folder or a hub id org/name)"
    )


def _check_data(spec: Spec, ref: str, where: str) -> None:
    from . import data

    path = Path(ref.split("#")[0]).expanduser()
    if not path.is_file():
        raise SpecError(where, f"no such data file: {ref}")
    if path.suffix not in (".jsonl", ".json", ".parquet"):
        raise SpecError(where, f"{ref}: data must be .jsonl, .json or .parquet")
    bad = data.problems(ref, spec.data.format, spec.data.coordinates, spec.data.template)
    raise_all(bad)


def _check_targets(spec: Spec, model_dir: Path) -> None:
    from . import scopes

    config = scopes.load_config(str(model_dir))
    try:
        scopes.resolve_target_modules(
            scopes.meta_model(config), config.model_type, spec.training.lora.target_modules
        )
    except scopes.ScopeError as e:
        raise SpecError("training.lora.target_modules", str(e)) from None
