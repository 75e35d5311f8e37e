"""The study report: ``index.html`` (verdict, cost, Optuna's figures; :mod:`.html_report`), leaderboard
(CSV and Markdown), objective by scope, and parameter importances.

Written under ``<storage>/<study>/report/`` (uploaded there for URI storage) and logged to the study's
parent MLflow run.
"""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

from ..study.progress import short_params
from ..study.record import SUMMARY, StudyRecord, write_atomic
from ..study.states import TrialState
from ..train import cost
from . import html_report, tags

COST_COLUMNS = cost.METRICS
VS_BASE_COLUMNS = ("gain_vs_base", "p_vs_base")  # the final evaluation against the base model's (McNemar)


def write(directory: Path, record: StudyRecord, optuna_study=None) -> Path:
    """Write every report file into ``directory``; return it."""
    directory.mkdir(parents=True, exist_ok=True)
    ranked = record.ranked()
    params = sorted({p for t in ranked for p in t.params})
    _leaderboard_csv(directory / "leaderboard.csv", record, ranked, params)
    write_atomic(directory / "leaderboard.md", leaderboard_markdown(record, ranked))
    _scope_plot(directory / "scope_comparison.png", record, ranked)
    importances = _importances(optuna_study)
    write_atomic(directory / "importances.json", json.dumps(importances, indent=2) + "\n")
    _importance_plot(directory / "importances.png", importances)
    html_report.write(directory / "index.html", record, optuna_study)
    summary = record.directory / SUMMARY
    if summary.is_file():
        write_atomic(directory / SUMMARY, summary.read_bytes())
    return directory


def regenerate(target: str, tracking_uri: str | None = None, log=print) -> Path:
    """Rebuild the report of a study (folder or URI), or of the study an MLflow experiment records; log
    it there. MLflow records an earlier run could not send are sent first."""
    from mlflow import MlflowClient

    from ..errors import NothingToDo
    from ..study.baseline import STUDY_FILE as BASELINE
    from ..study.record import JOURNAL
    from .storage import open_study
    from .tracker import replay_pending
    from .tracker import tracking_uri as resolve_uri

    is_study = "://" in target or Path(target).expanduser().is_dir()
    client = MlflowClient(tracking_uri=resolve_uri(tracking_uri)) if tracking_uri or not is_study else None
    parent = None
    if not is_study:
        experiment = client.get_experiment_by_name(target)
        if experiment is None:
            raise NothingToDo("report", f"{target} is neither a study folder nor an MLflow experiment")
        runs = client.search_runs(
            [experiment.experiment_id], tags.query({tags.ROLE: tags.STUDY_ROLE}), max_results=1
        )
        if not runs:
            raise NothingToDo("report", f"experiment {target} has no raylora study run")
        parent = runs[0]
        target = parent.data.tags.get(tags.STUDY_DIR, "")
    storage = open_study(target, log)
    storage.check()
    storage.pull()
    directory = storage.directory
    if not (directory / SUMMARY).is_file():
        raise NothingToDo("report", f"no {SUMMARY} in {storage.location}")
    if tracking_uri:
        from .tracker import check_uri

        check_uri(resolve_uri(tracking_uri))
    replay_pending(storage, log, uri=resolve_uri(tracking_uri) if tracking_uri else None)
    summary = json.loads((directory / SUMMARY).read_text())
    record = StudyRecord(
        directory, summary["study"], summary["objective"]["metric"], summary["objective"]["mode"]
    )
    record.trials = StudyRecord.open_summary(directory / SUMMARY)
    record.goals = [(o["metric"], o["mode"]) for o in summary.get("objectives", [])] or record.goals
    limits = summary.get("constraints", {}).items()
    record.limits = {m: (text.split()[0], float(text.split()[1])) for m, text in limits}
    if (directory / BASELINE).is_file():  # trials compared with the base model since the summary was written
        from ..study import baseline

        if baseline.compare_trials(record, storage, json.loads((directory / BASELINE).read_text())):
            write_atomic(directory / SUMMARY, json.dumps(record.to_dict(), indent=2) + "\n")
    study = _load_optuna(directory / JOURNAL, summary["study"])
    out = write(directory / "report", record, study)
    storage.push(report=True)
    if client is not None and parent is None:
        found = [
            r
            for e in client.search_experiments()
            for r in client.search_runs(
                [e.experiment_id], tags.query({tags.STUDY_DIR: storage.location}), max_results=1
            )
        ]
        parent = found[0] if found else None
    if parent is not None:
        client.log_artifacts(parent.info.run_id, str(out), "report")
    return out


def _load_optuna(journal: Path, name: str):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if not journal.is_file():
        return None
    return optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(str(journal))))


