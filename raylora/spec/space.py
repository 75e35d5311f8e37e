"""The search space: ``spec.search`` → distributions → an Optuna define-by-run function.

Each key of ``search:`` is a dotted spec path and gets one distribution::

    training.lora.r: {choice: [8, 16, 32]}
    training.learning_rate.llm: {loguniform: [5e-5, 5e-4]}
    training.lora.dropout: {uniform: [0.0, 0.1]}
    training.max_steps: {int: [20, 60], step: 10}

``training.learning_rate.<part>`` is sampled only when ``<part>`` is in the trial's scope (a vision
learning rate means nothing for an llm-only trial), which is why the space is define-by-run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import SpecError, UserError, UserErrors, raise_all
from . import paths
from .schema import Spec

if TYPE_CHECKING:
    import optuna

_FORBIDDEN_SECTIONS = ("study.", "tracking.", "resources.")
_SCOPE_PARTS = {"llm": "llm", "vision": "vision", "projector": "projector", "deepstack": "projector"}


@dataclass(frozen=True)
class Choice:
    values: tuple

    def suggest(self, trial: optuna.Trial, path: str) -> Any:
        encoded = [_encode(v) for v in self.values]
        picked = trial.suggest_categorical(path, encoded)
        return self.values[encoded.index(picked)]

    def candidates(self) -> tuple:
        return self.values

    def contains(self, value: Any) -> bool:
        return _encode(value) in self.encoded()

    def encoded(self) -> list:
        """The choices as Optuna stores them."""
        return [_encode(v) for v in self.values]

    def describe(self) -> str:
        return f"choice {list(self.values)}"


@dataclass(frozen=True)
class Uniform:
    low: float
    high: float
    log: bool = False

    def suggest(self, trial: optuna.Trial, path: str) -> float:
        return trial.suggest_float(path, self.low, self.high, log=self.log)

    def candidates(self) -> tuple:
        return (self.low, self.high)

    def contains(self, value: Any) -> bool:
        return _is_number(value) and self.low <= value <= self.high

    def describe(self) -> str:
        return f"{'loguniform' if self.log else 'uniform'} [{self.low:g}, {self.high:g}]"


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int
    step: int = 1

    def suggest(self, trial: optuna.Trial, path: str) -> int:
        return trial.suggest_int(path, self.low, self.high, step=self.step)

    def candidates(self) -> tuple:
        return (self.low, self.high)

    def contains(self, value: Any) -> bool:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return ok and self.low <= value <= self.high and (value - self.low) % self.step == 0

    def describe(self) -> str:
        return f"int [{self.low}, {self.high}] step {self.step}"


Distribution = Choice | Uniform | IntRange


def parse(path: str, raw: Any, where: str) -> Distribution:
    """One ``search:`` entry → a distribution, or a SpecError saying what is allowed."""
    forms = "{choice: [...]}, {uniform: [lo, hi]}, {loguniform: [lo, hi]} or {int: [lo, hi], step: k}"
    if not isinstance(raw, dict) or not raw:
        raise SpecError(where, f"must be one of {forms}, got {raw!r}")
    kinds = [k for k in raw if k in ("choice", "uniform", "loguniform", "int")]
    extra = [k for k in raw if k not in ("choice", "uniform", "loguniform", "int", "step")]
    if len(kinds) != 1 or extra or ("step" in raw and kinds != ["int"]):
        raise SpecError(where, f"must be one of {forms}, got {raw!r}")
    kind, value = kinds[0], raw[kinds[0]]
    if kind == "choice":
        if not isinstance(value, list) or not value:
            raise SpecError(f"{where}.choice", f"must be a non-empty list, got {value!r}")
        return Choice(tuple(value))
    if not (isinstance(value, list) and len(value) == 2 and all(_is_number(v) for v in value)):
        raise SpecError(f"{where}.{kind}", f"must be [low, high] numbers, got {value!r}")
    low, high = value
    if not low < high:
        raise SpecError(f"{where}.{kind}", f"low < high must hold, got [{low}, {high}]")
    if kind == "int":
        step = raw.get("step", 1)
        if not all(isinstance(v, int) for v in (low, high, step)) or step <= 0:
            raise SpecError(f"{where}.int", f"low, high and step must be integers, step > 0; got {raw!r}")
        return IntRange(low, high, step)
    if kind == "loguniform" and low <= 0:
        raise SpecError(f"{where}.loguniform", f"low > 0 must hold on a log scale, got [{low}, {high}]")
    return Uniform(float(low), float(high), log=kind == "loguniform")


def distributions(spec: Spec) -> dict[str, Distribution]:
    """The parsed search section (assumes :func:`check` passed)."""
    return {path: parse(path, raw, f"search.{path}") for path, raw in spec.search.items()}


def check_forms(search: Any, where: Callable[[str], str] = lambda p: p) -> list[UserError]:
    """Problems in the raw ``search:`` section that need no valid spec: unknown paths and bad forms."""
    if search is None:
        return []
    if not isinstance(search, dict):
        return [SpecError(where("search"), f"must map spec paths to distributions, got {search!r}")]
    errors: list[UserError] = []
    for path, raw in search.items():
        at = where(f"search.{path}")
        try:
            if str(path).startswith(_FORBIDDEN_SECTIONS):
                raise SpecError(
                    at, "study, resources and tracking are fixed; search training, model or data paths"
                )
            paths.check_path(Spec, str(path), at)
            parse(path, raw, at)
        except UserError as e:
            errors.append(e)
    return errors


def check_values(spec: Spec, where: Callable[[str], str] = lambda p: p) -> None:
    """Every sampled value the spec would reject (checked at each choice and at both range ends)."""
    errors: list[UserError] = []
    for path, dist in distributions(spec).items():
        at = where(f"search.{path}")
        for value in dist.candidates():
            try:
                _check_value(spec, path, value, at)
            except UserError as e:
                errors.append(e)
                break
    errors += check_enqueue(spec, where)
    if "training.lora.scope" in spec.search and spec.training.lora.target_modules is not None:
        errors.append(
            SpecError(
                where("search.training.lora.scope"),
                "cannot search scope when training.lora.target_modules is fixed",
            )
        )
    raise_all(errors)


def check_enqueue(spec: Spec, where: Callable[[str], str] = lambda p: p) -> list[UserError]:
    """Problems in ``study.enqueue``: paths that are not searched, values outside their distribution, a
    learning rate for a part the configuration's scope does not train."""
    dists = distributions(spec)
    errors: list[UserError] = []
    for i, config in enumerate(spec.study.enqueue):
        at = where(f"study.enqueue[{i}]")
        scope = config.get("training.lora.scope", spec.training.lora.scope)
        for path, value in config.items():
            dist = dists.get(path)
            if dist is None:
                searched = ", ".join(dists) or "nothing"
                errors.append(SpecError(at, f"{path} is not searched (search: {searched})"))
            elif not dist.contains(value):
                errors.append(SpecError(at, f"{path}: {value!r} is outside {dist.describe()}"))
            elif path.startswith("training.learning_rate.") and isinstance(scope, list):
                part = path.rsplit(".", 1)[1]
                if part not in trained_parts(scope):
                    errors.append(SpecError(at, f"{path}: scope {scope} does not train {part}"))
    return errors


