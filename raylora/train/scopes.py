"""Scopes: the named parts of a vision-language model that LoRA trains.

A scope word (``llm``, ``vision.attn``, ``projector``, ...) resolves, per architecture, to anchored regexes
over full module paths from ``model.named_modules()``. Suffix lists are not enough: Qwen2.5-VL's vision MLP
reuses the LLM's ``gate_proj``/``up_proj``/``down_proj`` names, and the commonly copied ``visual.attn.qkv``
matches nothing on Qwen3-VL. The resolved module list is the single source for PEFT targets, optimizer
groups and reports.

Importing this module is cheap: torch and transformers are imported inside the functions that need them.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCOPES: tuple[str, ...] = (
    "llm",
    "llm.attn",
    "llm.mlp",
    "vision",
    "vision.attn",
    "vision.mlp",
    "projector",
    "deepstack",
)
PARTS: tuple[str, ...] = ("llm", "vision", "projector", "deepstack")

# Scopes that are unions of other scopes; every other scope is a leaf with its own pattern.
_COMPOUND: dict[str, tuple[str, ...]] = {
    "llm": ("llm.attn", "llm.mlp"),
    "vision": ("vision.attn", "vision.mlp"),
}
_LEAVES: tuple[str, ...] = ("llm.attn", "llm.mlp", "vision.attn", "vision.mlp", "projector", "deepstack")

_LLM_ATTN = r"model\.language_model\.layers\.\d+\.self_attn\.[qkvo]_proj"
_LLM_MLP = r"model\.language_model\.layers\.\d+\.mlp\.(?:gate|up|down)_proj"
_VIS_ATTN = r"model\.visual\.blocks\.\d+\.attn\.(?:qkv|proj)"

_QWEN3_VL: dict[str, str | None] = {
    "llm.attn": _LLM_ATTN,
    "llm.mlp": _LLM_MLP,
    "vision.attn": _VIS_ATTN,
    "vision.mlp": r"model\.visual\.blocks\.\d+\.mlp\.linear_fc[12]",
    "projector": r"model\.visual\.merger\.linear_fc[12]",
    "deepstack": r"model\.visual\.deepstack_merger_list\.\d+\.linear_fc[12]",
}

# Leaf scope -> anchored regex over full module names of XForConditionalGeneration (transformers 5.x).
# None means the architecture has no such part at all.
_PATTERNS: dict[str, dict[str, str | None]] = {
    "qwen3_vl": _QWEN3_VL,
    # Same layout; the LLM MLP pattern only hits the dense MLPs of `mlp_only_layers` (none by default).
    "qwen3_vl_moe": dict(_QWEN3_VL),
    "qwen2_5_vl": {
        "llm.attn": _LLM_ATTN,
        "llm.mlp": _LLM_MLP,
        "vision.attn": _VIS_ATTN,
        "vision.mlp": r"model\.visual\.blocks\.\d+\.mlp\.(?:gate|up|down)_proj",
        "projector": r"model\.visual\.merger\.mlp\.[02]",
        "deepstack": None,
    },
}

_MOE_MLP_REASON = (
    "the MoE experts are fused parameters, not Linear layers, and the router is not a Linear layer either"
)
# Why a leaf scope can come out empty, so the error says more than "nothing matched".
_EMPTY_REASONS: dict[str, dict[str, str]] = {
    "qwen3_vl_moe": {"llm.mlp": _MOE_MLP_REASON},
    "qwen2_5_vl": {"deepstack": "Qwen2.5-VL has no deepstack mergers"},
}

# PEFT decorations around a base module name: wrapper prefix, adapter sub-modules, parameter leaf.
_PEFT_PREFIX = "base_model.model."
_PEFT_SUFFIX = re.compile(r"\.(?:lora_[A-Za-z_]+|base_layer|modules_to_save|original_module)(?:\..*)?$")
_PARAM_LEAF = re.compile(r"\.(?:weight|bias)$")
_INDEX = re.compile(r"(?<=\.)\d+(?=\.)")

_ALL_LINEAR = "all-linear"


class ScopeError(ValueError):
    """A scope or target-module request that cannot be honoured; the message is one user-facing line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


