"""The study spec: strict, typed sections, loaded from YAML plus ``--set`` overrides.

Dotted paths such as ``training.lora.r`` are the one path language: ``--set``, ``search:`` keys, error
messages and trial params all use them. The spec is validated once on the driver and frozen; workers get
``spec.to_dict()`` and rebuild the same object with :meth:`Spec.from_dict`.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import SpecError, UserError, UserErrors, raise_all

Positive = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Scope = Literal["llm", "llm.attn", "llm.mlp", "vision", "vision.attn", "vision.mlp", "projector", "deepstack"]
LR_PARTS = ("llm", "vision", "projector")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, validate_default=True)


class Objective(_Section):
    metric: Literal["eval/loss", "eval/click_acc", "train/loss"] = "eval/loss"
    """The metric the study optimizes, as reported by every trial."""
    mode: Literal["min", "max"] = "min"


class Sampler(_Section):
    type: Literal["tpe", "random"] = "tpe"
    """``tpe``: multivariate, grouped TPE (conditional spaces); ``random``: a baseline."""
    seed: int = 0


class Scheduler(_Section):
    type: Literal["asha", "fifo"] = "asha"
    """``asha`` stops weak trials at rungs of the reported training step; ``fifo`` never stops early."""
    grace_steps: Positive | None = None
    """Steps every trial runs before it can be stopped (default: ``training.eval_every``)."""
    reduction_factor: Annotated[float, Field(gt=1)] = 2.0


class Study(_Section):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)] = "raylora-study"
    """Names the study folder under ``storage``, the Optuna study and the MLflow experiment."""
    objective: Objective = Objective()
    num_trials: Positive = 8
    max_concurrent_trials: Literal["auto"] | Positive = "auto"
    """``auto``: as many trials as the cluster's resources hold at once."""
    sampler: Sampler = Sampler()
    scheduler: Scheduler = Scheduler()
    storage: str = "raylora_studies"
    """A local path, on a multi-node cluster a shared one (NFS/EFS mounted on every node), or a pyarrow
    filesystem URI (``s3://bucket/prefix``, ``gs://bucket/prefix``, query parameters allowed)."""


class Model(_Section):
    name_or_path: str = "builtin:tiny-qwen3-vl"
    """A hub id, a local checkpoint folder, or ``builtin:tiny-qwen3-vl``."""
    revision: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """``auto``: bfloat16 on GPUs that support it, float32 on CPU."""
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    trust_remote_code: bool = False


class Image(_Section):
    min_pixels: Positive | None = None
    """Smallest image area after resizing (one visual token per 32×32 pixels on Qwen3-VL)."""
    max_pixels: Positive | None = None
    """Largest image area after resizing; the main knob on image tokens and vision memory."""

    @model_validator(mode="after")
    def _ordered(self) -> Image:
        if self.min_pixels and self.max_pixels and self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels ({self.min_pixels}) must be <= max_pixels ({self.max_pixels})")
        return self


class Data(_Section):
    train: str = "builtin:gui-grounding"
    """JSONL or Parquet of chat records, or ``builtin:gui-grounding``."""
    eval: str | None = "builtin:gui-grounding"
    image: Image = Image()
    max_length: Positive = 2048
    """Longer samples are dropped and counted, never truncated (an image span must stay whole)."""
    eval_samples: Positive | None = None
    """Evaluate on at most this many eval records (default: all)."""


class Resources(_Section):
    workers_per_trial: Positive = 1
    cpus_per_worker: PositiveFloat = 1.0
    gpus_per_worker: Annotated[float, Field(ge=0)] = 0.0
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    strategy: Literal["ddp", "fsdp"] = "ddp"
    max_failures: Annotated[int, Field(ge=0)] = 0
    """Worker failures a trial survives, restarting from its latest adapter checkpoint."""
    gpu_memory_gb: PositiveFloat | None = None
    """Memory of one GPU (GiB). When set, sampled trials whose estimated peak cannot fit are marked
    INFEASIBLE without launching (see ``raylora estimate``)."""


class Lora(_Section):
    enabled: Literal[True] = True
    """Accepted for seed-style configs; raylora always trains a LoRA adapter."""
    r: Positive = 16
    alpha: PositiveFloat | None = None
    """LoRA alpha; default ``2 × r`` (or ``alpha_ratio × r``)."""
    alpha_ratio: PositiveFloat | None = None
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.05
    scope: Annotated[list[Scope], Field(min_length=1)] = ["llm"]
    """Parts LoRA trains: llm, llm.attn, llm.mlp, vision, vision.attn, vision.mlp, projector, deepstack."""
    target_modules: Annotated[list[str], Field(min_length=1)] | None = None
    """PEFT-style module names instead of ``scope``; each must match a real module."""

    @model_validator(mode="after")
    def _one_alpha(self) -> Lora:
        if self.alpha is not None and self.alpha_ratio is not None:
            raise ValueError("give alpha or alpha_ratio, not both")
        return self

    @property
    def lora_alpha(self) -> float:
        """The alpha PEFT gets."""
        if self.alpha is not None:
            return self.alpha
        return (self.alpha_ratio or 2.0) * self.r


