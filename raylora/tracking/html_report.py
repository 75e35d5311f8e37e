"""``report/index.html``: the study on one self-contained page (no scripts, no links out; figures are
inline SVG), so it opens from a folder, an object store or MLflow's artifact view alike.

    verdict                    sentences with numbers (:mod:`raylora.tracking.verdict`)
    Pareto front               with several objectives: the front's trials and Optuna's figure of it
    quality against cost       every trial's objective against its peak memory; the trials no other
                               beats on both marked (the Pareto front of the two)
    objective by scope / by quantization, with 95% intervals of each group's mean
    leaderboard                with the cost of each trial
    early stopping             hours saved, trials that could still have won, step–final agreement
    Optuna's own figures       parameter importances (PED-ANOVA), parallel coordinates, timeline
    intermediate values        each trial's objective at every evaluation (where ASHA stopped trials),
                               from ``summary.json``: Optuna keeps none for a study of several objectives

Optuna's figures are its matplotlib backend (plotly is not a dependency); they show this study's own trials,
not those a warm start lent the sampler.
"""

from __future__ import annotations

import functools
import html
import io
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from ..record.states import TrialState
from ..train import cost
from . import verdict as verdict_lib
from .figures import FigureCache

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd}
.verdict li{margin:.4em 0}table{border-collapse:collapse;font-size:.85em}
td,th{border:1px solid #ddd;padding:3px 6px;text-align:right}th{background:#f4f4f4}
td.l{text-align:left}.note{color:#777;font-size:.9em}figure{margin:1em 0}svg{max-width:100%;height:auto}
"""


def write(path: Path, record, optuna_study=None) -> Path:
    """Write the page for ``record`` (a StudyRecord) and its Optuna study (None: Optuna figures left out)."""
    trials = list(record.trials.values())
    own = _own_trials(optuna_study)
    figures = FigureCache(drawn_by=drawn_by())
    shown, ran = _shown(record), _ran(own)  # a figure is drawn again only when these (or drawn_by) change
    stopped = _stopping(record, trials)
    sections = [
        ("Verdict", _verdict(record, trials)),
        *([("Pareto front", _pareto(record, own))] if len(record.goals) > 1 else []),
        (
            f"{record.metric} against cost",
            figures.get(
                "quality_cost", shown, lambda: _figure_or_note(lambda: _quality_cost(record, trials))
            ),
        ),
        (
            "By scope and by quantization",
            figures.get("groups", shown, lambda: _figure_or_note(lambda: _groups(record, trials))),
        ),
        ("Leaderboard", _leaderboard(record)),
        *([("Early stopping", stopped)] if stopped else []),
        *(
            (title, figures.get(name, ran, lambda name=name: _optuna_figure(own, name)))
            for title, name in OPTUNA_FIGURES
        ),
        (
            "Intermediate values",
            figures.get("curves", shown, lambda: _figure_or_note(lambda: _curves(record, trials))),
        ),
    ]
    figures.prune()
    body = "".join(
        f'<h2 id="{_anchor(title)}">{html.escape(title)}</h2>{content}' for title, content in sections
    )
    title = html.escape(record.title)
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{STYLE}</style></head><body><h1>{title}</h1>{body}</body></html>\n"
    )
    path.write_text(page)
    return path


@functools.cache
def drawn_by() -> str:
    """What draws the page's figures: this module's source and the plotting libraries' versions. Cached
    figures of another (an upgrade, a fix to a figure) are drawn again."""
    import hashlib
    from importlib.metadata import version

    source = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
    return f"{source} optuna {version('optuna')} matplotlib {version('matplotlib')}"


OPTUNA_FIGURES = (
    ("Parameter importances", "plot_param_importances"),
    ("Parallel coordinates", "plot_parallel_coordinate"),
    ("Timeline", "plot_timeline"),
)


def _shown(record) -> list:
    """What the figures of ``record`` show: every trial as the summary has it, the objectives."""
    from dataclasses import asdict

    return [record.metric, record.mode, record.goals, [asdict(t) for t in record.trials.values()]]


def _ran(study) -> list | None:
    """What Optuna's figures of ``study`` show: each trial's state, params, values, steps and times."""
    if study is None:
        return None
    return [
        (
            t.number,
            t.state.name,
            t.params,
            t.values,
            t.intermediate_values,
            t.datetime_start,
            t.datetime_complete,
        )
        for t in study.get_trials(deepcopy=False)
    ]


def _anchor(title: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in title.lower())


def _verdict(record, trials) -> str:
    lines = verdict_lib.verdict(trials, record.metric, record.mode, _eval_items(record))
    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    return f'<ul class="verdict">{items}</ul>'


def _stopping(record, trials) -> str:
    """Step–final agreement by step, hours saved, stopped trials that could still have won ("" if none)."""
    from ..record.agreement import stopping_summary

    summary = stopping_summary(trials, record.mode)
    if not summary:
        return ""
    rows = "".join(
        f"<tr><td>{html.escape(step)}</td><td>{rho:.3f}</td></tr>"
        for step, rho in sorted(summary["agreement"].items(), key=lambda kv: int(kv[0]))
    )
    won = ", ".join(summary["could_have_won"]) or "none"
    rule = ""
    if record.scheduler == "fifo":
        rule = "No early stopping (fifo): every trial runs to its end. "
    elif record.scheduler:
        rule = f"Early-stopping rule: {html.escape(record.scheduler)}. "
    complete = sum(str(t.state) == "COMPLETE" for t in trials)
    table = (
        f"<table><tr><th>step</th><th>Spearman with the final value</th></tr>{rows}</table>"
        if rows
        else f"<p>Step–final agreement needs 3 complete trials with a value at the same step before their "
        f"last; this study has {complete} complete.</p>"
    )
    return (
        f"<p>{rule}Accelerator-hours saved by stopping: {summary['hours_saved']:.3g}. Stopped trials that "
        f"could still have beaten the winner's {html.escape(record.metric)}: {html.escape(won)}.</p>{table}"
    )


def _eval_items(record) -> dict[str, dict]:
    """Each trial's per-record final evaluation (``eval_items.json`` in its latest checkpoint), where the
    study's runs are on this machine (local or shared storage)."""
    import json

    from ..layout import CHECKPOINT_PREFIX, EVAL_ITEMS, RUNS

    out = {}
    for trial_id in record.trials:
        found = sorted((Path(record.directory) / RUNS / trial_id).glob(f"{CHECKPOINT_PREFIX}*/{EVAL_ITEMS}"))
        try:
            out.update({trial_id: json.loads(found[-1].read_text())} if found else {})
        except ValueError:  # a torn file: this trial is not paired
            pass
    return out


def _leaderboard(record) -> str:
    columns = [
        "#", "trial", "state", record.metric, "steps", "gain vs base", "p (McNemar)", "peak GB", "accel-h",
        "tokens/s", "params",
    ]  # fmt: skip
    rows = []
    for i, t in enumerate(record.ranked(), start=1):
        costs = [t.cost.get(m) for m in (cost.PEAK_MEM_GB, cost.ACCELERATOR_HOURS, cost.TOKENS_PER_S)]
        vs = t.vs_base or {}
        cells = [i, t.trial_id, t.state, t.value, t.steps, vs.get("gain"), vs.get("p_value"), *costs]
        text = [_num(c) for c in cells]
        params = ", ".join(
            f"{k.rsplit('.', 1)[-1] if 'learning_rate' not in k else 'lr.' + k.rsplit('.', 1)[-1]}={_num(v)}"
            for k, v in sorted(t.params.items())
        )
        rows.append(
            "<tr>"
            + "".join(f"<td>{html.escape(x)}</td>" for x in text)
            + f'<td class="l">{html.escape(params + (f" ({t.error})" if t.error else ""))}</td></tr>'
        )
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _num(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "+".join(map(str, value))
    return str(value)


# -- figures -----------------------------------------------------------------------------------------------


def _figure_or_note(draw: Callable) -> str:
    try:
        fig = draw()
    except _Nothing as e:
        return f'<p class="note">{html.escape(str(e))}</p>'
    return _svg(fig)


class _Nothing(Exception):
    """Nothing to draw; the message says why."""


def _svg(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buffer.getvalue()
    return f"<figure>{text[text.index('<svg') :]}</figure>"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _quality_cost(record, trials):
    points = [t for t in trials if t.value is not None and t.cost.get(cost.PEAK_MEM_GB) is not None]
    if not points:
        raise _Nothing("no trial reported both the objective and cost/peak_mem_gb")
    plt = _pyplot()
    front = _front(points, record.mode)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for t in points:
        filled = t.state == TrialState.COMPLETE
        color = "C3" if t in front else "C0"
        ax.scatter(
            t.cost[cost.PEAK_MEM_GB], t.value, s=50, facecolors=color if filled else "none", edgecolors=color
        )
        label = f"{t.trial_id} {verdict_lib.scope_family(t) or ''}"
        ax.annotate(
            label, (t.cost[cost.PEAK_MEM_GB], t.value), xytext=(5, 2), textcoords="offset points", fontsize=7
        )
    line = sorted(front, key=lambda t: t.cost[cost.PEAK_MEM_GB])
    ax.plot([t.cost[cost.PEAK_MEM_GB] for t in line], [t.value for t in line], "C3--", lw=1)
    ax.set_xlabel("peak memory (GB, largest over the trial's workers)")
    ax.set_ylabel(record.metric)
    ax.set_title("red: no other complete trial is both better and cheaper (hollow: pruned)", fontsize=9)
    return fig


def _curves(record, trials):
    """Each trial's objective at every evaluation it reported, by state (dashed: stopped early)."""
    drawn = [t for t in trials if t.curve]
    if not drawn:
        raise _Nothing(f"no trial has reported {record.metric} yet")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for t in sorted(drawn, key=lambda t: t.trial_id):
        steps = sorted(t.curve, key=int)
        complete = t.state == TrialState.COMPLETE
        ax.plot(
            [int(s) for s in steps],
            [t.curve[s] for s in steps],
            "-" if complete else "--",
            marker="o" if len(steps) == 1 else None,
            lw=1.2 if complete else 0.9,
            alpha=0.9 if complete else 0.6,
            label=f"{t.trial_id} ({str(t.state).lower()})",
        )
    ax.set_xlabel("step")
    ax.set_ylabel(record.metric)
    if len(drawn) <= 12:
        ax.legend(fontsize=7, ncol=2)
    ax.set_title("solid: complete; dashed: stopped early or unfinished", fontsize=9)
    return fig


def _front(points, mode: str) -> list:
    """The complete trials no other complete trial beats on both the objective and peak memory."""
    sign = 1 if mode == "min" else -1
    complete = [t for t in points if t.state == TrialState.COMPLETE]

    def dominates(a, b) -> bool:
        qa, qb = sign * a.value, sign * b.value
        ma, mb = a.cost[cost.PEAK_MEM_GB], b.cost[cost.PEAK_MEM_GB]
        return qa <= qb and ma <= mb and (qa < qb or ma < mb)

    return [t for t in complete if not any(dominates(o, t) for o in complete if o is not t)]


def _groups(record, trials):
    panels = [
        ("scope", verdict_lib.groups(trials, verdict_lib.scope_family, record.mode)),
        ("quantization", verdict_lib.groups(trials, verdict_lib.quantization, record.mode)),
    ]
    panels = [(name, found) for name, found in panels if found]
    if not panels:
        raise _Nothing("neither scope nor quantization is searched, or no trial completed")
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (name, found) in zip(axes[0], panels, strict=True):
        for x, group in enumerate(found):
            ax.scatter([x] * len(group.values), group.values, s=25, color="C0", alpha=0.6)
            interval = group.mean_interval()
            if interval is not None:
                mean, low, high = interval
                ax.errorbar(
                    x + 0.15, mean, yerr=[[mean - low], [high - mean]], fmt="s", color="C1", capsize=4
                )
        ax.set_xticks(range(len(found)), [f"{g.label}\n(n={len(g.trials)})" for g in found])
        ax.set_xlim(-0.5, len(found) - 0.5)
        ax.set_title(f"{record.metric} by {name}: complete trials, mean with 95% interval", fontsize=9)
        ax.set_ylabel(record.metric)
    fig.tight_layout()
    return fig


def _own_trials(optuna_study):
    """An in-memory copy of the study holding only its own trials (not those a warm start lent)."""
    if optuna_study is None:
        return None
    import optuna

    from ..record.trials import WARM_START

    with _optuna_says_only(optuna.logging.WARNING):  # not Optuna's "A new study created" at INFO
        copy = optuna.create_study(directions=optuna_study.directions)
    copy.add_trials(
        [
            t
            for t in optuna_study.get_trials(deepcopy=False)
            if WARM_START not in t.user_attrs and t.state.is_finished()
        ]
    )
    return copy


@contextmanager
def _optuna_says_only(level: int):
    import optuna

    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(max(before, level))
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)


def _pareto(record, study) -> str:
    """Optuna's Pareto-front figure (two or three objectives), and the front's trials."""
    front = record.to_dict().get("pareto_front") or []
    names = [metric for metric, _ in record.goals]
    listed = f"<p>Trials on the front: {html.escape(', '.join(front) or 'none yet')}.</p>"
    if study is None or len(names) > 3:
        return listed
    return listed + _optuna_figure(study, "plot_pareto_front", target_names=names)


IMPORTANCE_MIN_COMPLETE = 2
"""PED-ANOVA compares the params of the best 10% of complete trials with those of all: from one trial the
two sets are the same, and Optuna returns equal importances that measure nothing."""


def importances_withheld(study) -> str | None:
    """Why no parameter importances are computed for ``study`` (None: they are)."""
    import optuna

    complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
    if complete >= IMPORTANCE_MIN_COMPLETE:
        return None
    return (
        f"not computed from {complete} complete trial(s): PED-ANOVA compares the best 10% of the complete "
        f"trials with all of them, and needs at least {IMPORTANCE_MIN_COMPLETE}"
    )


def _optuna_figure(study, name: str, **kwargs) -> str:
    if study is None:
        return '<p class="note">no Optuna study (optuna.journal) to draw from</p>'
    if name == "plot_param_importances" and (withheld := importances_withheld(study)):
        return f'<p class="note">{html.escape(withheld)}</p>'
    import optuna
    from optuna.visualization import matplotlib as figures

    _pyplot()
    if name == "plot_param_importances":
        kwargs["evaluator"] = optuna.importance.PedAnovaImportanceEvaluator()
    try:
        # Not Optuna's "[W] ... does not contain completed trials": the page says so in the figure's place.
        with warnings.catch_warnings(), _optuna_says_only(optuna.logging.ERROR):
            warnings.simplefilter("ignore")
            ax = getattr(figures, name)(study, **kwargs)
    except (ValueError, RuntimeError, ZeroDivisionError, IndexError, KeyError) as e:
        return f'<p class="note">not drawn from {len(study.trials)} trial(s): {html.escape(str(e))}</p>'
    fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
    if not fig.axes or not any(a.has_data() for a in fig.axes):
        _pyplot().close(fig)
        return f'<p class="note">nothing to draw yet from {len(study.trials)} trial(s)</p>'
    fig.set_size_inches(8, 4.5)
    return _svg(fig)