@dataclass(frozen=True)
class Resolution:
    """The modules LoRA targets on one model: full module name -> part, in model order."""

    model_type: str
    modules: dict[str, str]

    def names(self) -> list[str]:
        """Full module names, in model order (ready for ``LoraConfig(target_modules=...)``)."""
        return list(self.modules)

    def by_part(self) -> dict[str, list[str]]:
        """Module names grouped by part; only non-empty parts, in ``PARTS`` order."""
        groups: dict[str, list[str]] = {part: [] for part in PARTS}
        for name, part in self.modules.items():
            groups[part].append(name)
        return {part: names for part, names in groups.items() if names}

    def parts(self) -> tuple[str, ...]:
        """The parts that have at least one targeted module, in ``PARTS`` order."""
        return tuple(self.by_part())


def supported_model_types() -> tuple[str, ...]:
    """The ``config.model_type`` values whose scopes are known."""
    return tuple(_PATTERNS)


def _check_model_type(model_type: str) -> dict[str, str | None]:
    try:
        return _PATTERNS[model_type]
    except KeyError:
        raise ScopeError(
            f"unsupported model_type {model_type!r}; supported: {', '.join(supported_model_types())}"
        ) from None


def _compiled(model_type: str) -> dict[str, re.Pattern[str]]:
    patterns = _check_model_type(model_type)
    return {leaf: re.compile(rx) for leaf, rx in patterns.items() if rx is not None}


def _leaves_of(scope: str) -> tuple[str, ...]:
    return _COMPOUND.get(scope, (scope,))


def _part_of_scope(scope: str) -> str:
    return scope.split(".", 1)[0]


def _generic(name: str) -> str:
    """``model.visual.blocks.3.attn.qkv`` -> ``model.visual.blocks.N.attn.qkv``.

    A trailing index (``merger.mlp.0``) is a layer of a Sequential, not a repeat, so it is kept.
    """
    return _INDEX.sub("N", name)


def _linear_modules(model) -> dict[str, Any]:
    """Every ``nn.Linear`` (bitsandbytes Linear4bit/8bitLt subclass it) by full name, in model order."""
    import torch

    return {name: mod for name, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)}


def _leaf_part(name: str, compiled: dict[str, re.Pattern[str]]) -> str | None:
    for leaf, rx in compiled.items():
        if rx.fullmatch(name):
            return _part_of_scope(leaf)
    return None


def _validate_scopes(scopes: Sequence[str]) -> list[str]:
    allowed = ", ".join(SCOPES)
    if isinstance(scopes, str):
        scopes = [scopes]
    if not scopes:
        raise ScopeError(f"no scopes given; choose one or more of: {allowed}")
    for scope in scopes:
        if scope not in SCOPES:
            raise ScopeError(f"unknown scope {scope!r}; allowed: {allowed}")
    return list(scopes)


def _match_leaves(model, model_type: str, leaves: Iterable[str]) -> tuple[dict[str, str], dict[str, int]]:
    """Modules matched by ``leaves`` (name -> part, model order) and how many each leaf matched."""
    compiled = _compiled(model_type)
    wanted = {leaf: compiled[leaf] for leaf in leaves if leaf in compiled}
    counts = dict.fromkeys(leaves, 0)
    modules: dict[str, str] = {}
    for name in _linear_modules(model):
        for leaf, rx in wanted.items():
            if rx.fullmatch(name):
                modules[name] = _part_of_scope(leaf)
                counts[leaf] += 1
                break
    return modules, counts


def _empty_reason(model_type: str, scope: str) -> str:
    reasons = _EMPTY_REASONS.get(model_type, {})
    found = [reasons[leaf] for leaf in _leaves_of(scope) if leaf in reasons]
    return "; ".join(found) if found else "its modules are not Linear layers or are absent from this model"