class LearningRate(_Section):
    llm: PositiveFloat = 2e-4
    vision: PositiveFloat = 2e-5
    projector: PositiveFloat = 1e-4
    """Used for the projector (merger) and the deepstack mergers."""


class Training(_Section):
    max_steps: Positive = 100
    eval_every: Positive = 25
    per_device_train_batch_size: Positive = 1
    per_device_eval_batch_size: Positive = 4
    gradient_accumulation_steps: Positive = 1
    gradient_checkpointing: bool = True
    """Non-reentrant activation checkpointing (reentrant starves vision LoRA of gradients)."""
    quantization: Literal["none", "nf4", "nf4-llm-only"] = "none"
    """``nf4``: 4-bit base weights but lm_head; ``nf4-llm-only`` keeps vision and mergers unquantized too."""
    lora: Lora = Lora()
    learning_rate: LearningRate = LearningRate()
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    warmup_steps: Annotated[int, Field(ge=0)] = 0
    lr_scheduler: Literal["constant", "linear", "cosine"] = "cosine"
    max_grad_norm: PositiveFloat | None = 1.0
    seed: int = 0
    click_eval_samples: Annotated[int, Field(ge=0)] = 16
    """Eval records scored by greedy generation for ``eval/click_acc`` (0 turns it off)."""
    max_new_tokens: Positive = 24

    @model_validator(mode="after")
    def _eval_within_run(self) -> Training:
        if self.eval_every > self.max_steps:
            raise ValueError(f"eval_every ({self.eval_every}) must be <= max_steps ({self.max_steps})")
        return self


class Tracking(_Section):
    tracking_uri: str | None = None
    """MLflow tracking URI; default a SQLite store in the study folder."""
    experiment: str | None = None
    """Default: the study name."""
    registered_model: str | None = None


class Spec(_Section):
    """A whole study: what to train, on what, with which resources, and what to search."""

    study: Study = Study()
    model: Model = Model()
    data: Data = Data()
    resources: Resources = Resources()
    training: Training = Training()
    search: dict[str, Any] = {}
    """Dotted spec path → distribution; checked by ``raylora.space``."""
    tracking: Tracking = Tracking()

    def to_dict(self) -> dict:
        """Plain data that :meth:`from_dict` turns back into the same spec."""
        return self.model_dump(mode="python", exclude_unset=True)

    @classmethod
    def from_dict(cls, data: dict) -> Spec:
        """Rebuild a spec already validated elsewhere (e.g. on the driver)."""
        return cls.model_validate(data)

    def get(self, path: str) -> Any:
        """The value at a dotted path."""
        value: Any = self
        for part in path.split("."):
            value = getattr(value, part)
        return value

    def with_values(self, values: dict[str, Any]) -> Spec:
        """A concrete spec (no ``search`` section) with dotted-path values set, validated."""
        data = self.model_dump(mode="python", exclude_unset=True, exclude={"search"})
        for path, value in values.items():
            _set_path(data, path, value)
        return build(data)

    def flat(self) -> dict[str, Any]:
        """Every leaf as ``{dotted.path: value}`` (the search section excluded)."""
        out: dict[str, Any] = {}
        _flatten(self.model_dump(mode="python", exclude={"search"}), "", out)
        return out


# -- the path language -------------------------------------------------------------------------------


def leaf_paths(model: type[BaseModel] = Spec, prefix: str = "") -> list[str]:
    """Every settable dotted path of the spec (``search`` excluded)."""
    paths = []
    for name, field in model.model_fields.items():
        if model is Spec and name == "search":
            continue
        path = f"{prefix}{name}"
        sub = _section_type(field.annotation)
        paths.extend(leaf_paths(sub, path + ".") if sub else [path])
    return paths


