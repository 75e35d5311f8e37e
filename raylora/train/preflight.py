"""Checks a spec's local inputs before anything starts: model folder, data files, LoRA targets."""

from __future__ import annotations

import json
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
    bad = samples.problems(ref, **spec.data.reading(), bounds=_bounds(spec))
    raise_all(bad)


def _check_references(spec: Spec, ref: str, most: int = 20) -> list[UserError]:
    """With generation on, every eval record's reference answer must name an action: it is what the
    outputs are scored against (each record that names none, by its ``file:LINE``)."""
    from ..data import samples, scoring, templates

    convention = templates.get(spec.data.template).answer_convention(spec.data.coordinates)
    found: list[UserError] = []
    for record in samples.read(ref, **spec.data.reading()):
        try:
            scoring.goal(record, convention, bounds=_bounds(spec))
        except UserError as e:
            found.append(e)
    return found[:most]


def _bounds(spec: Spec):
    """The spec's image bounds, for answers written in resized-pixels (the schema requires both then); the
    side multiple is the processor's, so it is left at its default: validity does not depend on it."""
    from ..data.coordinates import Bounds

    image = spec.data.image
    return Bounds(image.min_pixels, image.max_pixels) if image.min_pixels and image.max_pixels else None


def _check_targets(spec: Spec, model_dir: Path) -> None:
    from . import scopes

    config = scopes.load_config(str(model_dir))
    try:
        scopes.resolve_target_modules(
            scopes.meta_model(config), config.model_type, spec.training.lora.target_modules
        )
    except scopes.ScopeError as e:
        raise SpecError("training.lora.target_modules", str(e)) from None


def check_ranks(spec: Spec, sampled: bool) -> None:
    """Refuse a LoRA rank above the width of the narrowest module LoRA targets (``min(in, out)`` of a
    Linear: a wider rank adds parameters without adding rank). ``sampled``: every rank and scope the
    search can sample (``search``); else the fixed values the command trains with (``train``, where
    ``--set`` wins over ``search:``). The built-in model's widths come from its ``config.json``; another
    checkpoint is built on the meta device (torch, no weights) the first time its ``config.json`` and
    targets are seen, and its widths are then kept in ``$RAYLORA_HOME/cache/widths`` (seconds of every
    later study's start)."""
    from .. import builtin

    ref = _local_model(spec)  # the built-in model is built here the first time
    if ref is None:
        return
    if spec.model.name_or_path == builtin.TINY_MODEL and spec.training.lora.target_modules is None:
        # Its config.json gives its widths exactly (tests/test_set.py): no meta model, no torch import.
        check_ranks_from_config(spec, sampled)
        return
    widths = _Widths(ref, spec.training.lora.target_modules)
    try:
        _refuse_wide_ranks(spec, sampled, widths)
    finally:
        widths.save()  # a refused rank is refused again next time from the cache


class _Widths:
    """``widths(scope)``: ``{module: min(in, out)}`` of the Linear modules a scope (or the spec's
    ``target_modules``) resolves to; from the cache, else from the meta model, built once."""

    def __init__(self, ref: str, chosen: list[str] | None):
        import hashlib

        from .. import environment

        self.ref, self.chosen, self.meta, self.known, self.new = ref, chosen, None, {}, False
        try:  # no config.json: no cache, and the meta model's loader says what is missing
            config = (Path(ref).expanduser() / "config.json").read_bytes()
        except OSError:
            self.path = None
            return
        key = hashlib.sha256(config + json.dumps(chosen).encode()).hexdigest()[:32]
        self.path = environment.home() / "cache" / "widths" / f"{key}.json"
        try:
            self.known = json.loads(self.path.read_text())
        except (OSError, ValueError):
            pass

    def __call__(self, scope: list[str]) -> dict[str, int]:
        name = json.dumps(sorted(scope))
        if name not in self.known:
            self.known[name] = self._measure(scope)
            self.new = True
        return self.known[name]

    def _measure(self, scope: list[str]) -> dict[str, int]:
        from . import scopes

        if self.meta is None:
            config = scopes.load_config(self.ref)
            model = scopes.meta_model(config)
            self.meta = (config, model, dict(model.named_modules()))
        config, meta, modules = self.meta
        if self.chosen is not None:
            resolution = scopes.resolve_target_modules(meta, config.model_type, self.chosen)
        else:
            resolution = scopes.resolve_scopes(meta, config.model_type, scope)
        return {n: min(modules[n].in_features, modules[n].out_features) for n in resolution.names()}

    def save(self) -> None:
        """Keep what was measured; a cache that cannot be written costs the next study the meta model."""
        from ..files import write_atomic

        if self.new and self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(self.path, json.dumps(self.known))
            except OSError:
                pass


