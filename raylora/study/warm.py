"""A study that does not start cold: configurations run first, and earlier studies' trials as prior.

``study.enqueue`` — configurations (``{search path: value}``) the study runs first, in order. Each is put
in Optuna's queue (``enqueue_trial``) just before the trial that runs it is asked for, never ahead of
time: a resumed study re-asks its interrupted trials through the same queue, and a configuration waiting
there would be handed to one of them. A configuration counts as run once a trial carries its index
(user attribute ``raylora.enqueued``).

``study.warm_start`` — earlier studies whose finished trials (COMPLETE, and PRUNED with their
intermediate values) are added to a new study's Optuna storage (``add_trials``) before its first trial,
so the sampler starts from what they learned. Each parameter is checked against this study's search
space; an incompatible study is a user error naming the parameter.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from ..record.trials import WARM_START, WARM_START_TRIAL
from ..spec import space

if TYPE_CHECKING:
    import optuna

    from ..spec import Spec

ENQUEUED = "raylora.enqueued"


def enqueue_next(study: optuna.Study, spec: Spec) -> int | None:
    """Queue the first ``study.enqueue`` configuration no trial has run yet; return its index."""
    done = {t.user_attrs.get(ENQUEUED) for t in study.get_trials(deepcopy=False)}
    for index, config in enumerate(spec.study.enqueue):
        if index not in done:
            study.enqueue_trial(space.encode(spec, config), user_attrs={ENQUEUED: index})
            return index
    return None


def warm_start(study: optuna.Study, spec: Spec, log: Callable[[str], None] = print) -> int:
    """Add the finished trials of ``study.warm_start``'s studies to a study that has none yet; return
    how many were added."""
    if not spec.study.warm_start or study.get_trials(deepcopy=False):
        return 0
    wanted = _distributions(spec)
    added = []
    for i, location in enumerate(spec.study.warm_start):
        where = f"study.warm_start[{i}]"
        earlier, metric = _load(location, where, log)
        _check_objective(earlier, study, where, location)
        if metric not in (None, spec.study.objective.metric):
            raise UserError(where, f"{location} optimized {metric}, this study {spec.study.objective.metric}")
        added += [_adapted(t, wanted, where, location) for t in _finished(earlier)]
    study.add_trials(added)
    log(f"warm start: the sampler begins with {len(added)} finished trial(s) of earlier studies")
    return len(added)


def _distributions(spec: Spec) -> dict:
    import optuna.distributions as d

    out = {}
    for path, dist in space.distributions(spec).items():
        if isinstance(dist, space.Choice):
            out[path] = d.CategoricalDistribution(dist.encoded())
        elif isinstance(dist, space.Uniform):
            out[path] = d.FloatDistribution(dist.low, dist.high, log=dist.log)
        else:
            out[path] = d.IntDistribution(dist.low, dist.high, step=dist.step)
    return out


def _load(location: str, where: str, log) -> tuple[optuna.Study, str | None]:
    """The earlier study and the objective metric its summary names."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from ..layout import JOURNAL, SUMMARY
    from ..tracking.storage import open_study

    storage = open_study(location, log)
    storage.pull()
    journal = Path(storage.directory) / JOURNAL
    if not journal.is_file():
        raise UserError(where, f"{location}: no {JOURNAL} (not a raylora study folder?)")
    backend = JournalStorage(JournalFileBackend(str(journal)))
    names = optuna.get_all_study_names(backend)
    summary = Path(storage.directory) / SUMMARY
    name = Path(storage.directory).name if len(names) != 1 else names[0]
    metric = None
    if summary.is_file():
        saved = json.loads(summary.read_text())
        name, metric = saved.get("study", name), saved.get("objective", {}).get("metric")
    if name not in names:
        raise UserError(where, f"{location}: its journal holds no study named {name!r}")
    return optuna.load_study(study_name=name, storage=backend), metric


def _check_objective(earlier: optuna.Study, study: optuna.Study, where: str, location: str) -> None:
    if earlier.directions != study.directions:
        theirs = ", ".join(d.name.lower() for d in earlier.directions)
        ours = ", ".join(d.name.lower() for d in study.directions)
        raise UserError(where, f"{location} optimizes in direction {theirs}, this study {ours}")


def _finished(earlier: optuna.Study) -> list:
    from optuna.trial import TrialState

    return [
        t
        for t in earlier.get_trials(deepcopy=False)
        if t.state == TrialState.COMPLETE or (t.state == TrialState.PRUNED and t.intermediate_values)
    ]


def _adapted(frozen, wanted: dict, where: str, location: str):
    """The earlier trial with this study's distributions, or a user error naming the parameter."""
    import optuna

    distributions = {}
    for name, value in frozen.params.items():
        ours = wanted.get(name)
        if ours is None:
            raise UserError(
                where, f"{location} searched {name}, which this study does not search (trial {frozen.number})"
            )
        if not _fits(ours, value):
            raise UserError(
                where,
                f"{location}: {name} = {value!r} (trial {frozen.number}) is outside this study's {ours}",
            )
        distributions[name] = ours
    # Not its slot or queue index: those name trials of this study's own (its summary, its checkpoints).
    attrs: dict[str, Any] = {
        WARM_START: location,
        WARM_START_TRIAL: frozen.user_attrs.get("slot", frozen.number),
    }
    system = {k: v for k, v in frozen.system_attrs.items() if k != "fixed_params"}
    return optuna.trial.create_trial(
        params=dict(frozen.params),
        distributions=distributions,
        values=frozen.values if frozen.state == optuna.trial.TrialState.COMPLETE else None,
        intermediate_values=dict(frozen.intermediate_values),
        user_attrs=attrs,
        system_attrs=system,
        state=frozen.state,
    )


def _fits(distribution, value: Any) -> bool:
    import optuna.distributions as d

    if isinstance(distribution, d.CategoricalDistribution):
        return value in distribution.choices
    try:
        return distribution._contains(distribution.to_internal_repr(value))
    except (TypeError, ValueError):
        return False
