"""The ``raylora`` command line: the only place that prints results and chooses exit codes.

Exit codes: 0 success, 2 a user error (one line per problem, naming the YAML path or ``file:line``),
1 anything unexpected.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

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
        report = scopes.inspect(builtin.resolve_model(model), r=r, scopes=scope or None)
    except scopes.ScopeError as e:
        raise UserError("inspect", str(e)) from None
    if as_json:
        print(json.dumps({k: report[k] for k in ("model_type", "total_params", "scopes")}))
        return
    _print_inspect(report, r)


def _print_inspect(report: dict, r: int) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"{report['model_type']}: {report['total_params']:,} parameters; LoRA at r={r}")
    table.add_column("scope")
    for column in ("modules", "base params", "LoRA params"):
        table.add_column(column, justify="right")
    for part, row in report["scopes"].items():
        table.add_row(part, f"{row['modules']:,}", f"{row['base_params']:,}", f"{row['lora_params']:,}")
    console.print(table)
    for part, names in report.get("modules", {}).items():
        if names:
            console.print(f"[bold]{part}[/bold] targets: " + ", ".join(names), soft_wrap=True)
    for note in report.get("notes", []):
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
    print(f"next: raylora validate {target}  then  raylora search {target}")


@app.command()
def validate(spec_path: SpecArg, set_: SetOpt = None) -> None:
    """Check a spec, its search space, and its local model and data; report every problem at once."""
    spec = _load_checked(spec_path, set_ or [])
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
    from .spec import space
    from .study.progress import short_params
    from .train import estimate as estimate_lib

    rows = [("fixed values", estimate_lib.estimate(spec))]
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
    download.ensure_local(spec.model.name_or_path, spec.model.revision)
    session = LocalSession(output)
    try:
        run_train(spec, session)
    finally:
        session.close()  # the step bar leaves the terminal on an error too
    print(f"adapter: {output / 'adapter'}")
    print(f"metrics: {output / 'metrics.json'}  targets: {output / 'targets.json'}")


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
    from .train import data

    if not path.is_file():
        raise UserError("--data", f"{path}: no such file")
    return data.read(path)


def _click(text: str) -> list[float] | None:
    from .train.evaluate import parse_click

    point = parse_click(text)
    return list(point) if point else None


def _click_line(text: str, image: Path) -> str:
    point = _click(text)
    if point is None:
        return "click: none (the answer names no click(x, y))"
    from PIL import Image

    width, height = Image.open(image).size
    x, y = point
    return (
        f"click: ({x:g}, {y:g}) in 0-1000 → pixel ({round(x * width / 1000)}, {round(y * height / 1000)}) "
        f"of the {width}×{height} {image.name}"
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
) -> None:
    """Run a hyperparameter study: Optuna proposes, ASHA stops early, trials train on Ray Train workers."""
    spec = _load_checked(spec_path, list(set_ or []))
    from .study import driver

    plan, record = driver.run(
        spec, storage=storage, address=address, tracking_uri=tracking_uri, resume=resume, dry_run=dry_run
    )
    if dry_run:
        _print_plan(spec, plan)
        _print_estimates(spec, _estimates(spec))
        return
    if plan.remaining == 0:
        print(f"study {spec.study.name}: all {spec.study.num_trials} trials finished; nothing to do")
    _print_leaderboard(record, plan.storage.display("summary.json"))
    print(f"report: {plan.storage.display('report/leaderboard.md')}")
    if plan.runs_link:
        print(f"MLflow: {plan.runs_link}")
    if plan.dashboard_url:
        print(f"Ray dashboard: {plan.dashboard_url} (while this Ray runs)")
    print(f"Optuna: optuna-dashboard {plan.study_dir / 'optuna.journal'}  (pip install 'raylora[dashboard]')")
    if plan.unfinished:
        unfinished = ", ".join(plan.unfinished)
        print(f"interrupted: {unfinished} unfinished; continue the study with --resume", file=sys.stderr)
        sys.exit(130)


@app.command()
def report(
    target: Annotated[
        str,
        typer.Argument(help="A study folder or URI (<storage>/<study>), or an MLflow experiment name."),
    ],
    tracking_uri: Annotated[str | None, typer.Option("--tracking-uri", help="MLflow tracking URI.")] = None,
) -> None:
    """Regenerate a study's report (leaderboard, scope comparison, importances) and log it to MLflow."""
    from .tracking import report as report_lib

    out = report_lib.regenerate(target, tracking_uri)
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
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Read at most this many records.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Format, records, images, image and supervised tokens, records too long, coordinate range, and one
    record rendered with its supervised span marked ⟦...⟧."""
    from . import spec as spec_lib
    from .train import data_report

    overrides = [
        f"data.{k}={v}"
        for k, v in (("format", fmt), ("coordinates", coordinates), ("template", template))
        if v
    ]
    if data_report.is_spec(target):
        spec = spec_lib.load(target, overrides)
        refs = [spec.data.train] + (
            [spec.data.eval] if spec.data.eval and spec.data.eval != spec.data.train else []
        )
    else:
        spec = spec_lib.build({"data": {"train": target}})
        spec = spec.with_values({o.split("=", 1)[0]: o.split("=", 1)[1] for o in overrides})
        refs = [target]
    from . import builtin

    for ref in refs:
        path = builtin.resolve_data(ref, "train") if builtin.is_builtin(ref) else ref
        report = {"path": ref, **data_report.inspect(path, spec, limit)}
        if as_json:
            print(json.dumps(report))
        else:
            _print_data_report(report)


def _print_data_report(report: dict) -> None:
    coords = report["coordinates"]
    print(f"{report['path']}: {report['format']} · {report['records']} records · {report['images']} images")
    print(
        f"  image tokens {report['image_tokens_total']:,}"
        f" · supervised tokens {report['supervised_tokens_total']:,}"
        f" · dropped as longer than {report['max_length']}: {report['dropped_too_long']}"
    )
    print(
        f"  coordinates {coords['convention']}: x {coords['x']} y {coords['y']}"
        + ("" if coords.get("within_range", True) else "  ← OUTSIDE the convention's range")
    )
    for field, counts in report["categories"].items():
        print(f"  {field}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    if "example" in report:
        print(f"  {report['example']['where']}, supervised span in ⟦⟧:")
        print("    " + report["example"]["rendered"].replace("\n", "\n    "))


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
) -> None:
    """Pick the best finished, feasible trial; register its adapter as a pyfunc model; set the alias."""
    from .tracking import promote, tracker

    if mode not in (None, "min", "max"):
        raise UserError("--mode", f"must be min or max, got {mode!r}")
    uri = tracker.tracking_uri(tracking_uri)
    experiment = experiment or _only_study_experiment(uri)
    result = promote.promote_best(
        experiment=experiment,
        tracking_uri=uri,
        metric=metric,
        mode=mode,
        model_name=model_name,
        alias=alias,
        merge_dir=merge,
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
        f"{r.placement_strategy}, {r.strategy}"
    )
    for path, raw in spec.search.items():
        print(f"  search {path}: {raw}")


def _print_leaderboard(record, summary: str, top: int = 10) -> None:
    from rich.console import Console
    from rich.table import Table

    from .study.progress import short_params

    table = Table(title=f"{record.name}: {record.metric} ({record.mode})")
    for column in ("#", "trial", "state", record.metric, "steps", "params"):
        table.add_column(column)
    for i, trial in enumerate(record.ranked()[:top], start=1):
        value = f"{trial.value:.4g}" if trial.value is not None else "-"
        params = short_params(trial.params)
        table.add_row(
            str(i), trial.trial_id, trial.state, value, str(trial.steps), params or trial.error or ""
        )
    console = Console()
    console.print(table)
    best = record.best()
    if best:
        console.print(
            f"best: {best.trial_id} {record.metric}={best.value:.4g}  adapter: {best.adapter_path}",
            soft_wrap=True,
        )
    console.print(f"summary: {summary}", soft_wrap=True)


def _load_checked(spec_path: Path, overrides: list[str]):
    from . import spec as spec_lib
    from .train import preflight

    spec = spec_lib.load(spec_path, overrides)
    preflight.local_inputs(spec)
    return spec


def main() -> None:
    """Console entry point."""
    import logging

    from . import environment
    from .errors import EnvironmentFault, TrialError

    environment.set_defaults(environment.CLI)
    # MLflow and its migrations log INFO lines on every new store; results are what we print.
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
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
        print("interrupted", file=sys.stderr)
        sys.exit(130)
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