def check_ranks_from_config(spec: Spec, sampled: bool = True) -> None:
    """:func:`check_ranks` from ``config.json``'s widths alone (no torch: ``raylora validate``, and the
    built-in model everywhere). Qwen3-VL and Qwen2.5-VL layouts with scopes; otherwise nothing."""
    from .. import builtin

    if spec.training.lora.target_modules is not None:
        return
    if spec.model.name_or_path == builtin.TINY_MODEL:
        from ..builtin.tiny_model import widths_config

        config = widths_config()
    else:
        ref = _local_model(spec)
        if ref is None:
            return
        try:
            config = json.loads((Path(ref) / "config.json").read_text())
        except (OSError, ValueError):
            return  # reported by the model checks
    leaves = leaf_widths(config)
    if leaves:
        _refuse_wide_ranks(spec, sampled, lambda scope: _scope_widths(scope, leaves))


def leaf_widths(config: dict) -> dict[str, int]:
    """The narrowest Linear of each leaf scope, from a Qwen-VL ``config.json`` ({} for other models)."""
    if config.get("model_type") not in ("qwen3_vl", "qwen2_5_vl"):
        return {}
    text, vision = config.get("text_config", config), config.get("vision_config", {})
    try:
        hidden, heads = text["hidden_size"], text["num_attention_heads"]
        head_dim = text.get("head_dim") or hidden // heads
        kv = text.get("num_key_value_heads") or heads
        seen = vision["hidden_size"]
        merged = seen * vision.get("spatial_merge_size", 2) ** 2
        projector = min(merged, vision.get("out_hidden_size", hidden))
        return {
            "llm.attn": min(hidden, heads * head_dim, kv * head_dim),
            "llm.mlp": min(hidden, text["intermediate_size"]),
            "vision.attn": seen,
            "vision.mlp": min(seen, vision["intermediate_size"]),
            "projector": projector,
            "deepstack": projector,
        }
    except (KeyError, TypeError):
        return {}


def _scope_widths(scope: list[str], leaves: dict[str, int]) -> dict[str, int]:
    from .scopes import _COMPOUND

    return {leaf: leaves[leaf] for word in scope for leaf in _COMPOUND.get(word, (word,)) if leaf in leaves}


def _local_model(spec: Spec) -> str | None:
    """The local folder of the spec's model (the built-in one built), or None for a hub model."""
    from .. import builtin

    ref = spec.model.name_or_path
    if builtin.is_builtin(ref):
        return str(builtin.ensure_tiny_model()) if ref == builtin.TINY_MODEL else None
    return ref if Path(ref).expanduser().is_dir() else None  # a hub model: checked when it is built


def _refuse_wide_ranks(spec: Spec, sampled: bool, widths) -> None:
    """Raise when a rank the command trains with is above the narrowest width ``widths(scope)`` gives
    (module → width) for a scope it trains."""
    from ..spec import space
    from . import scopes

    distributions = space.distributions(spec) if sampled else {}
    scope_dist = distributions.get("training.lora.scope")
    narrowest: tuple[int, str] | None = None
    for scope in scope_dist.candidates() if scope_dist else (spec.training.lora.scope,):
        try:
            found = widths(scope)
        except scopes.ScopeError:
            return  # reported by the scope checks
        for name, width in found.items():
            if narrowest is None or width < narrowest[0]:
                narrowest = (width, name)
    rank_dist = distributions.get("training.lora.r")
    where = "search.training.lora.r" if rank_dist else "training.lora.r"
    ranks = rank_dist.candidates() if rank_dist else (spec.training.lora.r,)
    too_big = sorted({int(v) for v in ranks if narrowest and v > narrowest[0]})
    if too_big:
        width, name = narrowest
        raise SpecError(
            where,
            f"rank {', '.join(map(str, too_big))} is above the width of the narrowest targeted module "
            f"({name}: {width}); the widest sensible rank is {width}",
        )
