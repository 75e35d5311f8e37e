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

from ..files import write_atomic
from ..layout import REPORT_PAGE, SUMMARY
from ..record.states import TrialState
from ..record.trials import StudyRecord, short_params
from ..train import cost
from . import html_report

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
    html_report.write(directory / REPORT_PAGE, record, optuna_study)
    summary = record.directory / SUMMARY
    if summary.is_file():
        write_atomic(directory / SUMMARY, summary.read_bytes())
    return directory


def prime(importances: bool = True) -> None:
    """Import what writing the report imports: matplotlib (which builds its font cache the first time on
    a machine, ~10 s), Optuna's importance evaluators (scikit-learn with them, ~1.5 s; not for a study
    too small for importances) and figures. Seconds the end of a study would otherwise wait for;
    ``raylora init`` and a study's driver, while its trials train, spend them instead."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401
    import optuna.visualization.matplotlib  # noqa: F401

    if importances:
        import optuna.importance  # noqa: F401


def load_optuna(journal: Path, name: str):
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
        f"# {record.title}",
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
    withheld = html_report.importances_withheld(optuna_study)
    if withheld:
        return {"importances": {}, "note": withheld}
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
