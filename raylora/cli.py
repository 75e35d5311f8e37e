"""The ``raylora`` command line: the only place that prints results and chooses exit codes.

Exit codes: 0 success, 2 a user error (one line per problem, naming the YAML path or ``file:line``),
1 anything unexpected.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from . import layout
from .errors import UserError

app = typer.Typer(
    add_completion=True,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Measure which parts of a Qwen3-VL model LoRA should train: studies on Ray, recorded in MLflow.",
)

SpecArg = Annotated[
    Path,
    typer.Argument(
        metavar="SPEC", help="The study spec YAML (`raylora init` writes one).", show_default=False
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a spec value: --set training.lora.r=32 (value parsed as YAML)."),
]


@app.command()
def inspect(
    model: Annotated[
        str, typer.Argument(help="config.json, a checkpoint folder, a hub id, or builtin:tiny-qwen3-vl.")
    ],
    r: Annotated[int, typer.Option("--r", min=1, help="LoRA rank for the parameter counts.")] = 16,
    scope: Annotated[
        list[str] | None,
        typer.Option("--scope", help="Only these scopes (repeatable); default: all parts."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Modules, base parameters and LoRA parameters per scope, from the config alone (no weights)."""
    from . import builtin
    from .train import scopes

    try:
        counts = scopes.inspect(builtin.resolve_model(model), r=r, scopes=scope or None)
    except scopes.ScopeError as e:
        raise UserError("inspect", str(e)) from None
    if as_json:
        print(json.dumps({k: counts[k] for k in ("model_type", "total_params", "scopes")}))
        return
    _print_inspect(counts, r)


def _print_inspect(counts: dict, r: int) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"{counts['model_type']}: {counts['total_params']:,} parameters; LoRA at r={r}")
    table.add_column("scope")
    for column in ("modules", "base params", "LoRA params"):
        table.add_column(column, justify="right")
    for part, row in counts["scopes"].items():
        table.add_row(part, f"{row['modules']:,}", f"{row['base_params']:,}", f"{row['lora_params']:,}")
    console.print(table)
    for part, names in counts.get("modules", {}).items():
        if names:
            console.print(f"[bold]{part}[/bold] targets: " + ", ".join(names), soft_wrap=True)
    for note in counts.get("notes", []):
        console.print(f"note: {note}", soft_wrap=True)


@app.command()
def init(
    starter: Annotated[
        str, typer.Argument(help="quickstart, scope_study or qlora_budget.", show_default=True)
    ] = "quickstart",
    directory: Annotated[Path, typer.Argument(help="Where to write <starter>.yaml.")] = Path("."),
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
) -> None:
    """Write a commented starter spec to edit (like `tune cp`): what it studies, how to run it, its cost."""
    from .spec import starters

    target = starters.write(starter, directory, force)
    print(f"wrote {target}")
    _prime_plots()
    print(f"next: raylora validate {target}  then  raylora search {target}")


def _prime_plots() -> None:
    """Build matplotlib's font cache now, once per machine, if it has none: else the first study's report
    waits for it."""
    import matplotlib

    if not list(Path(matplotlib.get_cachedir()).glob("fontlist-*.json")):
        print("building matplotlib's font cache (once per machine)")
        from .tracking import report

        report.prime()


@app.command()
def validate(spec_path: SpecArg, set_: SetOpt = None) -> None:
    """Check a spec, its search space, and its local model and data; report every problem at once."""
    from .train.preflight import check_ranks_from_config

    spec = _load_checked(spec_path, set_ or [])
    check_ranks_from_config(spec)
    print(f"{spec_path}: ok ({len(spec.search)} searched paths, {spec.study.num_trials} trials)")