def resolve_scopes(model, model_type: str, scopes: Sequence[str]) -> Resolution:
    """Resolve scope words to the model's Linear modules.

    Raises ``ScopeError`` for an unknown scope word, an empty list, an unsupported ``model_type``, or a scope
    that matches no Linear module on this architecture (e.g. ``llm.mlp`` on Qwen3-VL-MoE).
    """
    scopes = _validate_scopes(scopes)
    leaves = list(dict.fromkeys(leaf for scope in scopes for leaf in _leaves_of(scope)))
    modules, counts = _match_leaves(model, model_type, leaves)
    for scope in scopes:
        if not any(counts[leaf] for leaf in _leaves_of(scope)):
            reason = _empty_reason(model_type, scope)
            raise ScopeError(f"scope {scope!r} matches no Linear module on {model_type}: {reason}")
    return Resolution(model_type=model_type, modules=modules)


def _closest(entry: str, candidates: Sequence[str], n: int = 3) -> list[str]:
    """Closest generic names to ``entry``, scoring each against its dotted tails too.

    A PEFT entry is usually a suffix, so comparing it only with whole paths would rank everything poorly.
    """

    def score(candidate: str) -> float:
        parts = candidate.split(".")
        tails = [".".join(parts[i:]) for i in range(len(parts))]
        return max(difflib.SequenceMatcher(None, entry, tail).ratio() for tail in tails)

    ranked = sorted(candidates, key=score, reverse=True)
    return ranked[:n]


def _peft_matches(entry: str, names: Iterable[str]) -> list[str]:
    """PEFT's list semantics: the full name equals the entry or ends with ``"." + entry``."""
    suffix = "." + entry
    return [name for name in names if name == entry or name.endswith(suffix)]


def _no_match_error(entry: str, model_type: str, targetable: Iterable[str]) -> ScopeError:
    generic = list(dict.fromkeys(_generic(name) for name in targetable))
    closest = ", ".join(_closest(entry, generic)) or "none"
    message = f"target_modules entry {entry!r} matches no module on {model_type}; closest: {closest}"
    reason = _EMPTY_REASONS.get(model_type, {}).get("llm.mlp")
    if reason and entry.rsplit(".", 1)[-1] in ("gate_proj", "up_proj", "down_proj"):
        message += f" ({reason})"
    return ScopeError(message)


def resolve_target_modules(model, model_type: str, names: Sequence[str]) -> Resolution:
    """Resolve a PEFT-style ``target_modules`` list (suffix semantics) to parts.

    Every entry must match at least one module, and every matched module must be a Linear layer of the llm,
    vision, projector or deepstack part; ``"all-linear"`` means every such layer (PEFT's meaning, lm_head
    excluded). Raises ``ScopeError`` naming the offending entry or module.
    """
    compiled = _compiled(model_type)
    if isinstance(names, str):
        if names != _ALL_LINEAR:
            raise ScopeError(
                f"target_modules must be a list of module names or {_ALL_LINEAR!r}, got {names!r}"
            )
        names = [_ALL_LINEAR]
    if not names:
        raise ScopeError("target_modules is empty; give module names such as q_proj or a scope word")
    linear = _linear_modules(model)
    targetable = {name: part for name in linear if (part := _leaf_part(name, compiled)) is not None}
    all_names = [name for name, _ in model.named_modules()]
    chosen: set[str] = set()
    for entry in names:
        if entry == _ALL_LINEAR:
            chosen.update(targetable)
            continue
        hits = _peft_matches(entry, all_names)
        if not hits:
            raise _no_match_error(entry, model_type, targetable)
        for hit in hits:
            if hit not in targetable:
                raise ScopeError(
                    f"target_modules entry {entry!r} matches {hit!r}, which is not a Linear layer of "
                    f"{'/'.join(PARTS)}; only those can be targeted (lm_head, embeddings, norms and "
                    "containers cannot)"
                )
        chosen.update(hits)
    modules = {name: part for name, part in targetable.items() if name in chosen}
    return Resolution(model_type=model_type, modules=modules)


def _strip_peft(name: str) -> str:
    name = name.removeprefix(_PEFT_PREFIX)
    stripped = _PEFT_SUFFIX.sub("", name)
    if stripped == name:
        stripped = _PARAM_LEAF.sub("", name)
    return stripped


def part_of(module_name: str, model_type: str) -> str | None:
    """The part (``llm``/``vision``/``projector``/``deepstack``) a module or parameter belongs to, else None.

    Accepts plain module names and PEFT-wrapped parameter names such as
    ``base_model.model.model.visual.blocks.0.attn.qkv.lora_A.default.weight``. Only targetable Linear layers
    have a part: ``lm_head``, embeddings and norms give None.
    """
    return _leaf_part(_strip_peft(module_name), _compiled(model_type))