def encode(spec: Spec, values: dict[str, Any]) -> dict[str, Any]:
    """Dotted-path values → Optuna's stored params (the inverse of :func:`decode`)."""
    dists = distributions(spec)
    return {p: _encode(v) if isinstance(dists.get(p), Choice) else v for p, v in values.items()}


def _check_value(spec: Spec, path: str, value: Any, at: str) -> None:
    try:
        spec.with_values({path: value})
    except UserErrors as e:
        raise SpecError(at, f"value {value!r} is not valid: {e.errors[0]}") from None
    except UserError as e:
        raise SpecError(at, f"value {value!r} is not valid: {e}") from None


def define_by_run(spec: Spec) -> Callable[[optuna.Trial], None]:
    """The Optuna define-by-run function; sampled values land in ``trial.params`` under dotted paths."""
    dists = distributions(spec)
    plain = {p: d for p, d in dists.items() if not p.startswith("training.learning_rate.")}
    rates = {p: d for p, d in dists.items() if p.startswith("training.learning_rate.")}

    def sample(trial: optuna.Trial) -> None:
        values = {path: dist.suggest(trial, path) for path, dist in plain.items()}
        scope = values.get("training.lora.scope", spec.training.lora.scope)
        parts = trained_parts(scope)
        for path, dist in rates.items():
            if path.rsplit(".", 1)[1] in parts:
                dist.suggest(trial, path)

    return sample


def decode(spec: Spec, params: dict[str, Any]) -> dict[str, Any]:
    """Optuna's stored params (encoded choices) → dotted-path values for :meth:`Spec.with_values`."""
    dists = distributions(spec)
    values = {}
    for path, value in params.items():
        dist = dists.get(path)
        if isinstance(dist, Choice):
            value = dist.values[[_encode(v) for v in dist.values].index(value)]
        values[path] = value
    return values


def size(spec: Spec) -> int | None:
    """How many distinct configurations the search can sample (None when a range is continuous); a
    learning rate counts only under the scopes that train its part, as :func:`define_by_run` samples."""
    dists = distributions(spec)
    counts = {path: _count(dist) for path, dist in dists.items()}
    if None in counts.values():
        return None
    rate = "training.learning_rate."
    scope = dists.get("training.lora.scope")
    fixed = math.prod(n for p, n in counts.items() if not p.startswith(rate) and p != "training.lora.scope")
    total = 0
    for option in scope.values if scope else (spec.training.lora.scope,):
        parts = trained_parts(option)
        total += math.prod(n for p, n in counts.items() if p.startswith(rate) and p[len(rate) :] in parts)
    return fixed * total


def trials(spec: Spec) -> int:
    """The trials a study runs: ``study.num_trials``, or the search space's :func:`size` when that is
    smaller (a configuration trains once; another trial of it would repeat the same result)."""
    points = size(spec)
    return spec.study.num_trials if points is None else min(points, spec.study.num_trials)


def _count(dist: Distribution) -> int | None:
    if isinstance(dist, Choice):
        return len(set(map(json.dumps, dist.encoded())))
    if isinstance(dist, IntRange):
        return (dist.high - dist.low) // dist.step + 1
    return None


def largest_max_steps(spec: Spec) -> int:
    """The most steps any trial of the study can train (``training.max_steps`` may be searched)."""
    dist = distributions(spec).get("training.max_steps")
    return max(dist.candidates()) if dist else spec.training.max_steps


def trial_max_steps(spec: Spec, params: dict[str, Any]) -> int:
    """The steps the trial with sampled ``params`` trains."""
    return int(params.get("training.max_steps", spec.training.max_steps))


def trained_parts(scope: list[str]) -> set[str]:
    """Learning-rate parts a scope trains: llm, vision and/or projector (deepstack uses projector)."""
    return {_SCOPE_PARTS[word.split(".")[0]] for word in scope}


def _encode(value: Any) -> Any:
    # Optuna categoricals hold only None/bool/int/float/str; a scope list becomes "llm+vision".
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "+".join(value)
    return json.dumps(value, sort_keys=True)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