def check_path(path: str, where: str) -> None:
    """Raise a SpecError naming the unknown part of ``path`` and the closest real paths."""
    model: type[BaseModel] | None = Spec
    done = []
    for part in path.split("."):
        if model is None:
            raise SpecError(where, f"{'.'.join(done)} is a value, not a section; {path!r} is not a spec path")
        fields = {n: f for n, f in model.model_fields.items() if not (model is Spec and n == "search")}
        if part not in fields:
            prefix = ".".join(done)
            allowed = ", ".join(fields)
            close = difflib.get_close_matches(path, leaf_paths(), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            at = f" under {prefix}" if prefix else ""
            raise SpecError(where, f"unknown key {part!r}{at} (allowed: {allowed}){hint}")
        model = _section_type(fields[part].annotation)
        done.append(part)
    if model is not None:
        raise SpecError(where, f"{path} is a section, not a value; set one of its keys")


def _section_type(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, _Section):
        return annotation
    return None


def _set_path(data: dict, path: str, value: Any) -> None:
    parts = path.split(".")
    node = data
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def _flatten(data: Any, prefix: str, out: dict) -> None:
    if isinstance(data, dict) and data:
        for key, value in data.items():
            _flatten(value, f"{prefix}.{key}" if prefix else key, out)
    else:
        out[prefix] = data


# -- loading -------------------------------------------------------------------------------------------


def load(path: str | Path, overrides: list[str] = ()) -> Spec:
    """Read a spec file, apply ``--set path=value`` overrides, validate; raise every error at once."""
    from . import yamltext

    path = Path(path)
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
    return spec


def build(data: dict, prefixes: dict[str, str] | None = None, path: Path | None = None) -> Spec:
    """Validate plain data as a spec and its search section, raising every error together.

    ``prefixes`` maps dotted paths to where they came from (``"spec.yaml:12: "`` or ``"--set "``).
    """
    from . import space

    prefixes = prefixes or {}
    where = lambda p: _where(prefixes, p, path)  # noqa: E731
    errors: list[UserError] = space.check_forms(data.get("search"), where)
    try:
        spec = Spec.model_validate(data)
    except ValidationError as e:
        errors += [_spec_error(err, where) for err in e.errors() if err["loc"][:1] != ("search",)]
        raise_all(errors)
    raise_all(errors + _cross_checks(spec, where))
    space.check_values(spec, where)
    return spec


def _cross_checks(spec: Spec, where: Callable[[str], str]) -> list[UserError]:
    """Rules that span sections, each reported at the path to change."""
    errors: list[UserError] = []
    lora = spec.training.lora
    if lora.target_modules is not None and "scope" in lora.model_fields_set:
        errors.append(SpecError(where("training.lora"), "give scope or target_modules, not both"))
    if spec.resources.strategy == "fsdp":
        errors.append(
            SpecError(
                where("resources.strategy"),
                "fsdp is not implemented yet: trials run DDP (use ddp, or nf4 to fit a GPU)",
            )
        )
    metric = spec.study.objective.metric
    if metric.startswith("eval/") and spec.data.eval is None:
        errors.append(
            SpecError(where("study.objective.metric"), f"{metric} needs data.eval (or use train/loss)")
        )
    if metric == "eval/click_acc" and spec.training.click_eval_samples == 0:
        errors.append(
            SpecError(where("study.objective.metric"), "eval/click_acc needs training.click_eval_samples > 0")
        )
    return errors


def _parse_override(item: str) -> tuple[str, Any]:
    from . import yamltext

    if "=" not in item:
        raise SpecError("--set", f"expected path=value, got {item!r}")
    key, text = item.split("=", 1)
    key = key.strip()
    check_path(key, f"--set {key}")
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
    _set_path(data, key, value)


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


def _spec_error(err: dict, where: Callable[[str], str]) -> SpecError:
    dotted = ""
    for part in err["loc"]:
        if isinstance(part, int):
            dotted += f"[{part}]"
        elif part in _PYDANTIC_UNION_TAGS or part.startswith(("literal[", "function-")):
            continue
        else:
            dotted = f"{dotted}.{part}" if dotted else str(part)
    at = where(dotted or "spec")
    kind, value = err["type"], err.get("input")
    if kind == "extra_forbidden":
        return SpecError(at, f"unknown key (allowed: {', '.join(_allowed_keys(dotted))})")
    message = err["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
    message = message[0].lower() + message[1:]
    if kind in ("missing", "model_type", "dict_type") or isinstance(value, dict):
        return SpecError(at, message)
    return SpecError(at, f"{message}, got {value!r}")


_PYDANTIC_UNION_TAGS = ("int", "float", "str", "list[...]", "bool", "constrained-int", "constrained-float")


def _allowed_keys(dotted: str) -> list[str]:
    parent = dotted.rsplit(".", 1)[0] if "." in dotted else ""
    model: type[BaseModel] | None = Spec
    for part in parent.split(".") if parent else []:
        field = model.model_fields.get(part) if model else None
        model = _section_type(field.annotation) if field else None
    return list(model.model_fields) if model else []