@app.command()
def estimate(
    spec_path: SpecArg,
    set_: SetOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Predict a trial's peak accelerator memory per worker (weights, LoRA, optimizer, activations)."""
    spec = _load_checked(spec_path, set_ or [])
    rows = _estimates(spec)
    if as_json:
        print(json.dumps({label: est.to_dict() for label, est in rows}))
        return
    _print_estimates(spec, rows)


def _estimates(spec) -> list:
    """The fixed values' estimate, then one per searched value of each searched path."""
    from .record.trials import short_params
    from .spec import space
    from .train import estimate as estimate_lib

    rows = [("fixed values", estimate_lib.estimate(spec))]
    rows += estimate_lib.by_workers(spec)  # sharding: fsdp — the same trial on 1, 2, 4 and 8 workers
    for path, dist in space.distributions(spec).items():
        if path.startswith("training.learning_rate."):
            continue  # learning rates move no memory
        for value in dist.candidates():
            rows.append((short_params({path: value}), estimate_lib.estimate(spec.with_values({path: value}))))
    return rows


def _print_estimates(spec, rows) -> None:
    from rich.console import Console
    from rich.table import Table

    from .train.estimate import GIB, fits

    budget = spec.resources.gpu_memory_gb
    table = Table(title=f"peak memory per worker ({spec.model.name_or_path})")
    for column in ("trial shape", "weights", "LoRA+grads+optim", "activations", "total"):
        table.add_column(column, justify="left" if column == "trial shape" else "right")
    if budget:
        table.add_column(f"fits {budget:g} GiB")
    for label, est in rows:
        state = est.lora_bytes + est.grads_bytes + est.optimizer_bytes
        cells = [
            label,
            *(
                f"{v / GIB:.2f} GiB"
                for v in (est.weights_bytes, state, est.activations_bytes, est.total_bytes)
            ),
        ]
        if budget:
            cells.append("yes" if fits(est, budget) else "NO")
        table.add_row(*cells)
    Console(width=120).print(table)


@app.command()
def train(
    spec_path: SpecArg,
    set_: SetOpt = None,
    output: Annotated[
        Path | None, typer.Option("--output", help="Folder for adapter/, metrics.json, targets.json.")
    ] = None,
) -> None:
    """Train one trial with the spec's fixed values (no search), standalone in this process."""
    spec = _load_checked(spec_path, set_ or [])
    from .train import LocalSession, download
    from .train import train as run_train

    if output is None and "://" in spec.study.storage:
        raise UserError(
            "--output", f"study.storage is a URI ({spec.study.storage.split('?')[0]}); give a folder"
        )
    output = output or Path(spec.study.storage).expanduser() / spec.study.name / "train"
    from .train.preflight import check_ranks

    check_ranks(spec, sampled=False)  # the fixed values: --set wins over search:
    download.ensure_local(spec.model.name_or_path, spec.model.revision)
    session = LocalSession(output)
    try:
        run_train(spec, session)
    finally:
        session.close()  # the step bar leaves the terminal on an error too
    print(f"adapter: {output / layout.ADAPTER}")
    print(f"metrics: {output / layout.METRICS_FILE}  targets: {output / layout.TARGETS}")


@app.command()
def predict(
    model: Annotated[
        str,
        typer.Argument(
            metavar="ADAPTER_OR_MODEL",
            help="An adapter folder (or a `raylora train` output), a base model (hub id, folder, "
            "builtin:tiny-qwen3-vl), or an MLflow model URI (models:/NAME@champion).",
        ),
    ],
    image: Annotated[Path | None, typer.Option("--image", help="A screenshot (PNG, JPEG).")] = None,
    instruction: Annotated[str | None, typer.Option("--instruction", help="What to do on it.")] = None,
    data_file: Annotated[
        Path | None,
        typer.Option("--data", help="Answer every record of a dataset instead; JSONL out, one line each."),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", help="Write the JSONL here (default: standard output).")
    ] = None,
    base_model: Annotated[
        str | None, typer.Option("--base-model", help="The adapter's base, if not the one it names.")
    ] = None,
    min_pixels: Annotated[int | None, typer.Option("--min-pixels", min=1)] = None,
    max_pixels: Annotated[
        int | None, typer.Option("--max-pixels", min=1, help="Image area bounds, as data.image in training.")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1)] = 24,
) -> None:
    """Answer a screenshot (or a whole dataset) with a trained adapter or a base model: the model's text and
    the click it names, through the same code as the promoted MLflow model."""
    if (data_file is None) == (image is None or instruction is None):
        raise UserError("predict", "give --image and --instruction, or --data FILE")
    if image is not None and not image.is_file():
        raise UserError("--image", f"{image}: no such file")
    _check_model_ref(model)
    records = _read_records(data_file) if data_file is not None else None
    from .tracking import serving

    answering = serving.open_model(model, base_model, min_pixels=min_pixels, max_pixels=max_pixels)
    if records is None:
        text = answering.click(image, instruction, max_new_tokens)
        print(f"answer: {json.dumps(text, ensure_ascii=False)}")  # one line, quoted as the model wrote it
        print(_click_line(text, image))
        return
    out = output.open("w") if output else sys.stdout
    try:
        for index, record in enumerate(records):
            text = serving.answer_record(answering, record, max_new_tokens)
            print(json.dumps({"index": index, "output": text, "click": _click(text)}), file=out, flush=True)
            if output:
                print(f"\r{index + 1}/{len(records)} answered", end="", file=sys.stderr, flush=True)
    finally:
        if output:
            out.close()
            print(f"\nwrote {output}", file=sys.stderr)


def _check_model_ref(ref: str) -> None:

    if ref.startswith(("models:/", "runs:/", "builtin:")) or Path(ref).exists():
        return
    from .train.download import is_hub_id

    if not is_hub_id(ref):
        raise UserError(
            "predict", f"{ref}: not a folder, a hub id (owner/name), builtin:... or an MLflow models:/ URI"
        )


