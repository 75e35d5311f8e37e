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
            if key == "eval" and spec.training.click_eval_samples > 0:
                errors.extend(_check_references(spec, ref))
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
    from ..data import samples

    path = Path(ref.split("#")[0]).expanduser()
    if not path.is_file():
        raise SpecError(where, f"no such data file: {ref}")
    if path.suffix not in (".jsonl", ".json", ".parquet"):
        raise SpecError(where, f"{ref}: data must be .jsonl, .json or .parquet")
    bad = samples.problems(ref, **spec.data.reading())
    raise_all(bad)


def _check_references(spec: Spec, ref: str, most: int = 20) -> list[UserError]:
    """With generation on, every eval record's reference answer must name an action: it is what the
    outputs are scored against (each record that names none, by its ``file:LINE``)."""
    from ..data import samples, scoring, templates

    convention = templates.get(spec.data.template).answer_convention(spec.data.coordinates)
    found: list[UserError] = []
    for record in samples.read(ref, **spec.data.reading()):
        try:
            scoring.target(record, convention)
        except UserError as e:
            found.append(e)
    return found[:most]


def _check_targets(spec: Spec, model_dir: Path) -> None:
    from . import scopes

    config = scopes.load_config(str(model_dir))
    try:
        scopes.resolve_target_modules(
            scopes.meta_model(config), config.model_type, spec.training.lora.target_modules
        )
    except scopes.ScopeError as e:
        raise SpecError("training.lora.target_modules", str(e)) from None


def check_ranks(spec: Spec) -> None:
    """``training.lora.r`` (and every searched rank) must fit the narrowest module LoRA targets: a rank
    above ``min(in, out)`` of a Linear adds parameters without adding rank. Builds the model on the meta
    device (torch, no weights), so ``search`` and ``train`` run it, not the torch-free ``validate``."""
    from .. import builtin
    from ..spec import space
    from . import scopes

    distributions = space.distributions(spec)
    ref = spec.model.name_or_path
    if builtin.is_builtin(ref):
        ref = str(builtin.ensure_tiny_model()) if ref == builtin.TINY_MODEL else None
    elif not Path(ref).expanduser().is_dir():
        ref = None  # a hub model: checked when it is downloaded and built
    if ref is None:
        return
    scope = distributions.get("training.lora.scope")
    options = scope.candidates() if scope else (spec.training.lora.scope,)
    config = scopes.load_config(ref)
    meta = scopes.meta_model(config)
    narrowest: tuple[int, str] | None = None
    for option in options:
        try:
            if spec.training.lora.target_modules is not None:
                resolution = scopes.resolve_target_modules(
                    meta, config.model_type, spec.training.lora.target_modules
                )
            else:
                chosen = spec.with_values({"training.lora.scope": option}) if scope else spec
                resolution = scopes.resolve_scopes(meta, config.model_type, chosen.training.lora.scope)
        except scopes.ScopeError:
            return  # reported by the scope checks
        modules = dict(meta.named_modules())
        for name in resolution.names():
            width = min(modules[name].in_features, modules[name].out_features)
            if narrowest is None or width < narrowest[0]:
                narrowest = (width, name)
    if narrowest is None:
        return
    width, name = narrowest
    ranks = distributions.get("training.lora.r")
    where, values = (
        ("search.training.lora.r", ranks.candidates())
        if ranks
        else ("training.lora.r", (spec.training.lora.r,))
    )
    too_big = sorted({int(v) for v in values if v > width})
    if too_big:
        raise SpecError(
            where,
            f"rank {', '.join(map(str, too_big))} is above the width of the narrowest targeted module "
            f"({name}: {modules[name].in_features}→{modules[name].out_features}); the widest sensible rank "
            f"is {width}",
        )
