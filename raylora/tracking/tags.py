"""The MLflow tag names raylora writes and searches by: one place, so a query and a write never drift.

A study is one parent run (``ROLE = STUDY``) and one child run per trial (``ROLE = TRIAL``); runs are
found again by these tags, never by name.
"""

from __future__ import annotations

ROLE = "raylora.role"
STUDY_ROLE = "study"
TRIAL_ROLE = "trial"

STUDY = "raylora.study"  # the study name, on the parent and every trial
STUDY_DIR = "raylora.study_dir"  # the study's storage location, on the parent
VERSION = "raylora.version"
GIT_COMMIT = "raylora.git_commit"
OBJECTIVE_METRIC = "raylora.objective.metric"
OBJECTIVE_MODE = "raylora.objective.mode"
BEST_TRIAL = "raylora.best_trial"
BASELINE = "raylora.baseline"  # the fingerprint of the base model's score (base/* metrics), on the parent
PARETO = "raylora.pareto"  # "true" on the trials of a multi-objective study's Pareto front

TRIAL_ID = "raylora.trial_id"
STATE = "raylora.state"  # a raylora.record.states.TrialState
ERROR = "raylora.error"
BASE_MODEL = "raylora.base_model"
BASE_REVISION = "raylora.base_model_revision"
DATASET_FINGERPRINT = "raylora.dataset_fingerprint"

# Copied onto a registered model version, so it names the study and trial it came from.
LINEAGE = (STUDY, TRIAL_ID, BASE_MODEL, BASE_REVISION, DATASET_FINGERPRINT)
# How `raylora promote best` chose the version (on the version too): best, or cheapest-within.
PROMOTION_POLICY = "raylora.promotion.policy"
PROMOTION_TOLERANCE = "raylora.promotion.tolerance"  # in the objective's own units
PROMOTION_COST_METRIC = "raylora.promotion.cost_metric"
PROMOTION_COST_VALUE = "raylora.promotion.cost_value"
PROMOTION_BEST_TRIAL = "raylora.promotion.best_trial"  # the best trial the tolerance was measured from
PROMOTION_BEST_VALUE = "raylora.promotion.best_value"

PARENT_RUN = "mlflow.parentRunId"  # MLflow's own: nests a trial's run under the study's


def query(values: dict[str, str]) -> str:
    """An MLflow ``filter_string`` matching runs with all these tag values (each quoted: :func:`quote`)."""
    return " and ".join(f"tags.`{k}` = {quote(v)}" for k, v in values.items())


def quote(value: str) -> str:
    """``value`` as a string literal of an MLflow filter, checked by MLflow's own parser: filters have no
    escape, so a value holding ``'`` is quoted with ``"`` and a backslash before a quote needs the other
    quote; a value no literal can hold is a :class:`~raylora.errors.UserError`."""
    from mlflow.utils.search_utils import SearchUtils

    value = str(value)
    for mark in ("'", '"'):
        literal = f"{mark}{value}{mark}"
        if mark in value:
            continue
        try:
            parsed = SearchUtils.parse_search_filter(f"tags.`k` = {literal} and tags.`j` = 'x'")
        except Exception:  # MLflow's parser refuses it: try the other quote
            continue
        if [p.get("value") for p in parsed] == [value, "x"]:
            return literal
    from ..errors import UserError

    raise UserError("", f"{value!r} cannot be written in an MLflow search (no quote holds it); rename it")