def _leaderboard_csv(path: Path, record: StudyRecord, ranked, params: list[str]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "rank",
                "trial_id",
                "state",
                record.metric,
                "steps",
                *COST_COLUMNS,
                *VS_BASE_COLUMNS,
                *params,
                "adapter_path",
                "mlflow_run_id",
                "error",
            ]
        )
        for i, t in enumerate(ranked, start=1):
            values = [
                json.dumps(t.params[p]) if isinstance(t.params.get(p), list) else t.params.get(p, "")
                for p in params
            ]
            writer.writerow(
                [
                    i,
                    t.trial_id,
                    t.state,
                    "" if t.value is None else t.value,
                    t.steps,
                    *(t.cost.get(c, "") for c in COST_COLUMNS),
                    *((t.vs_base or {}).get(k, "") for k in ("gain", "p_value")),
                    *values,
                    t.adapter_path or "",
                    t.mlflow_run_id or "",
                    t.error or "",
                ]
            )


def leaderboard_markdown(record: StudyRecord, ranked) -> str:
    """The leaderboard as a Markdown table (best first)."""
    lines = [
        f"# {record.name}: {record.metric} ({record.mode})",
        "",
        f"| # | trial | state | {record.metric} | steps | vs base | p | peak GB | accel-h | params |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for i, t in enumerate(ranked, start=1):
        value = f"{t.value:.4g}" if t.value is not None else "-"
        detail = short_params(t.params) + (f" ({t.error})" if t.error else "")
        memory, hours = (_cost_text(t, c) for c in (cost.PEAK_MEM_GB, cost.ACCELERATOR_HOURS))
        gain, p = _vs_base_text(t)
        lines.append(
            f"| {i} | {t.trial_id} | {t.state} | {value} | {t.steps} | {gain} | {p} | {memory} | {hours} "
            f"| {detail} |"
        )
    base = next((t.vs_base for t in ranked if t.vs_base), None)
    if base:
        lines += [
            "",
            f"Base model: {base['metric']} = {base['base']:.4g} on the same {base['n']} eval records",
        ]
    best = record.best()
    if best:
        lines += [
            "",
            f"Best: {best.trial_id}, {record.metric} = {best.value:.4g}, adapter `{best.adapter_path}`",
        ]
    return "\n".join(lines) + "\n"


def _vs_base_text(trial) -> tuple[str, str]:
    """The gain over the base model on the same records (in points of its metric) and McNemar's p."""
    vs = trial.vs_base
    if not vs:
        return "-", "-"
    return f"{100 * vs['gain']:+.1f} pts", f"{vs['p_value']:.2g}"


def _cost_text(trial, metric: str) -> str:
    value = trial.cost.get(metric)
    return "-" if value is None else f"{value:.3g}"


def _scope_label(trial) -> str:
    scope = trial.params.get("training.lora.scope")
    return "+".join(scope) if isinstance(scope, list) else "(fixed)"


def _scope_plot(path: Path, record: StudyRecord, ranked) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [t for t in ranked if t.value is not None]
    scopes = sorted({_scope_label(t) for t in points}) or ["(none)"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for t in points:
        x = scopes.index(_scope_label(t))
        filled = t.state == TrialState.COMPLETE
        ax.scatter(x, t.value, s=60, facecolors="C0" if filled else "none", edgecolors="C0")
        rank = t.params.get("training.lora.r", "")
        lr = t.params.get("training.learning_rate.llm")
        ax.annotate(
            f"r={rank}" + (f" lr={lr:.1e}" if isinstance(lr, float) else ""),
            (x, t.value),
            textcoords="offset points",
            xytext=(6, 0),
            fontsize=7,
        )
    ax.set_xticks(range(len(scopes)), scopes)
    ax.set_xlim(-0.5, len(scopes) - 0.5 + 0.6)
    ax.set_ylabel(record.metric)
    ax.set_title(f"{record.name}: {record.metric} by LoRA scope (filled: complete, hollow: pruned)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _importances(optuna_study) -> dict:
    """PED-ANOVA importances of the searched params (empty with the reason when too few trials)."""
    if optuna_study is None:
        return {"importances": {}, "note": "no Optuna study"}
    import optuna

    complete = [
        t for t in optuna_study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE
    ]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = optuna.importance.get_param_importances(
                optuna_study, evaluator=optuna.importance.PedAnovaImportanceEvaluator()
            )
    except (ValueError, RuntimeError, ZeroDivisionError) as e:
        return {"importances": {}, "note": f"not computed from {len(complete)} complete trial(s): {e}"}
    return {
        "evaluator": "PED-ANOVA",
        "complete_trials": len(complete),
        "importances": {k: float(v) for k, v in values.items()},
    }


def _importance_plot(path: Path, importances: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = importances.get("importances", {})
    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.45 * max(1, len(values))))
    names = list(values)[::-1]
    ax.barh(names, [values[n] for n in names], color="C1")
    ax.set_xlabel("importance (PED-ANOVA)")
    ax.set_title(
        "parameter importances" if values else f"importances: {importances.get('note', 'none')}"[:80],
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
