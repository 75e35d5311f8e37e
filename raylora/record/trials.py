"""A study's persistent state under ``<storage>/<study.name>/``: the Optuna journal and ``summary.json``.

``summary.json`` is what users and scripts read (``optuna.journal`` is kept by
:mod:`raylora.study.optuna_searcher`)::

    {"study": str, "objective": {"metric": str, "mode": "min"|"max"},
     "best_trial": {"trial_id", "value", "params", "adapter_path", "mlflow_run_id"} | null,
     "trials": [{"trial_id", "state", "params", "value", "steps", "adapter_path", "nodes", "error",
                 "cost": {"cost/peak_mem_gb", "cost/accelerator_hours", ...}, ...}]}

Trial states are :class:`raylora.record.states.TrialState`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .. import redact
from ..files import write_atomic
from ..layout import SUMMARY
from .states import FINISHED, TrialState

if TYPE_CHECKING:
    from ..spec import Spec


@dataclass
class TrialRecord:
    """One trial as the summary shows it."""

    trial_id: str
    state: TrialState = TrialState.RUNNING
    params: dict[str, Any] = field(default_factory=dict)
    value: float | None = None
    steps: int = 0
    adapter_path: str | None = None
    nodes: list[str] = field(default_factory=list)
    error: str | None = None
    optuna_number: int | None = None
    mlflow_run_id: str | None = None
    last_value: float | None = None
    resumed_from_step: int | None = None
    cost: dict[str, float] = field(default_factory=dict)
    """The latest ``cost/*`` metrics the trial reported (see :mod:`raylora.train.cost`)."""
    values: dict[str, float] = field(default_factory=dict)
    """Objective (and constrained) metric → value, as told to Optuna (:mod:`raylora.record.objectives`)."""
    curve: dict[str, float] = field(default_factory=dict)
    """The first objective at each reported step (``{"step": value}``): the step–final agreement's data."""
    vs_base: dict | None = None
    """The final evaluation against the base model's on the same records
    (:func:`raylora.record.comparison.compare` plus ``metric``); None without a base or an end."""

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def restart(self) -> None:
        """A new attempt of this trial starts: forget its history, which the attempt reports again (from
        its checkpoint's replayed reports on). Evaluations past the checkpoint it resumes from belong to
        checkpoints a resume passed over (emptied, torn), not to the adapter this trial will end with, so
        no value, curve point or adapter of theirs may survive."""
        self.steps, self.value, self.last_value, self.adapter_path = 0, None, None, None
        self.values, self.curve, self.resumed_from_step = {}, {}, None


class StudyRecord:
    """The trials of one study, persisted atomically to ``summary.json`` on every change.

    ``on_save`` runs after every save: URI storage uploads the study's state there.
    """

    def __init__(self, directory: Path, name: str, metric: str, mode: str):
        self.directory = directory
        self.name, self.metric, self.mode = name, metric, mode
        self.trials: dict[str, TrialRecord] = {}
        self.on_save: Callable[[], object] = lambda: None
        self.goals: list[tuple[str, str]] = [(metric, mode)]  # every objective, the first is metric/mode
        self.limits: dict[str, tuple[str, float]] = {}  # study.constraints
        self.scheduler: str | None = None  # the early-stopping rule, as --dry-run names it

    @classmethod
    def open(cls, directory: Path, spec: Spec) -> StudyRecord:
        """Load the study's summary if it exists, else start an empty one."""
        objective = spec.study.objective
        record = cls(directory, spec.study.name, objective.metric, objective.mode)
        record.goals = [(o.metric, o.mode) for o in spec.study.goals]
        record.limits = spec.study.constraint_limits()
        path = directory / SUMMARY
        if path.is_file():
            data = _loaded(path.read_text())
            record.trials = _trials(data)
            record.scheduler = data.get("scheduler")  # loaded and saved again, it keeps the study's rule
        return record

    @staticmethod
    def open_summary(path: Path) -> dict[str, TrialRecord]:
        """The trials of a ``summary.json`` (none if the file does not exist yet)."""
        if not path.is_file():
            return {}
        return StudyRecord.parse_summary(path.read_text())

    @staticmethod
    def parse_summary(text: str) -> dict[str, TrialRecord]:
        """The trials of a ``summary.json``'s text; ValueError when it does not parse."""
        return _trials(_loaded(text))

    @property
    def title(self) -> str:
        """``name: metric (mode)``, with every objective of a multi-objective study in order."""
        return f"{self.name}: " + ", ".join(f"{metric} ({mode})" for metric, mode in self.goals)

    def finished(self) -> list[TrialRecord]:
        return [t for t in self.trials.values() if t.finished]

    def unfinished(self) -> list[TrialRecord]:
        return [t for t in self.trials.values() if not t.finished]

    def better(self, a: float, b: float | None) -> bool:
        """Whether objective value ``a`` beats ``b`` (a non-finite value beats nothing, and anything finite
        beats it)."""
        if not finite(a):
            return False
        return not finite(b) or (a < b if self.mode == "min" else a > b)

    def best(self) -> TrialRecord | None:
        """The best COMPLETE trial by :func:`best_of` (pruned trials stopped at a lower budget are not
        comparable)."""
        complete = [t for t in self.trials.values() if t.state == TrialState.COMPLETE]
        return best_of(complete, self.mode, lambda t: t.value, lambda t: t.trial_id)

    def ranked(self) -> list[TrialRecord]:
        """Finished trials, best first: COMPLETE by value, then PRUNED, INFEASIBLE, FAILED; a trial without
        a finite value last in its state."""
        order = {state: i for i, state in enumerate(FINISHED)}
        sign = 1 if self.mode == "min" else -1

        def key(t: TrialRecord):
            value = sign * t.value if finite(t.value) else math.inf
            return (order.get(t.state, 9), value, trial_order(t.trial_id))

        return sorted(self.finished(), key=key)

    def to_dict(self) -> dict:
        best = self.best()
        return {
            "study": self.name,
            "objective": {"metric": self.metric, "mode": self.mode},
            "best_trial": None
            if best is None
            else {
                "trial_id": best.trial_id,
                "value": best.value,
                "params": best.params,
                "adapter_path": best.adapter_path,
                "mlflow_run_id": best.mlflow_run_id,
            },
            "trials": [asdict(t) for t in sorted(self.trials.values(), key=lambda t: t.trial_id)],
            **({"scheduler": self.scheduler} if self.scheduler else {}),
            **self._pareto(),
            **self._stopping(),
        }

    def _stopping(self) -> dict:
        """What early stopping did (:func:`.agreement.stopping_summary`), once it can be told."""
        from .agreement import stopping_summary

        summary = stopping_summary(list(self.trials.values()), self.mode)
        return {"stopping": summary} if summary else {}

    def _pareto(self) -> dict:
        """Several objectives: them, the constraints and the ``pareto_front`` (trial ids)."""
        if len(self.goals) < 2 and not self.limits:
            return {}
        from .objectives import pareto_front

        return {
            "objectives": [{"metric": m, "mode": mode} for m, mode in self.goals],
            "constraints": {m: f"{op} {limit:g}" for m, (op, limit) in self.limits.items()},
            "pareto_front": pareto_front(list(self.trials.values()), self.goals, self.limits),
        }

    def save(self) -> None:
        """Write ``summary.json`` atomically, so a killed driver never leaves half a file; strict JSON, a
        non-finite number written as null."""
        self.directory.mkdir(parents=True, exist_ok=True)
        # A trial's error may quote a URI with its credentials: none reach the file (raylora.redact).
        text = json.dumps(strict_json(redact.values(self.to_dict())), indent=2, allow_nan=False)
        write_atomic(self.directory / SUMMARY, text + "\n")
        self.on_save()


T = TypeVar("T")


def finite(value: object) -> bool:
    """Whether ``value`` is a number that can be ranked (not None, NaN or an infinity)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def best_of(
    candidates: Iterable[T],
    mode: str,
    value: Callable[[T], float | None],
    trial_id: Callable[[T], str | None],
) -> T | None:
    """The one rule for "the best": of ``candidates`` with a finite ``value``, the lowest (``mode`` min) or
    highest (max); a tie goes to the lowest trial id (``t9`` before ``t10``). None when none has a finite
    value. The summary's ``best_trial``, the report, the leaderboard and ``promote`` all use it."""
    sign = 1.0 if mode == "min" else -1.0
    scored = [
        (sign * value(c), trial_order(trial_id(c)), i, c)
        for i, c in enumerate(candidates)
        if finite(value(c))
    ]
    return min(scored, key=lambda row: row[:3])[3] if scored else None


def trial_order(trial_id: str | None) -> tuple:
    """A sort key for trial ids: natural order (``t9`` before ``t10``), ids missing last."""
    parts = re.split(r"(\d+)", trial_id or "")
    natural = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts if p)
    return (0 if trial_id else 1, natural)


def strict_json(value):
    """``value`` with every non-finite float (NaN, ±Infinity) replaced by None, so it dumps as strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def slot_name(index: int) -> str:
    """The deterministic id of the study's ``index``-th trial (also its checkpoint folder's name)."""
    return f"t{index:03d}"


WARM_START = "raylora.warm_start"  # on a warm-start trial: the study it came from

WARM_START_TRIAL = "raylora.warm_start_trial"  # and its trial id there


def short_params(params: dict) -> str:
    """``scope=llm+vision r=16 lr.llm=0.0003``: a trial's params, short enough for one line."""
    parts = []
    for path, value in params.items():
        key = path.removeprefix("training.").replace("learning_rate.", "lr.").replace("lora.", "")
        text = (
            "+".join(value)
            if isinstance(value, list)
            else f"{value:.3g}"
            if isinstance(value, float)
            else value
        )
        parts.append(f"{key}={text}")
    return " ".join(parts)


def _loaded(text: str):
    """A ``summary.json``'s text as JSON; ValueError when it does not parse."""
    try:
        return json.loads(text)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError included
        raise ValueError(f"{type(e).__name__}: {e}") from None


def _trials(data) -> dict[str, TrialRecord]:
    """The trials of a parsed ``summary.json``; ValueError when they are not a summary's."""
    trials: dict[str, TrialRecord] = {}
    try:
        for row in data["trials"]:
            known = {k: v for k, v in row.items() if k in TrialRecord.__dataclass_fields__}
            known["state"] = TrialState(known.get("state", TrialState.RUNNING))
            trials[row["trial_id"]] = TrialRecord(**known)
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{type(e).__name__}: {e}") from None
    return trials
