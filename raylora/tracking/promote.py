"""Promote a study's best finished trial to the MLflow Model Registry, and optionally merge it.

Reads what raylora's search driver writes to MLflow: one experiment per study with a parent run
(``raylora.role=study``, objective in ``raylora.objective.{metric,mode}``) and one child run per trial
(``raylora.role=trial``, ``raylora.state``, ``best_<metric>`` summaries, ``adapter/best`` artifacts).

Promotion logs a pyfunc model (:class:`raylora.serving.LoraVisionModel`, adapter as its artifact) into the
winning trial's run, registers it as a version of ``model_name`` whose ``run_id`` is that run, tags the
version with the trial's lineage and points ``alias`` at it. Promoting the same winner again reuses the
existing version and logged model. ``merge_dir`` also writes base + adapter merged into plain weights, for
serving engines that ignore LoRA on the vision tower.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import EnvironmentFault, NothingToDo, UserError
from ..record.states import TrialState
from ..record.trials import best_of, finite, trial_order
from ..train.quantization import FOUR_BIT
from . import tags
from .tags import BASE_MODEL, BASE_REVISION, ROLE, STATE, TRIAL_ID

DEFAULT_METRIC, DEFAULT_MODE = "eval/loss", "min"
LOGGED_MODEL_NAME = "model"
ADAPTER_ARTIFACTS = ("adapter/best", "adapter/final")


@dataclass(frozen=True)
class PromoteResult:
    """What a promotion did: the registered version, the trial behind it, and the merged export if any."""

    model_name: str
    version: str
    alias: str
    run_id: str
    trial_id: str | None
    value: float
    merged_dir: Path | None = None
    policy: str = "best"
    cost: float | None = None  # the chosen trial's cost metric (cheapest-within)
    best_trial_id: str | None = None  # the best trial by the objective (cheapest-within)
    best_value: float | None = None


# -- choosing the winner (pure) ----------------------------------------------------------------------


@dataclass(frozen=True)
class _RunView:
    run_id: str | None
    status: str | None
    tags: dict[str, str]
    metrics: dict[str, float]
    params: dict[str, str]


def _view(run: Any) -> _RunView:
    """An mlflow ``Run``, or a dict: flat (run_id, status, tags, metrics, params) or {info, data}."""
    if not isinstance(run, dict):
        info, data = run.info, run.data
        return _RunView(info.run_id, info.status, dict(data.tags), dict(data.metrics), dict(data.params))
    info, data = run.get("info", run), run.get("data", run)
    return _RunView(
        info.get("run_id"),
        info.get("status"),
        dict(data.get("tags") or {}),
        dict(data.get("metrics") or {}),
        dict(data.get("params") or {}),
    )


def summary_key(metric: str) -> str:
    """The trial summary metric for an objective: ``eval/loss`` → ``best_eval/loss``."""
    return metric if metric.startswith("best_") else f"best_{metric}"


def select_best(runs: Sequence[Any], metric: str, mode: str) -> Any:
    """The best finished trial among ``runs`` (mlflow Runs or dicts), returned as given.

    Only trial runs (``raylora.role=trial``) in state COMPLETE whose run finished and that report
    ``best_<metric>`` compete; ``mode`` is ``min`` or ``max``; ties go to the lowest trial id.
    Raises NothingToDo when none qualifies.
    """
    if mode not in ("min", "max"):
        raise UserError("--mode", f"must be min or max, got {mode!r}")
    key = summary_key(metric)
    views = [(_view(run), run) for run in runs]
    candidates = [(view, run) for view, run in views if _competes(view, key)]
    if not candidates:
        raise NothingToDo("--experiment", _why_none(views, key))
    return best_of(candidates, mode, lambda c: c[0].metrics[key], lambda c: c[0].tags.get(TRIAL_ID))[1]


POLICIES = ("best", "cheapest-within")


@dataclass(frozen=True)
class Policy:
    """How ``promote best`` picks its trial: the best objective, or the cheapest trial whose objective is
    within ``tolerance`` (in the objective's own units) of the best, cheapest by ``cost_metric``."""

    name: str = "best"
    tolerance: float | None = None
    cost_metric: str = "cost/peak_mem_gb"

    def check(self) -> None:
        from ..train import cost

        if self.name not in POLICIES:
            raise UserError("--policy", f"must be one of {', '.join(POLICIES)}, got {self.name!r}")
        if self.name == "best":
            if self.tolerance is not None:
                raise UserError("--tolerance", "applies to --policy cheapest-within only")
            return
        if self.tolerance is None or not self.tolerance >= 0:
            raise UserError(
                "--tolerance",
                f"cheapest-within needs a tolerance >= 0 (objective units), got {self.tolerance}",
            )
        if self.cost_metric not in cost.METRICS:
            raise UserError("--cost", f"must be one of {', '.join(cost.METRICS)}, got {self.cost_metric!r}")


def select_cheapest_within(
    runs: Sequence[Any], metric: str, mode: str, tolerance: float, cost_metric: str
) -> Any:
    """Among the trials :func:`select_best` would consider, those whose objective is within ``tolerance``
    of the best; of them the cheapest by ``cost_metric`` (its latest value; ``cost/tokens_per_s`` is
    cheaper when higher). Ties go to the better objective, then the lowest trial id."""
    from ..train import cost

    best = _view(select_best(runs, metric, mode))
    key = summary_key(metric)
    sign = 1.0 if mode == "min" else -1.0
    limit = best.metrics[key] + sign * tolerance
    within = [
        (view, run)
        for view, run in ((_view(run), run) for run in runs)
        if _competes(view, key) and sign * view.metrics[key] <= sign * limit
    ]
    priced = [(view, run) for view, run in within if finite(view.metrics.get(cost_metric))]
    if not priced:
        raise NothingToDo(
            "--cost",
            f"none of the {len(within)} trial(s) within {tolerance:g} of the best reports {cost_metric}",
        )
    cheaper = 1.0 if cost.CHEAPER[cost_metric] == "min" else -1.0

    def order(c):
        view = c[0]
        return (
            cheaper * view.metrics[cost_metric],
            sign * view.metrics[key],
            trial_order(view.tags.get(TRIAL_ID)),
        )

    return min(priced, key=order)[1]


def _competes(view: _RunView, key: str) -> bool:
    finished = view.status in (None, "FINISHED")
    value = view.metrics.get(key)
    has_value = finite(value)
    complete = view.tags.get(STATE) == TrialState.COMPLETE
    return view.tags.get(ROLE) == tags.TRIAL_ROLE and complete and finished and has_value


def _why_none(views: list[tuple[_RunView, Any]], key: str) -> str:
    trials = [view for view, _ in views if view.tags.get(ROLE) == tags.TRIAL_ROLE]
    if not trials:
        return "no trial runs (tag raylora.role=trial)"
    states: dict[str, int] = {}
    for view in trials:
        state = view.tags.get(STATE, "no state")
        states[state] = states.get(state, 0) + 1
    counts = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
    return f"no finished trial (state COMPLETE) reports {key}; trials: {counts}"


# -- promotion ---------------------------------------------------------------------------------------


def promote_best(
    *,
    experiment: str,
    tracking_uri: str | None = None,
    metric: str | None = None,
    mode: str | None = None,
    model_name: str | None = None,
    alias: str = "champion",
    merge_dir: Path | None = None,
    policy: Policy | None = None,
) -> PromoteResult:
    """Register the best finished trial of ``experiment`` as a version of ``model_name`` under ``alias``.

    ``policy`` (default :class:`Policy` ``best``) may pick the cheapest trial within a tolerance of the
    best instead; the policy is recorded in the version's tags.

    ``metric``/``mode`` default to the study's objective (``eval/loss``, ``min`` when the study run has
    none). Idempotent: a version of ``model_name`` already made from the winning run is reused and only
    the alias is set again. ``model_name`` defaults to the study's ``tracking.registered_model``, else the
    experiment's name. With ``merge_dir``, also writes the merged model and its processor there.
    ``tracking_uri`` (when given) becomes this process's MLflow tracking URI.
    """
    import mlflow

    policy = policy or Policy()
    policy.check()
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    uri = mlflow.get_tracking_uri()
    client = mlflow.MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise NothingToDo("--experiment", f"no MLflow experiment named {experiment!r} at {uri}")
    runs = _all_runs(client, found.experiment_id)
    study = _study_run(runs)
    metric, mode = _objective(study, metric, mode)
    try:
        top = _view(select_best(runs, metric, mode))
        best = top
        if policy.name == "cheapest-within":
            best = _view(select_cheapest_within(runs, metric, mode, policy.tolerance, policy.cost_metric))
    except NothingToDo as e:
        raise NothingToDo(e.where, f"{experiment!r} at {uri}: {e.message}") from None
    lineage = {**_lineage(best, study, metric, mode), **_policy_tags(policy, best, top, metric)}
    params = {**(study.params if study else {}), **best.params}
    model_name = model_name or _registered_model(study) or experiment
    if merge_dir is not None:
        _check_mergeable(best, params)

    version = _existing_version(client, model_name, best.run_id)
    merged = None
    with tempfile.TemporaryDirectory(prefix="raylora-promote-") as tmp:
        adapter = _download_adapter(client, best, Path(tmp)) if version is None or merge_dir else None
        if version is None:
            model_uri = _logged_model_uri(client, found.experiment_id, best.run_id)
            if model_uri is None:
                model_uri = _log_pyfunc(client, best, adapter, params)
            # models:/<model_id> → the store records the logged model's source run as the version's run_id.
            version = mlflow.register_model(model_uri, model_name, tags=lineage)
        else:  # promoted again, perhaps by another policy: the tags say how it was chosen this time
            for key, value in _policy_tags(policy, best, top, metric).items():
                client.set_model_version_tag(model_name, version.version, key, value)
        client.set_registered_model_alias(model_name, alias, version.version)
        if merge_dir is not None:
            merged = merge(adapter, Path(merge_dir), best.tags.get(BASE_MODEL), best.tags.get(BASE_REVISION))
            _write_provenance(merged, model_name, str(version.version), best, metric)
    return PromoteResult(
        model_name=model_name,
        version=str(version.version),
        alias=alias,
        run_id=best.run_id,
        trial_id=best.tags.get(TRIAL_ID),
        value=best.metrics[summary_key(metric)],
        merged_dir=merged,
        policy=policy.name,
        cost=best.metrics.get(policy.cost_metric) if policy.name != "best" else None,
        best_trial_id=top.tags.get(TRIAL_ID),
        best_value=top.metrics[summary_key(metric)],
    )


def _all_runs(client, experiment_id: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _study_run(runs: list) -> _RunView | None:
    # search_runs returns newest first: a study resumed into a new parent run uses its latest objective.
    studies = [view for view in map(_view, runs) if view.tags.get(ROLE) == tags.STUDY_ROLE]
    return studies[0] if studies else None


def _objective(study: _RunView | None, metric: str | None, mode: str | None) -> tuple[str, str]:
    values = study.tags if study else {}
    study_metric = values.get(tags.OBJECTIVE_METRIC, DEFAULT_METRIC)
    study_mode = values.get(tags.OBJECTIVE_MODE, DEFAULT_MODE)
    metric = (metric or study_metric).removeprefix("best_")
    if mode is None:
        if metric != study_metric:
            # The study's mode belongs to its own metric; guessing a direction could promote the worst trial.
            raise UserError(
                "--mode", f"give min or max for {metric} (the study's objective is {study_metric})"
            )
        mode = study_mode
    return metric, mode


def _registered_model(study: _RunView | None) -> str | None:
    """The study spec's ``tracking.registered_model`` (logged as a param of the parent run), if set."""
    name = study.params.get("tracking.registered_model") if study else None
    return name if name not in (None, "", "None") else None


def _existing_version(client, model_name: str, run_id: str):
    # By run id (hex) alone: MLflow's filters cannot quote every name (it's "quoted"), Python can.
    versions = client.search_model_versions(f"run_id = '{run_id}'")
    ready = [v for v in versions if v.status == "READY" and v.name == model_name]
    return min(ready, key=lambda v: int(v.version)) if ready else None


def _logged_model_uri(client, experiment_id: str, run_id: str) -> str | None:
    """A pyfunc model an earlier promotion already logged into the run (it may have failed to register)."""
    from mlflow.entities import LoggedModelStatus

    found = client.search_logged_models(
        experiment_ids=[experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND name = '{LOGGED_MODEL_NAME}'",
    )
    ready = [m for m in found if m.status == LoggedModelStatus.READY]
    return ready[0].model_uri if ready else None


def _download_adapter(client, best: _RunView, dest: Path) -> Path:
    """The trial's adapter, downloaded and loaded once (:func:`check_adapter`) before anything uses it."""
    import mlflow

    for path in ADAPTER_ARTIFACTS:
        if any(f.path.endswith("adapter_config.json") for f in client.list_artifacts(best.run_id, path)):
            local = mlflow.artifacts.download_artifacts(
                run_id=best.run_id,
                artifact_path=path,
                dst_path=str(dest / "download"),
                tracking_uri=client.tracking_uri,
            )
            adapter = Path(shutil.move(local, dest / "adapter"))  # the model's artifact is named after it
            check_adapter(adapter, best.tags.get(BASE_MODEL), best.tags.get(BASE_REVISION), best)
            return adapter
    trial = best.tags.get(TRIAL_ID, best.run_id)
    raise NothingToDo(
        "--experiment", f"trial {trial} (run {best.run_id}) has no adapter/best or adapter/final"
    )


def check_adapter(adapter: Path, base_model: str | None, revision: str | None, best: _RunView) -> None:
    """Load ``adapter`` as its users will (vanilla ``PeftModel.from_pretrained``) onto the base model's
    architecture on the meta device (its config alone, no weights); refuse, in one line, one that does not
    load (a truncated or corrupt file, a missing module) before anything is registered."""
    from ..train import quantization

    quantization.import_quietly()  # PEFT imports bitsandbytes
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForImageTextToText

    from ..errors import first_line
    from ..train.inference import base_model_path
    from ..train.model import peft_quietly

    try:
        config = AutoConfig.from_pretrained(base_model_path(adapter, base_model), revision=revision)
        with torch.device("meta"):
            model = AutoModelForImageTextToText.from_config(config)
        with peft_quietly():
            PeftModel.from_pretrained(model, str(adapter), low_cpu_mem_usage=True)
    except Exception as e:  # safetensors, json, PEFT's key and shape checks: each says the adapter is bad
        trial = best.tags.get(TRIAL_ID, best.run_id)
        raise EnvironmentFault(
            "promote",
            f"the adapter of trial {trial} (run {best.run_id}) does not load ({type(e).__name__}: "
            f"{first_line(e, 200)}); nothing was registered",
        ) from None


def _log_pyfunc(client, best: _RunView, adapter: Path, params: dict[str, str]) -> str:
    """Log the serving model into the trial's own run; return its ``models:/<model_id>`` URI.

    The model carries raylora's own code (``code_paths``) and pins only published libraries, so it loads
    and serves wherever MLflow rebuilds its environment, raylora installed there or not.
    """
    import mlflow

    from . import serving

    end_time = client.get_run(best.run_id).info.end_time
    with tempfile.TemporaryDirectory(prefix="raylora-code-") as code:
        package = Path(serving.__file__).parents[1]
        shutil.copytree(package, Path(code) / "raylora", ignore=shutil.ignore_patterns("__pycache__"))
        try:
            with warnings.catch_warnings():
                # An input example would make MLflow load the model and generate at logging time.
                warnings.filterwarnings("ignore", message=".*An input example was not provided")
                with mlflow.start_run(run_id=best.run_id):
                    info = mlflow.pyfunc.log_model(
                        name=LOGGED_MODEL_NAME,
                        python_model=str(Path(serving.__file__).with_name("serving_model.py")),
                        artifacts={serving.ADAPTER_ARTIFACT: str(adapter)},
                        code_paths=[str(Path(code) / "raylora")],
                        model_config=_serving_config(best, params),
                        signature=serving.signature(),
                        pip_requirements=_requirements(),
                        tags={ROLE: "promoted"},
                    )
        finally:
            # Resuming the run marked it RUNNING (FAILED on error) and ends it now: keep the trial's record.
            client.set_terminated(best.run_id, status="FINISHED", end_time=end_time)
    return info.model_uri


def _serving_config(best: _RunView, params: dict[str, str]) -> dict:
    config = {
        "base_model": best.tags.get(BASE_MODEL),
        "base_model_revision": best.tags.get(BASE_REVISION),
        "min_pixels": _int_or_none(params.get("data.image.min_pixels")),
        "max_pixels": _int_or_none(params.get("data.image.max_pixels")),
    }
    return {key: value for key, value in config.items() if value is not None}


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


# What the serving model imports (raylora's own code travels with the model, see _log_pyfunc).
SERVING_PACKAGES = (
    "mlflow",
    "torch",
    "torchvision",
    "transformers",
    "peft",
    "safetensors",
    "pillow",
    "pydantic",
    "pyyaml",
)


def _requirements() -> list[str]:
    """The serving model's libraries, pinned to this environment's versions (all published on PyPI)."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in SERVING_PACKAGES:
        try:
            pins.append(f"{package}=={version(package).split('+')[0]}")
        except PackageNotFoundError:
            pins.append(package)
    return pins


def _lineage(best: _RunView, study: _RunView | None, metric: str, mode: str) -> dict[str, str]:
    inherited = {**(study.tags if study else {}), **best.tags}
    lineage = {key: inherited[key] for key in tags.LINEAGE if inherited.get(key)}
    lineage[tags.OBJECTIVE_METRIC] = metric
    lineage[tags.OBJECTIVE_MODE] = mode
    lineage["raylora.objective.value"] = repr(best.metrics[summary_key(metric)])
    return lineage


def _policy_tags(policy: Policy, chosen: _RunView, top: _RunView, metric: str) -> dict[str, str]:
    values = {tags.PROMOTION_POLICY: policy.name}
    if policy.name == "cheapest-within":
        values.update(
            {
                tags.PROMOTION_TOLERANCE: repr(policy.tolerance),
                tags.PROMOTION_COST_METRIC: policy.cost_metric,
                tags.PROMOTION_COST_VALUE: repr(chosen.metrics[policy.cost_metric]),
                tags.PROMOTION_BEST_TRIAL: top.tags.get(TRIAL_ID, top.run_id or ""),
                tags.PROMOTION_BEST_VALUE: repr(top.metrics[summary_key(metric)]),
            }
        )
    return values


# -- merging -----------------------------------------------------------------------------------------


def _check_mergeable(best: _RunView, params: dict[str, str]) -> None:
    quantization = params.get("training.quantization", "none")
    if quantization in FOUR_BIT or params.get("training.use_4bit", "").lower() == "true":
        trial = best.tags.get(TRIAL_ID, best.run_id)
        raise UserError(
            "--merge",
            f"trial {trial} trained its adapter on a 4-bit ({quantization}) base; merged full-precision "
            "weights would not be the model that was evaluated. Serve the registered adapter model instead",
        )


def merge(
    adapter_dir: Path, out_dir: Path, base_model: str | None = None, revision: str | None = None
) -> Path:
    """Base + adapter → ``merge_and_unload()`` → ``out_dir`` (safetensors) with the base's processor.

    ``AutoModelForImageTextToText.from_pretrained(out_dir)`` then loads it with no PEFT involved.
    """
    from transformers import AutoConfig

    from ..train.inference import base_model_path, load_with_adapter

    base = base_model_path(adapter_dir, base_model)
    if getattr(AutoConfig.from_pretrained(base, revision=revision), "quantization_config", None):
        raise UserError(
            "--merge", f"base model {base} is a quantized checkpoint; merge into its full-precision original"
        )
    model, processor = load_with_adapter(adapter_dir, base_model, revision)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.merge_and_unload().save_pretrained(out_dir)  # transformers 5 always writes safetensors
    processor.save_pretrained(out_dir)
    return out_dir


def _write_provenance(out_dir: Path, model_name: str, version: str, best: _RunView, metric: str) -> None:
    provenance = {
        "registered_model": model_name,
        "version": version,
        "run_id": best.run_id,
        "objective": {"metric": metric, "value": best.metrics[summary_key(metric)]},
        "lineage": {key: best.tags[key] for key in tags.LINEAGE if key in best.tags},
    }
    (out_dir / "raylora_merge.json").write_text(json.dumps(provenance, indent=2) + "\n")