def _read_records(path: Path):
    from .data import samples

    if not path.is_file():
        raise UserError("--data", f"{path}: no such file")
    return samples.read(path)


def _click(text: str) -> list[float] | None:
    from .train.evaluate import parse_click

    point = parse_click(text)
    return list(point) if point else None


def _click_line(text: str, image: Path) -> str:
    point = _click(text)
    if point is None:
        return "click: none (the answer names no click(x, y))"
    from .data import images

    width, height = images.size(str(image), str(image))
    x, y = point
    return (
        f"click: ({x:g}, {y:g}) in 0-1000 → pixel ({round(x * width / 1000)}, {round(y * height / 1000)}) "
        f"of the {width}×{height} {image.name}"
    )


FmtOpt = Annotated[
    str, typer.Option("--format", help="auto, chat, sharegpt, qwen, screenspot, screenspot-pro.")
]
CoordinatesOpt = Annotated[
    str, typer.Option("--coordinates", help="The data's convention (data.coordinates): qwen3vl, mai-ui, ...")
]
TemplateOpt = Annotated[
    str, typer.Option("--template", help="The answer template (data.template): click, qwen3vl, mai-ui.")
]
DataOpt = Annotated[
    str,
    typer.Option(
        "--data", help="A dataset file, dataset_info.json#NAME, or builtin:gui-grounding (its eval split)."
    ),
]


