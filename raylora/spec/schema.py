"""The study spec's schema: strict, typed, frozen sections, and the rules that span them.

The spec is validated once on the driver and frozen; workers get ``spec.to_dict()`` and rebuild the same
object with :meth:`Spec.from_dict`. :func:`validate` turns pydantic's errors into ``SpecError`` objects that
name the dotted path (see :mod:`raylora.spec.paths`) and report every problem at once.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import SpecError, UserError, raise_all
from . import metrics, paths

Positive = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Scope = Literal["llm", "llm.attn", "llm.mlp", "vision", "vision.attn", "vision.mlp", "projector", "deepstack"]
LR_PARTS = ("llm", "vision", "projector")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, validate_default=True)


class Objective(_Section):
    metric: Literal[metrics.OBJECTIVES] = metrics.EVAL_LOSS
    """The metric the study optimizes, as reported by every trial (``eval/type_acc``/``eval/step_acc``:
    navigation records, see :mod:`raylora.data.scoring`; ``cost/*``: :mod:`raylora.train.cost`)."""
    mode: Literal["min", "max"] = "min"


class Sampler(_Section):
    type: Literal["tpe", "random", "nsga2"] = "tpe"
    """``tpe``: multivariate, grouped TPE (conditional spaces; multi-objective too); ``random``: a baseline;
    ``nsga2``: NSGA-II, for ``study.objectives``."""
    seed: int = 0


class Scheduler(_Section):
    type: Literal["asha", "fifo"] = "asha"
    """``asha`` stops weak trials at rungs of the reported training step; ``fifo`` never stops early."""
    grace_steps: Positive | Literal["auto"] | None = None
    """Steps every trial runs before it can be stopped (default: ``training.eval_every``). ``auto``: the
    first evaluation at or after 15% of ``max_steps`` (:data:`raylora.study.stopping.AUTO_GRACE_FRACTION`),
    which on replayed public curves stops a top-1% configuration about 5x less often but needs more
    accelerator-hours to reach the same best (``benchmarks/RESULTS.md``)."""
    reduction_factor: Annotated[float, Field(gt=1)] = 2.0
    bound: Literal["none", "largest_gain"] = "none"
    """``largest_gain``: ASHA stops a trial only if it could not reach the best finished trial's value even
    after the largest improvement a finished trial made after the same step
    (:class:`raylora.study.bounded_asha.BoundedASHA`); one objective only (several: Pareto rank decides).
    Replayed on public curves it stopped a top-1% configuration about 3x less often than plain ASHA for
    slightly more accelerator-hours to the same best (``benchmarks/RESULTS.md``)."""


_CONSTRAINT = re.compile(r"^\s*(<=|>=)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


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
    enqueue: list[dict[str, Any]] = []
    """Configurations run first, in order, each ``{search path: value}`` (Optuna's ``enqueue_trial``);
    searched paths a configuration leaves out are sampled."""
    warm_start: list[str] = []
    """Earlier studies (folders or URIs) whose finished trials the sampler learns from before the first
    trial (Optuna's ``add_trials``); their searched parameters must fit this study's search space."""
    objectives: Annotated[list[Objective], Field(min_length=1, max_length=3)] | None = None
    """One to three objectives (instead of ``objective``), e.g. ``eval/loss`` against ``cost/peak_mem_gb``:
    Optuna's multi-objective TPE or NSGA-II; ASHA stops trials by Pareto rank across all of them
    (:class:`raylora.study.stopping.ParetoASHA`); ``summary.json`` gets the
    ``pareto_front``."""
    constraints: dict[str, str] = {}
    """``{metric: "<= value" | ">= value"}``, e.g. ``cost/peak_mem_gb: "<= 40"``: trials outside are
    infeasible for the sampler (Optuna's constraints) and never on the Pareto front."""

    @model_validator(mode="before")
    @classmethod
    def _first_objective(cls, data: Any) -> Any:
        # With objectives, ``objective`` is the first: what ASHA prunes on and what single-valued code reads.
        if isinstance(data, dict) and data.get("objectives") and "objective" not in data:
            return {**data, "objective": data["objectives"][0]}
        return data

    @property
    def goals(self) -> list[Objective]:
        """Every objective, first (the one ASHA prunes on) first."""
        return list(self.objectives) if self.objectives else [self.objective]

    def constraint_limits(self) -> dict[str, tuple[str, float]]:
        """``{metric: (operator, value)}`` from ``constraints``."""
        out = {}
        for metric, text in self.constraints.items():
            found = _CONSTRAINT.match(text)
            if found:
                out[metric] = (found[1], float(found[2]))
        return out


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
    """A dataset file (JSONL, JSON array, Parquet), ``path/dataset_info.json#NAME``, or
    ``builtin:gui-grounding``."""
    eval: str | None = "builtin:gui-grounding"
    format: Literal["auto", "chat", "sharegpt", "qwen", "screenspot", "screenspot-pro", "hf"] = "auto"
    """How the records are written (``auto``: detected from the first record): chat, sharegpt, qwen,
    screenspot, screenspot-pro; ``hf`` for a Hugging Face dataset (a ``save_to_disk`` folder, Parquet/Arrow
    shards, or ``hf://ORG/NAME[#SPLIT]``) whose records are detected (see ``raylora.data.formats``)."""
    columns: dict[str, str] = {}
    """Column renames, the format's name to the dataset's: ``{img_filename: image_path}``."""
    coordinates: Literal["qwen3vl", "mai-ui", "pixels", "resized-pixels", "unit"] = "qwen3vl"
    """The coordinate convention of the data's answers and boxes (and of ``click`` answers made from
    grounding annotations): qwen3vl 0–1000, mai-ui 0–999, pixels of the image, pixels of the
    processor-resized image, unit 0–1."""
    categories: list[str] | None = None
    """The record fields per-category metrics split by (``by`` in ``raylora score --json``, in every
    format); default ``data_type``, ``ui_type``, ``platform``, ``application``, ``group``, ``data_source``."""
    template: Literal["click", "qwen3vl", "mai-ui"] = "click"
    """How grounding annotations (ScreenSpot) become prompt and answer: ``click(x, y)``, Qwen3-VL's
    ``{"point_2d": [x, y]}`` (0–1000), or MAI-UI's ``<answer>{"coordinate": [x, y]}</answer>`` (0–999)."""
    image: Image = Image()
    max_length: Positive = 2048
    """Longer samples are dropped and counted, never truncated (an image span must stay whole)."""
    eval_samples: Positive | None = None
    """Intermediate evaluations use at most this many eval records (default: all); each trial's final
    evaluation uses the whole eval set."""
    loader_workers: Annotated[int, Field(ge=0)] | None = None
    """DataLoader processes per training worker that decode and process screenshots ahead of the step
    (0: in the training process itself). Default: the worker's other CPUs, ``resources.cpus_per_worker``
    − 1 (so 7 for 8 CPUs per GPU worker; 0 for the fractional CPUs of a laptop study)."""

    @model_validator(mode="after")
    def _resized_bounds(self) -> Data:
        if self.coordinates == "resized-pixels" and not (self.image.min_pixels and self.image.max_pixels):
            raise ValueError(
                "coordinates resized-pixels are pixels of the image resized within data.image's bounds: set "
                "data.image.min_pixels and data.image.max_pixels"
            )
        return self

    def reading(self) -> dict:
        """How to read the data files, as keyword arguments of ``raylora.data.samples.read`` and
        ``problems`` and of ``raylora.train.loader.open_split``."""
        return {
            "fmt": self.format,
            "coordinates": self.coordinates,
            "template": self.template,
            "columns": dict(self.columns),
            "categories": self.categories,
        }


class Resources(_Section):
    workers_per_trial: Positive = 1
    cpus_per_worker: PositiveFloat = 1.0
    gpus_per_worker: Annotated[float, Field(ge=0)] = 0.0
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    sharding: Literal["none", "fsdp"] = "none"
    """``none``: every worker holds the whole base model (DDP); ``fsdp``: the base model, LoRA, gradients
    and optimizer state are sharded across the trial's workers (FSDP2), for models one accelerator cannot
    hold (see ``raylora estimate``)."""
    offload_params: bool = False
    """With ``sharding: fsdp``: keep parameter shards and optimizer state in host memory between uses."""
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
    """Optimizer steps per trial."""
    init_adapter: str | None = None
    """Start each trial from an earlier adapter (a folder, or ``study:NAME:best`` in the same storage):
    modules it has keep their weights, newly added scopes start fresh (a staged study: LLM-only first)."""
    eval_every: Positive = 25
    """Evaluate (and checkpoint) every this many steps, and always at the last step; larger than
    ``max_steps`` means at the end only."""
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
    """Eval records an intermediate evaluation answers by greedy generation for ``eval/click_acc``,
    ``eval/format_error_rate``, ``eval/type_acc`` and ``eval/step_acc`` (the final evaluation answers
    them all; 0 turns generation off)."""
    max_new_tokens: Positive = 24


class Tracking(_Section):
    tracking_uri: str | None = None
    """MLflow tracking URI; default ``$MLFLOW_TRACKING_URI``, else the store the study recorded (on
    ``--resume``), else ``sqlite:///<study.storage>/mlflow.db``. ``--tracking-uri`` overrides it."""
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
    """Dotted spec path → distribution; checked by :mod:`raylora.spec.space`."""
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
        return paths.get(self, path)

    def with_values(self, values: dict[str, Any]) -> Spec:
        """A concrete spec (no ``search`` section) with dotted-path values set, validated."""
        data = self.model_dump(mode="python", exclude_unset=True, exclude={"search"})
        for path, value in values.items():
            paths.set_in(data, path, value)
        return validate(data)

    def flat(self) -> dict[str, Any]:
        """Every leaf as ``{dotted.path: value}`` (the search section excluded)."""
        return paths.flatten(self.model_dump(mode="python", exclude={"search"}))


# -- validation ----------------------------------------------------------------------------------------


def validate(data: dict, where: Callable[[str], str] = lambda p: p) -> Spec:
    """Plain data → a frozen spec; every schema and cross-section problem raised together, each at
    ``where(dotted_path)``. The search section's entries are checked by :mod:`raylora.spec.space`."""
    try:
        spec = Spec.model_validate(data)
    except ValidationError as e:
        raise_all([_spec_error(err, where) for err in e.errors() if err["loc"][:1] != ("search",)])
        raise
    raise_all(_cross_checks(spec, where))
    return spec


def _cross_checks(spec: Spec, where: Callable[[str], str]) -> list[UserError]:
    """Rules that span sections, each reported at the path to change."""
    errors: list[UserError] = []
    lora = spec.training.lora
    if lora.target_modules is not None and "scope" in lora.model_fields_set:
        errors.append(SpecError(where("training.lora"), "give scope or target_modules, not both"))
    errors += _sharding_checks(spec, where)
    errors += _objective_checks(spec.study, where)
    if spec.training.init_adapter and spec.resources.sharding == "fsdp":
        errors.append(SpecError(where("training.init_adapter"), "not with resources.sharding: fsdp yet"))
    generated = metrics.GENERATED
    for i, goal in enumerate(spec.study.goals):
        at = f"study.objectives[{i}]" if spec.study.objectives else "study.objective"
        metric = goal.metric
        if metric.startswith("eval/") and spec.data.eval is None:
            errors.append(SpecError(where(f"{at}.metric"), f"{metric} needs data.eval (or use train/loss)"))
        if metric in generated and spec.training.click_eval_samples == 0:
            errors.append(SpecError(where(f"{at}.metric"), f"{metric} needs training.click_eval_samples > 0"))
        better = "min" if metric.endswith(("loss", "error_rate")) else "max"
        if metric in generated and goal.mode != better:
            errors.append(
                SpecError(
                    where(f"{at}.mode"),
                    f"{metric} is better {'higher' if better == 'max' else 'lower'}: use mode: {better}",
                )
            )
    return errors


def _sharding_checks(spec: Spec, where: Callable[[str], str]) -> list[UserError]:
    resources = spec.resources
    if resources.sharding == "none":
        if resources.offload_params:
            return [SpecError(where("resources.offload_params"), "needs resources.sharding: fsdp")]
        return []
    if resources.workers_per_trial < 2:
        return [
            SpecError(
                where("resources.sharding"),
                "fsdp shards a trial across its workers: set resources.workers_per_trial >= 2",
            )
        ]
    if spec.training.quantization != "none" and resources.offload_params:
        # Offloading would move bitsandbytes' packed 4-bit shards to the host, away from its CUDA kernels.
        return [
            SpecError(
                where("resources.offload_params"),
                f"does not combine with training.quantization: {spec.training.quantization} "
                "(4-bit shards stay on the GPU)",
            )
        ]
    return []


def _objective_checks(study: Study, where: Callable[[str], str]) -> list[UserError]:
    errors: list[UserError] = []
    metrics = [o.metric for o in study.goals]
    if study.objectives and study.objective != study.objectives[0]:
        errors.append(SpecError(where("study.objectives"), "give objective or objectives, not both"))
    if len(set(metrics)) != len(metrics):
        errors.append(SpecError(where("study.objectives"), f"each metric once, got {metrics}"))
    allowed = Objective.model_fields["metric"].annotation.__args__
    for metric, text in study.constraints.items():
        at = where(f"study.constraints.{metric}")
        if metric not in allowed:
            errors.append(SpecError(at, f"unknown metric (allowed: {', '.join(allowed)})"))
        elif not _CONSTRAINT.match(text):
            errors.append(SpecError(at, f'must be "<= number" or ">= number", got {text!r}'))
    if study.sampler.type == "nsga2" and not study.objectives:
        errors.append(SpecError(where("study.sampler.type"), "nsga2 is for study.objectives; use tpe"))
    if study.scheduler.bound != "none" and len(study.goals) > 1:
        errors.append(
            SpecError(
                where("study.scheduler.bound"),
                f"{study.scheduler.bound} is for one objective (with study.objectives, Pareto rank "
                "decides); use none",
            )
        )
    return errors


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
        return SpecError(at, f"unknown key (allowed: {', '.join(paths.allowed_keys(Spec, dotted))})")
    message = err["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
    message = message[0].lower() + message[1:]
    if kind in ("missing", "model_type", "dict_type") or isinstance(value, dict):
        return SpecError(at, message)
    return SpecError(at, f"{message}, got {value!r}")


_PYDANTIC_UNION_TAGS = ("int", "float", "str", "list[...]", "bool", "constrained-int", "constrained-float")
