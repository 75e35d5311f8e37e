"""Loading a spec: YAML with line numbers, ``--set`` overrides, the seed note's key names, validation.

Every problem is reported at once, each at the place to change it: ``spec.yaml:12: training.lora.r``,
``--set training.lora.r`` or, for data built in code, the bare dotted path. ``--set`` on a searched path
pins it: the path leaves ``search:`` (and ``study.enqueue``) and every trial trains the value given.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from ..errors import SpecError, UserError, UserErrors, raise_all
from . import paths, space, yamltext
from .schema import LR_PARTS, Spec, validate


def load(path: str | Path, overrides: list[str] = ()) -> Spec:
    """Read a spec file, apply ``--set path=value`` overrides, validate; raise every error at once."""
    return load_pinned(path, overrides)[0]


def load_pinned(path: str | Path, overrides: list[str] = ()) -> tuple[Spec, list[str]]:
    """:func:`load`, and the searched paths ``--set`` pinned (taken out of the search)."""
    path = Path(path)
    pinned: list[str] = []
    data, lines = yamltext.load(path)
    prefixes = {key: f"{path}:{line}: " for key, line in lines.items()}
    errors: list[UserError] = []
    data = _normalize_seed_style(data, lambda p: _where(prefixes, p, path), errors)
    for item in overrides:
        try:
            key, value = _parse_override(item)
        except UserError as e:
            errors.append(e)
            continue
        _set_override(data, key, value)
        pinned += _pin(data, key)
        prefixes = {k: v for k, v in prefixes.items() if not k.startswith((f"{key}.", f"{key}["))}
        prefixes[key] = "--set "
    spec = None
    try:
        spec = build(data, prefixes, path)
    except UserErrors as e:
        errors += e.errors
    except UserError as e:
        errors.append(e)
    raise_all(errors)
    return spec, pinned


def _pin(data: dict, key: str) -> list[str]:
    """Take the searched paths at or under ``key`` out of the search (and of ``study.enqueue``)."""
    search = data.get("search")
    if not isinstance(search, dict):
        return []
    pinned = [p for p in search if p == key or str(p).startswith(key + ".")]
    for path in pinned:
        del search[path]
    enqueue = data.get("study", {}).get("enqueue") if isinstance(data.get("study"), dict) else None
    for config in enqueue if isinstance(enqueue, list) else ():
        for path in pinned:
            if isinstance(config, dict):
                config.pop(path, None)
    return pinned


def build(data: dict, prefixes: dict[str, str] | None = None, path: Path | None = None) -> Spec:
    """Validate plain data as a spec and its search section, raising every error together.

    ``prefixes`` maps dotted paths to where they came from (``"spec.yaml:12: "`` or ``"--set "``).
    """
    prefixes = prefixes or {}
    where = lambda p: _where(prefixes, p, path)  # noqa: E731
    errors: list[UserError] = space.check_forms(data.get("search"), where)
    try:
        spec = validate({k: v for k, v in data.items() if k != "search"}, where)
    except UserErrors as e:
        raise_all(errors + e.errors)
    except UserError as e:
        raise_all([*errors, e])
    raise_all(errors)
    if data.get("search"):
        spec = spec.model_copy(update={"search": data["search"]})
    space.check_values(spec, where)
    return spec


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise SpecError("--set", f"expected path=value, got {item!r}")
    key, text = item.split("=", 1)
    key = key.strip()
    paths.check_path(Spec, key, f"--set {key}")
    return key, yamltext.parse_value(text, f"--set {key}")


def _set_override(data: dict, key: str, value: Any) -> None:
    if key.startswith("training.learning_rate.") and not isinstance(
        data.get("training", {}).get("learning_rate", {}), dict
    ):
        lr = data["training"]["learning_rate"]
        data["training"]["learning_rate"] = {part: lr for part in LR_PARTS}
    if key == "training.lora.scope":
        data.get("training", {}).get("lora", {}).pop("target_modules", None)
    if key == "training.lora.target_modules":
        data.get("training", {}).get("lora", {}).pop("scope", None)
    # An override of alpha (or alpha_ratio) replaces the spec's choice of the other.
    if key in ("training.lora.alpha", "training.lora.alpha_ratio"):
        other = "alpha_ratio" if key.endswith(".alpha") else "alpha"
        data.get("training", {}).get("lora", {}).pop(other, None)
    paths.set_in(data, key, value)


_SEED_SFT = {"learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps"}


def _normalize_seed_style(data: dict, where, errors: list[UserError]) -> dict:
    """Accept the seed note's keys (``use_4bit``, ``sft.*``, scalar ``learning_rate``) as canonical ones."""
    data = copy.deepcopy(data)
    training = data.get("training")
    if not isinstance(training, dict):
        return data
    if "use_4bit" in training:
        use_4bit = training.pop("use_4bit")
        if "quantization" in training:
            errors.append(SpecError(where("training.use_4bit"), "give use_4bit or quantization, not both"))
        elif not isinstance(use_4bit, bool):
            errors.append(SpecError(where("training.use_4bit"), f"must be true or false, got {use_4bit!r}"))
        else:
            training["quantization"] = "nf4" if use_4bit else "none"
    sft = training.pop("sft", None)
    if isinstance(sft, dict):
        for key, value in sft.items():
            if key not in _SEED_SFT:
                allowed = ", ".join(sorted(_SEED_SFT))
                errors.append(SpecError(where(f"training.sft.{key}"), f"unknown key (allowed: {allowed})"))
            elif key in training:
                errors.append(SpecError(where(f"training.sft.{key}"), f"also given as training.{key}"))
            else:
                training[key] = value
    elif sft is not None:
        errors.append(SpecError(where("training.sft"), "must be a mapping"))
    lr = training.get("learning_rate")
    if isinstance(lr, (int, float)) and not isinstance(lr, bool):
        training["learning_rate"] = {part: lr for part in LR_PARTS}
    return data


def _where(prefixes: dict[str, str], dotted: str, path: Path | None = None) -> str:
    probe = dotted
    while probe:
        if probe in prefixes:
            return prefixes[probe] + dotted
        probe = probe.rsplit(".", 1)[0] if "." in probe else ""
    return f"{path}: {dotted}" if path else dotted