@app.command()
def score(
    predictions: Annotated[
        Path,
        typer.Argument(
            metavar="PREDICTIONS",
            help='JSONL: {"index": i, "output": "..."} per answered record (or "id"), as raylora predict '
            "--data or raylora eval --predictions-out write.",
        ),
    ],
    data_ref: DataOpt,
    fmt: FmtOpt = "auto",
    coordinates: CoordinatesOpt = "qwen3vl",
    template: TemplateOpt = "click",
    against: Annotated[
        Path | None,
        typer.Option(
            "--against",
            help="Another model's predictions on the same data (the base model's): the gain on the records "
            "both answered and McNemar's paired test.",
        ),
    ] = None,
    min_pixels: Annotated[int | None, typer.Option("--min-pixels", min=1)] = None,
    max_pixels: Annotated[
        int | None,
        typer.Option(
            "--max-pixels",
            min=1,
            help="The processor's image area bounds (data.image), which --coordinates resized-pixels need "
            "(sides in multiples of 28, Qwen2.5-VL's).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Score model outputs against a dataset, no model needed: click accuracy, format errors, action-type and
    step accuracy for navigation records, per category, each with n and a 95% Wilson interval."""
    from .data import coordinates as conventions
    from .data import scoring

    known = min_pixels is not None and max_pixels is not None
    bounds = conventions.Bounds(min_pixels, max_pixels) if known else None
    records, convention = _scored_data(data_ref, fmt, coordinates, template, bounds=bounds)
    goals = scoring.goals(
        records, convention, bounds
    )  # every record's: a reference with no action is an error
    outputs = scoring.read_predictions(predictions, records)
    results = {i: scoring.score(outputs[i], goals[i]) for i in sorted(outputs)}
    scores = scoring.summarize(list(results.values()))
    scores["unanswered"] = len(records) - len(outputs)
    if against is not None:
        old = scoring.read_predictions(against, records)
        both = [i for i in results if i in old]
        scores["against"] = scoring.paired(
            [results[i] for i in both],
            [scoring.score(old[i], goals[i]) for i in both],
        )
    _print_score(scores, as_json)


@app.command("eval")
def eval_(
    model: Annotated[
        str,
        typer.Argument(
            metavar="MODEL_OR_ADAPTER",
            help="A base model (hub id, folder, builtin:tiny-qwen3-vl) or an adapter folder (a raylora "
            "train output, a trial's checkpoint).",
        ),
    ],
    data_ref: DataOpt,
    fmt: FmtOpt = "auto",
    coordinates: CoordinatesOpt = "qwen3vl",
    template: TemplateOpt = "click",
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Only the first N records.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Records per generate call.")] = 8,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1)] = 64,
    base_model: Annotated[
        str | None, typer.Option("--base-model", help="The adapter's base, if not the one it names.")
    ] = None,
    min_pixels: Annotated[int | None, typer.Option("--min-pixels", min=1)] = None,
    max_pixels: Annotated[
        int | None, typer.Option("--max-pixels", min=1, help="Image area bounds, as data.image in training.")
    ] = None,
    predictions_out: Annotated[
        Path | None,
        typer.Option("--predictions-out", help="Also write the outputs as JSONL (what raylora score reads)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Answer every record of a dataset with a base model or a trained adapter (batched greedy generation
    with the data's prompts), then score the answers as `raylora score` does."""
    if model.startswith(("models:/", "runs:/")):
        raise UserError(
            "eval", f"{model}: give an adapter folder or a base model (MLflow URIs: raylora predict)"
        )
    try:
        _check_model_ref(model)
    except UserError:
        raise UserError("eval", f"{model}: not a folder, a hub id (owner/name) or builtin:...") from None
    from .data import scoring
    from .data import templates as answer_templates
    from .train import encode, evaluate, inference

    def load():
        return inference.Predictor.load(model, base_model, min_pixels=min_pixels, max_pixels=max_pixels)

    predictor = None
    chosen = answer_templates.TEMPLATES.get(template)
    if chosen is not None and chosen.answer_convention(coordinates) == "resized-pixels":
        predictor = load()  # the data's answers depend on the processor's bounds: known once it is loaded
    bounds = encode.bounds(predictor.processor, predictor.image_kw) if predictor is not None else None
    records, convention = _scored_data(data_ref, fmt, coordinates, template, limit, bounds, processor=True)
    predictor = predictor or load()
    bounds = encode.bounds(predictor.processor, predictor.image_kw)
    goals = scoring.goals(records, convention, bounds)  # a reference with no action: before any generation
    outputs = evaluate.generate(
        predictor.model,
        records,
        predictor.processor,
        predictor.image_kw,
        max_new_tokens,
        batch_size,
        predictor.device,
    )
    if predictions_out is not None:
        with predictions_out.open("w") as out:
            for index, (record, text) in enumerate(zip(records, outputs, strict=True)):
                row = {"index": index, "output": text, **({"id": record.id} if record.id is not None else {})}
                print(json.dumps(row, ensure_ascii=False), file=out)
    scores = scoring.summarize([scoring.score(text, g) for g, text in zip(goals, outputs, strict=True)])
    scores["unanswered"] = 0
    _print_score(scores, as_json)
    if predictions_out is not None and not as_json:
        print(f"predictions: {predictions_out}")


def _scored_data(
    data_ref: str,
    fmt: str,
    coordinates: str,
    template: str,
    limit: int | None = None,
    bounds=None,
    processor: bool = False,
):
    """The records of ``data_ref`` and the convention their answers (and boxes) are in; ``resized-pixels``
    are refused in one line unless the processor's ``bounds`` are known (or a ``processor`` will be)."""
    from . import builtin
    from .data import coordinates as conventions
    from .data import formats, samples, templates

    if fmt != "auto" and fmt not in formats.FORMATS:
        raise UserError("--format", f"unknown format {fmt!r} (known: auto, {', '.join(formats.FORMATS)})")
    try:
        convention = templates.get(template).answer_convention(conventions.get(coordinates).name)
    except ValueError as e:
        raise UserError("--template" if "template" in str(e) else "--coordinates", str(e)) from None
    if conventions.get(convention).resized and bounds is None and not processor:
        from .data.scoring import RESIZED_NEEDS_BOUNDS

        raise UserError("--coordinates", RESIZED_NEEDS_BOUNDS)
    try:
        path = builtin.resolve_data(data_ref, "eval") if builtin.is_builtin(data_ref) else data_ref
    except ValueError as e:
        raise UserError("--data", str(e)) from None
    return samples.read(path, limit, fmt, coordinates, template, bounds=bounds), convention


def _print_score(scores: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(scores))
        return

    def line(block: dict) -> str:
        parts = [f"n {block['n']}"]
        for name in ("click_acc", "type_acc", "step_acc"):
            if block.get(name) is not None:
                lo, hi = block[f"{name}_ci"]
                parts.append(f"{name} {block[name]:.3f} [{lo:.3f}, {hi:.3f}]")
        parts.append(f"format errors {block['format_errors']}")
        return " · ".join(parts)

    print(line(scores))
    if scores["unscored"] or scores["unanswered"]:
        print(
            f"not scored: {scores['unanswered']} records without a prediction, {scores['unscored']} whose "
            "reference answer names no action"
        )
    for field, values in scores["by"].items():
        print(f"by {field}:")
        for value, block in values.items():
            print(f"  {value}: {line(block)}")
    for name, pair in scores.get("against", {}).items():
        print(
            f"{name} against the other predictions: {pair['new']:.3f} vs {pair['old']:.3f} on {pair['n']} "
            f"records, gain {pair['gain']:+.3f}; McNemar p = {pair['p_value']:.3g} ({pair['a_only']} right "
            f"only here, {pair['b_only']} only there)"
        )


@app.command()
def search(
    spec_path: SpecArg,
    set_: SetOpt = None,
    address: Annotated[
        str | None, typer.Option("--address", help="Ray cluster to attach to (default: a local Ray).")
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            "--storage",
            help="Where studies live: a folder (shared on a multi-node cluster) or a URI such as "
            "s3://bucket/prefix or gs://bucket/prefix (default: study.storage).",
        ),
    ] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option("--tracking-uri", help="MLflow tracking URI (default: tracking.tracking_uri)."),
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the study of the same name.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate, resolve the space, check resources; train nothing.")
    ] = False,
    accept_spec: Annotated[
        bool,
        typer.Option(
            "--accept-spec",
            help="With --resume: take this spec as the study's when its spec.json is missing.",
        ),
    ] = False,
) -> None:
    """Run a hyperparameter study: Optuna proposes, ASHA stops early, trials train on Ray Train workers."""
    spec, pinned = _load_checked(spec_path, list(set_ or []), with_pins=True)
    for path in pinned:
        print(f"pinned by --set: {path} = {json.dumps(spec.get(path))} (not searched)")
    from .study import driver

    try:
        plan, record = driver.run(
            spec,
            storage=storage,
            address=address,
            tracking_uri=tracking_uri,
            resume=resume,
            dry_run=dry_run,
            accept_spec=accept_spec,
        )
    except KeyboardInterrupt:  # before or after Tune's loop, which ends on its own and returns
        from .study import signals

        how = "terminated" if signals.terminated() else "interrupted"
        print(f"{how}; continue the study with --resume", file=sys.stderr)
        sys.exit(signals.exit_code())
    if dry_run:
        _print_plan(spec, plan)
        _print_estimates(spec, _estimates(spec))
        return
    if plan.remaining == 0:
        print(f"study {spec.study.name}: all {len(record.finished())} trials finished; nothing to do")
    _print_leaderboard(record)
    # The verdict first: it is what the study was run for; the tables and links after it.
    print(f"report: {plan.storage.display(f'{layout.REPORT_DIR}/index.html')}  (the verdict)")
    print(f"leaderboard: {plan.storage.display(f'{layout.REPORT_DIR}/leaderboard.md')}")
    print(f"summary: {plan.storage.display(layout.SUMMARY)}")
    if plan.runs_link:
        print(f"MLflow: {plan.runs_link}")
    if plan.dashboard_url:
        print(f"Ray dashboard: {plan.dashboard_url} (while this Ray runs)")
    print(f"Optuna: optuna-dashboard {plan.study_dir / 'optuna.journal'}  (pip install 'raylora[dashboard]')")
    failed = sorted((t for t in record.trials.values() if t.state == "FAILED"), key=lambda t: t.trial_id)
    if failed and len(failed) == len(record.trials):  # nothing was learned: not a success
        first = failed[0]
        print(f"error: every trial failed; the first, {first.trial_id}: {first.error}", file=sys.stderr)
        sys.exit(1)
    if plan.unfinished:
        from .study import signals

        unfinished = ", ".join(plan.unfinished)
        how = "terminated" if signals.terminated() else "interrupted"
        print(f"{how}: {unfinished} unfinished; continue the study with --resume", file=sys.stderr)
        sys.exit(signals.exit_code())


@app.command()
def status(
    target: Annotated[
        str, typer.Argument(metavar="STUDY_DIR_OR_URI", help="A study folder or URI (<storage>/<study>).")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Where a running, stopped or finished study stands, read from its folder (starts nothing): trials by
    state, the best so far, each running trial's step and last report, the lock holder, what --resume would
    do."""
    from .study import status as status_lib

    standing = status_lib.read(target)
    if as_json:
        print(json.dumps(standing.to_dict()))
        return
    _print_standing(standing)


def _print_standing(standing) -> None:
    asked = f" of {standing.num_trials} asked" if standing.num_trials is not None else ""
    print(f"study {standing.name} ({standing.location}): {standing.state}")
    counts = " · ".join(f"{state.lower()} {n}" for state, n in standing.counts.items())
    print(f"  trials{asked}: {counts}")
    best = standing.best
    if best:
        from .record.trials import short_params

        params = short_params(best["params"])
        print(f"  best: {best['trial_id']} {standing.metric} {best['value']:.4g}  {params}")
    else:
        print("  best: no complete trial yet")
    for trial in standing.running:
        age = _age(trial.last_report_age_s)
        last = f"step {trial.step}, last report {age} ago" if age else "no report yet"
        value = f", {standing.metric} {trial.value:.4g}" if trial.value is not None else ""
        print(f"  unfinished {trial.trial_id}: {last}{value}")
    lock = standing.lock
    if lock:
        gone = " — that driver is gone (stale)" if lock["stale"] else ""
        renewed = (
            f", renewed {_age(lock['renewed_age_s'])} ago" if lock.get("renewed_age_s") is not None else ""
        )
        print(
            f"  lock: pid {lock.get('pid')} on {lock.get('host')} since {lock.get('started')}{renewed}{gone}"
        )
    else:
        print("  lock: free (no driver runs the study)")
    print(f"  --resume would: {standing.resume}")


def _age(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@app.command()
def report(
    target: Annotated[
        str,
        typer.Argument(help="A study folder or URI (<storage>/<study>), or an MLflow experiment name."),
    ],
    tracking_uri: Annotated[str | None, typer.Option("--tracking-uri", help="MLflow tracking URI.")] = None,
) -> None:
    """Regenerate a study's report (leaderboard, scope comparison, importances) and log it to MLflow."""
    from .study import refresh

    out = refresh.regenerate(target, tracking_uri)
    print((out / "leaderboard.md").read_text(), end="")
    print(f"report: {out}")


data_app = typer.Typer(no_args_is_help=True, help="Look at a dataset the way raylora reads it.")
app.add_typer(data_app, name="data")


@data_app.command("inspect")
def data_inspect(
    target: Annotated[
        str,
        typer.Argument(metavar="PATH_OR_SPEC", help="A dataset (file, dataset_info.json#NAME) or a spec."),
    ],
    fmt: Annotated[str | None, typer.Option("--format", help="auto, chat, sharegpt, qwen, ...")] = None,
    coordinates: Annotated[str | None, typer.Option("--coordinates", help="qwen3vl, mai-ui, ...")] = None,
    template: Annotated[str | None, typer.Option("--template", help="click, qwen3vl, mai-ui")] = None,
    column: Annotated[
        list[str] | None,
        typer.Option(
            "--column", help="Rename a column, format name=dataset name: --column img_filename=path"
        ),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Read at most this many records.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Format, records, images, image and supervised tokens, records too long, coordinate range, and one
    record rendered with its supervised span marked ⟦...⟧."""
    from . import spec as spec_lib
    from .train import data_inspect

    overrides = [
        f"data.{k}={v}"
        for k, v in (("format", fmt), ("coordinates", coordinates), ("template", template))
        if v
    ]
    if data_inspect.is_spec(target):
        spec = spec_lib.load(target, overrides)
        refs = [spec.data.train] + (
            [spec.data.eval] if spec.data.eval and spec.data.eval != spec.data.train else []
        )
    else:
        spec = spec_lib.build({"data": {"train": target}})
        spec = spec.with_values({o.split("=", 1)[0]: o.split("=", 1)[1] for o in overrides})
        refs = [target]
    if column:
        pairs = [c.partition("=") for c in column]
        if any(not name or not eq or not source for name, eq, source in pairs):
            raise UserError(
                "--column", "give FORMAT_NAME=DATASET_NAME, e.g. --column img_filename=image_path"
            )
        spec = spec.with_values({"data.columns": {name: source for name, _, source in pairs}})
    from . import builtin

    for ref in refs:
        path = builtin.resolve_data(ref, "train") if builtin.is_builtin(ref) else ref
        seen = {"path": ref, **data_inspect.inspect(path, spec, limit)}
        if as_json:
            print(json.dumps(seen))
        else:
            _print_data_inspection(seen)


@data_app.command("convert")
def data_convert(
    src: Annotated[Path, typer.Argument(metavar="SRC", help="The dataset's file or folder, as published.")],
    name: Annotated[
        str, typer.Option("--from", help="androidcontrol, gui-odyssey, aguvis, os-atlas or showui.")
    ],
    out: Annotated[Path, typer.Option("--out", help="The chat JSONL to write.")],
    template: Annotated[str, typer.Option("--template", help="click, qwen3vl or mai-ui.")] = "click",
    coordinates: Annotated[
        str, typer.Option("--coordinates", help="The answers' convention for --template click: qwen3vl, ...")
    ] = "qwen3vl",
    history: Annotated[
        int | None,
        typer.Option("--history", min=0, help="Earlier screenshots per navigation step (mai-ui: 3, else 0)."),
    ] = None,
    split: Annotated[
        str | None, typer.Option("--split", help="Only this split's episodes: NAME or FILE.json:NAME.")
    ] = None,
    level: Annotated[
        str, typer.Option("--level", help="high: the goal; low: the goal and the step instruction.")
    ] = "high",
) -> None:
    """Write an episode or element-list dataset as chat records, one per step or element, with its
    reference box; print the records, the dropped ones with reasons, and the actions by type."""
    from .data import convert

    try:
        report = convert.convert(src, name, out, template, coordinates, history, split, level)
    except ValueError as e:  # an unknown template or convention
        raise UserError("--template" if "template" in str(e) else "--coordinates", str(e)) from None
    print("\n".join(report.lines()))


def _print_data_inspection(seen: dict) -> None:
    coords = seen["coordinates"]
    print(f"{seen['path']}: {seen['format']} · {seen['records']} records · {seen['images']} images")
    print(
        f"  image tokens {seen['image_tokens_total']:,}"
        f" · supervised tokens {seen['supervised_tokens_total']:,}"
        f" · dropped as longer than {seen['max_length']}: {seen['dropped_too_long']}"
    )
    print(
        f"  coordinates {coords['convention']}: x {coords['x']} y {coords['y']}"
        + ("" if coords.get("within_range", True) else "  ← OUTSIDE the convention's range")
    )
    for field, counts in seen["categories"].items():
        print(f"  {field}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    if "example" in seen:
        print(f"  {seen['example']['where']}, supervised span in ⟦⟧:")
        print("    " + seen["example"]["rendered"].replace("\n", "\n    "))


promote_app = typer.Typer(
    no_args_is_help=True, help="Register a study's best adapter in the MLflow Model Registry."
)
app.add_typer(promote_app, name="promote")


@promote_app.command("best")
def promote_best(
    experiment: Annotated[
        str | None, typer.Option("--experiment", help="The study's MLflow experiment.")
    ] = None,
    tracking_uri: Annotated[str | None, typer.Option("--tracking-uri", help="MLflow tracking URI.")] = None,
    metric: Annotated[str | None, typer.Option("--metric", help="Default: the study's objective.")] = None,
    mode: Annotated[str | None, typer.Option("--mode", help="min or max (default: the study's).")] = None,
    model_name: Annotated[
        str | None,
        typer.Option(
            "--model-name",
            help="Registered model name (default: tracking.registered_model, else the experiment).",
        ),
    ] = None,
    alias: Annotated[str, typer.Option("--alias", help="Alias to point at the new version.")] = "champion",
    merge: Annotated[
        Path | None, typer.Option("--merge", help="Also write a merged model (safetensors) to this folder.")
    ] = None,
    policy: Annotated[
        str,
        typer.Option(
            "--policy",
            help="best: the best objective; cheapest-within: the cheapest (--cost) trial within --tolerance "
            "of the best.",
        ),
    ] = "best",
    tolerance: Annotated[
        float | None,
        typer.Option("--tolerance", help="cheapest-within: how far from the best, in the objective's units."),
    ] = None,
    cost: Annotated[
        str,
        typer.Option(
            "--cost",
            help="cheapest-within: cost/peak_mem_gb, cost/accelerator_hours, cost/tokens_per_s or "
            "cost/trainable_params.",
        ),
    ] = "cost/peak_mem_gb",
) -> None:
    """Pick the best finished, feasible trial (or the cheapest one close enough to it); register its
    adapter as a pyfunc model; set the alias."""
    from .tracking import promote, store, tracker

    if mode not in (None, "min", "max"):
        raise UserError("--mode", f"must be min or max, got {mode!r}")
    chooser = promote.Policy(policy, tolerance, cost)
    chooser.check()
    uri = tracker.tracking_uri(tracking_uri)
    store.must_exist(uri)  # promoting reads a store: it never creates an empty one
    store.must_answer(uri)  # a dead server: one line within seconds, not minutes of retries
    experiment = experiment or _only_study_experiment(uri)
    result = promote.promote_best(
        policy=chooser,
        experiment=experiment,
        tracking_uri=uri,
        metric=metric,
        mode=mode,
        model_name=model_name,
        alias=alias,
        merge_dir=merge,
    )
    if result.policy == "cheapest-within":
        print(
            f"cheapest by {cost} within {tolerance:g} of the best ({result.best_trial_id}, "
            f"{result.best_value:.4g}): trial {result.trial_id}, {cost} = {result.cost:.4g}"
        )
    print(
        f"registered {result.model_name} version {result.version} (@{result.alias}) from trial "
        f"{result.trial_id} (run {result.run_id}), value {result.value:.4g}"
    )
    if result.merged_dir:
        print(f"merged model: {result.merged_dir}")


def _only_study_experiment(uri: str) -> str:
    """The one experiment of this store that holds a raylora study, or a user error naming the choices."""
    from mlflow import MlflowClient

    from .tracking import tags

    client = MlflowClient(tracking_uri=uri)
    study_runs = tags.query({tags.ROLE: tags.STUDY_ROLE})
    names = [
        e.name
        for e in client.search_experiments()
        if client.search_runs([e.experiment_id], study_runs, max_results=1)
    ]
    if len(names) == 1:
        return names[0]
    if not names:
        raise UserError("--experiment", f"no raylora study in the MLflow store at {uri}")
    raise UserError("--experiment", f"several studies at {uri}; name one of: {', '.join(sorted(names))}")


def _print_plan(spec, plan) -> None:
    print(
        f"study {spec.study.name}: {plan.remaining} trial(s), {plan.max_concurrent} at a time; "
        f"scheduler {plan.scheduler}; storage {plan.storage.display()}"
    )
    for node in plan.nodes:
        print(f"  node {node.address}: {node.cpus:g} CPU, {node.gpus:g} GPU")
    r = spec.resources
    print(
        f"  each trial: {r.workers_per_trial} worker(s) × "
        f"({r.cpus_per_worker:g} CPU, {r.gpus_per_worker:g} GPU), "
        f"{r.placement_strategy}, {'FSDP-sharded' if r.sharding == 'fsdp' else 'DDP'}"
    )
    for path, raw in spec.search.items():
        print(f"  search {path}: {raw}")


def _print_leaderboard(record, top: int = 10) -> None:
    from rich.console import Console
    from rich.table import Table

    from .record.trials import short_params

    table = Table(title=record.title)
    others = [metric for metric, _ in record.goals[1:]]  # a study's other objectives get a column each
    for column in ("#", "trial", "state", record.metric, *others, "steps", "params"):
        table.add_column(column)
    for i, trial in enumerate(record.ranked()[:top], start=1):
        values = [trial.value, *(trial.values.get(m, trial.cost.get(m)) for m in others)]
        shown = [f"{v:.4g}" if v is not None else "-" for v in values]
        params = short_params(trial.params)
        table.add_row(
            str(i), trial.trial_id, trial.state, *shown, str(trial.steps), params or trial.error or ""
        )
    console = Console()
    console.print(table)
    best = record.best()
    if best:
        console.print(
            f"best: {best.trial_id} {record.metric}={best.value:.4g}  adapter: {best.adapter_path}",
            soft_wrap=True,
        )


def _load_checked(spec_path: Path, overrides: list[str], with_pins: bool = False):
    from .spec.load import load_pinned
    from .train import preflight

    spec, pinned = load_pinned(spec_path, overrides)
    preflight.local_inputs(spec)
    return (spec, pinned) if with_pins else spec


def _one_line_warnings() -> None:
    """raylora's own warnings about the user's data print as one line, as its errors do."""
    import warnings

    from .data.samples import CoordinateWarning

    default = warnings.formatwarning

    def formatted(message, category, filename, lineno, line=None):
        if issubclass(category, CoordinateWarning):
            return f"warning: {message}\n"
        return default(message, category, filename, lineno, line)

    warnings.formatwarning = formatted


def main() -> None:
    """Console entry point."""
    try:
        _main()
    except SystemExit as e:
        _leave_ray(e.code)
        raise
    _leave_ray(0)


def _leave_ray(code: int | str | None) -> None:
    """A command that started or attached Ray ends it at once (:func:`~raylora.study.cluster.stop_ray`)
    and leaves without the interpreter's teardown of Ray's, gRPC's and torch's native state: seconds at
    the end of every study, and nothing of raylora's is written then. Exit functions run first."""
    import atexit

    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return
    from .study.cluster import stop_ray

    stop_ray()
    if isinstance(code, str):  # what SystemExit("message") would print
        print(code, file=sys.stderr)
    atexit._run_exitfuncs()  # MLflow's and Ray's; CPython runs them the same way at a normal exit
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else int(code is not None))


def _main() -> None:
    from . import environment, redact
    from .errors import EnvironmentFault, TrialError
    from .tracking.tracker import quiet_mlflow

    environment.set_defaults(environment.CLI)
    _one_line_warnings()
    # Every line raylora, MLflow or Ray prints passes one redaction: no credential reaches a terminal or log.
    sys.stdout, sys.stderr = redact.Stream(sys.stdout), redact.Stream(sys.stderr)
    quiet_mlflow()
    try:
        app(standalone_mode=False)
    except UserError as e:
        for line in e.lines():
            print(f"error: {line}", file=sys.stderr)
        sys.exit(2)
    except TrialError as e:
        print(f"trial failed: {e}", file=sys.stderr)
        sys.exit(1)
    except EnvironmentFault as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except (typer.Abort, KeyboardInterrupt):
        from .study import signals

        print("terminated" if signals.terminated() else "interrupted", file=sys.stderr)
        sys.exit(signals.exit_code())
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.TyperException as e:  # usage errors of typer's own copy of click (typer 0.26+)
        sys.exit(_usage_error(e))


def _usage_error(error: typer.TyperException) -> int:
    """Print a usage error as one line with where to get help (a command without arguments prints its
    help instead); return the exit code."""
    ctx = getattr(error, "ctx", None)
    if type(error).__name__ == "NoArgsIsHelpError" and ctx is not None:
        print(ctx.get_help())
        return 0
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    print(f"error: {error.format_message()}{hint}", file=sys.stderr)
    return getattr(error, "exit_code", 2) or 2