def lora_params(in_features: int, out_features: int, r: int) -> int:
    """Trainable parameters LoRA adds to one Linear layer: A is r x in, B is out x r."""
    return r * (in_features + out_features)


def _base_params(module) -> int:
    # From the shape, not weight.numel(): a bitsandbytes 4-bit weight is packed and under-counts.
    bias = getattr(module, "bias", None)
    return module.in_features * module.out_features + (module.out_features if bias is not None else 0)


def account(model, resolution: Resolution, r: int) -> dict:
    """Parameter accounting for ``resolution`` on the (unwrapped) base ``model`` at LoRA rank ``r``.

    Returns ``{"total_params": int, "scopes": {part: {"modules", "base_params", "lora_params"}}}`` with all
    four parts present (zeros for a part with no targeted module). Tied weights are counted once.
    """
    scopes = {part: {"modules": 0, "base_params": 0, "lora_params": 0} for part in PARTS}
    for name, part in resolution.modules.items():
        module = model.get_submodule(name)
        entry = scopes[part]
        entry["modules"] += 1
        entry["base_params"] += _base_params(module)
        entry["lora_params"] += lora_params(module.in_features, module.out_features, r)
    total = sum(p.numel() for p in model.parameters())
    return {"total_params": total, "scopes": scopes}


def meta_model(config):
    """The ``ForConditionalGeneration`` model for ``config`` on the meta device: no weights, no memory."""
    import torch
    from transformers import AutoModelForImageTextToText

    _check_model_type(config.model_type)
    with torch.device("meta"):
        return AutoModelForImageTextToText.from_config(config)


def _looks_like_path(ref: str) -> bool:
    return ref.endswith(".json") or ref.startswith((".", "/", "~")) or Path(ref).exists()


def load_config(ref: str):
    """Load a transformers config from a config.json file, a directory holding one, or a hub id.

    Remote code is never trusted. Raises ``ScopeError`` with a clear message when it cannot be found or read.
    """
    from transformers import AutoConfig

    path = Path(ref).expanduser()
    if _looks_like_path(ref):
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise ScopeError(
                f"config not found: {path} (give a config.json, a directory with one, or a hub id)"
            )
        source = str(path)
    else:
        source = ref
    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=False)
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        raise ScopeError(f"cannot load config from {ref!r}: {exc}") from exc


def _full_resolution(model, model_type: str) -> tuple[Resolution, list[str]]:
    """Every part at its full scope, tolerating leaves this architecture lacks; notes say which and why."""
    modules, counts = _match_leaves(model, model_type, _LEAVES)
    notes = [
        f"{leaf}: 0 modules on {model_type} ({_empty_reason(model_type, leaf)})"
        for leaf in _LEAVES
        if counts[leaf] == 0
    ]
    return Resolution(model_type=model_type, modules=modules), notes


def inspect(ref: str, r: int = 16, scopes: Sequence[str] | None = None) -> dict:
    """Describe what LoRA at rank ``r`` would train on the model behind ``ref`` (config only, meta device).

    With ``scopes=None`` every part is resolved at its full scope; otherwise only the given scopes (other
    parts report zeros). Returns ``model_type``, ``total_params``, ``scopes`` (per-part counts as in
    ``account``), ``modules`` (per part, generic module names with ``N`` for layer indices) and ``notes``
    (scopes that matched nothing on this architecture, with the reason).
    """
    config = load_config(ref)
    model_type = config.model_type
    _check_model_type(model_type)
    model = meta_model(config)
    if scopes is None:
        resolution, notes = _full_resolution(model, model_type)
    else:
        resolution, notes = resolve_scopes(model, model_type, scopes), []
    counts = account(model, resolution, r)
    grouped = resolution.by_part()
    modules = {part: list(dict.fromkeys(_generic(n) for n in grouped.get(part, []))) for part in PARTS}
    return {
        "model_type": model_type,
        "total_params": counts["total_params"],
        "scopes": counts["scopes"],
        "modules": modules,
        "notes": notes,
    }
