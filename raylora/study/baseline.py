"""The base model's score on a study's eval set — "did fine-tuning help at all?" — measured once and shared.

:func:`load_or_measure` evaluates the spec's base model (no adapter) on the whole eval set exactly as a
trial's final evaluation does (the same records, too-long ones dropped; the same prompts, generation and
:mod:`raylora.data.scoring`), and caches the result under ``$RAYLORA_HOME/cache/baseline/`` by a
fingerprint of what decides it (:func:`fingerprint`: model and revision, the eval file's content, format,
coordinates, template, columns, image bounds, ``max_length``, ``max_new_tokens``), so every trial of a
study, a ``--resume`` and a later study on the same data reuse it.

The result keeps each record's outcome by its ``where`` (``file:LINE``), so :func:`compare` can pair a
trial's per-record outcomes with the base model's on the same items: the gain and McNemar's test.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from ..data import scoring
from ..files import write_atomic
from ..layout import BASELINE, RUNS
from ..record.comparison import compare, items, metric_for
from ..spec import Spec


def fingerprint(spec: Spec) -> str:
    """A short hash of everything that decides the base model's score on the spec's eval set."""
    from .. import builtin

    data = spec.data
    eval_ref = builtin.resolve_data(data.eval, "eval") if data.eval else None
    parts = [
        spec.model.name_or_path,
        spec.model.revision,
        _content_hash(eval_ref),
        data.format,
        data.coordinates,
        data.template,
        sorted(data.columns.items()),
        data.image.min_pixels,
        data.image.max_pixels,
        data.max_length,
        spec.training.max_new_tokens,
    ]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:24]


def _content_hash(ref: str | None) -> str | None:
    if ref is None:
        return None
    path = Path(ref.split("#")[0]).expanduser()
    if not path.is_file():  # a folder of shards or a hub id: its name and modification time
        stat = path.stat() if path.exists() else None
        return f"{path.resolve()}:{stat.st_mtime_ns if stat else ''}:{ref}"
    from ..files import digest as file_sha256

    return file_sha256(str(path)) + ref[len(ref.split("#")[0]) :]


def cache_path(spec: Spec) -> Path:
    """Where the base model's result for this spec is cached."""
    from .. import environment

    return environment.home() / "cache" / "baseline" / f"{fingerprint(spec)}.json"


def load_or_measure(spec: Spec, log=print) -> dict:
    """The cached result for ``spec`` (see :func:`measure`), measuring and caching it the first time."""
    path = cache_path(spec)
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except ValueError:  # a torn write: measure again
            pass
    log(f"evaluating the base model {spec.model.name_or_path} on the eval set (once; cached in {path})")
    result = measure(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(result))
    return result


def measure(spec: Spec) -> dict:
    """``{"fingerprint", "model", "summary": scoring.summarize(...), "items": {where: [click, type, step,
    format_error]}}`` for the base model on the whole eval set."""
    from .. import builtin
    from ..data import templates
    from ..train import evaluate, inference, loader

    if not spec.data.eval:
        raise ValueError("the base model is scored on data.eval, and the spec has none")
    image = spec.data.image
    predictor = inference.Predictor.load(
        spec.model.name_or_path,
        revision=spec.model.revision,
        min_pixels=image.min_pixels,
        max_pixels=image.max_pixels,
    )
    reading = spec.data.reading()
    split = loader.open_split(
        builtin.resolve_data(spec.data.eval, "eval"),
        predictor.processor,
        spec.data.max_length,
        predictor.image_kw,
        **reading,
    )
    convention = templates.get(spec.data.template).answer_convention(spec.data.coordinates)
    outcomes = evaluate.outcomes(
        predictor.model,
        split.records,
        predictor.processor,
        predictor.image_kw,
        convention,
        spec.training.max_new_tokens,
        spec.training.per_device_eval_batch_size,
        predictor.device,
    )
    return {
        "fingerprint": fingerprint(spec),
        "model": spec.model.name_or_path,
        "summary": scoring.summarize(outcomes),
        "items": items(split.records, outcomes),
    }


# -- in a study -----------------------------------------------------------------------------------------


def wanted(spec: Spec) -> bool:
    """Whether a study of ``spec`` scores the base model: it has eval data and generates answers."""
    return bool(spec.data.eval) and spec.training.click_eval_samples > 0


def for_study(spec: Spec, directory: Path, log=print) -> dict | None:
    """The base model's result for the study in ``directory``, measured now if it must be (see
    :func:`start`). None, with one line logged, when it fails: the study goes on without it."""
    return start(spec, directory, log=log).result()


def start(spec: Spec, directory: Path, spare_cpus: float | None = None, log=print, after=None) -> Pending:
    """Start scoring the base model for the study in ``directory`` (or find its ``baseline.json`` measured
    for this spec): a Ray task with one trial worker's GPUs, so a driver without a GPU is fine.

    ``spare_cpus``: the CPUs the study's trials leave free. The task then asks for at most that many and
    runs beside the first trials; its result is read at the end of the study. Without them (None, or
    less than :data:`MIN_CPUS`), :meth:`Pending.result` is called by whoever must wait for it first.
    ``after``: a Ray object the task waits for before its process starts (the first trial's first step)."""
    path = directory / BASELINE
    try:
        saved = json.loads(path.read_text()) if path.is_file() else None
    except ValueError:
        saved = None
    if saved and saved.get("fingerprint") == fingerprint(spec):
        return Pending(path, log, saved=saved)
    import ray

    resources = spec.resources
    cpus = resources.cpus_per_worker if spare_cpus is None else min(resources.cpus_per_worker, spare_cpus)
    task = ray.remote(num_cpus=cpus, num_gpus=resources.gpus_per_worker, max_calls=1)(_measure_task)
    log(f"evaluating the base model {spec.model.name_or_path} on the eval set (once per model and data)")
    return Pending(path, log, ref=task.remote(spec.to_dict(), after))


MIN_CPUS = 0.1
"""Fewer spare CPUs than this and the base model is scored before the trials, not beside them."""


class Pending:
    """The base model's result, being measured by a Ray task (or already known)."""

    def __init__(self, path: Path, log, ref=None, saved: dict | None = None):
        self.path, self.log, self.ref, self.saved = path, log, ref, saved
        self.started = time.monotonic()

    def ready(self) -> bool:
        """Whether :meth:`result` would return without waiting."""
        if self.ref is None:
            return True
        import ray

        return bool(ray.wait([self.ref], timeout=0)[0])

    def result(self, every_s: float | None = None) -> dict | None:
        """Wait for the result (a line every ``every_s`` seconds meanwhile: default
        ``RAYLORA_PROGRESS_EVERY_S``) and save it as ``baseline.json``; None, with one line logged, when
        it failed."""
        if self.ref is None:
            return self.saved
        from .. import environment

        every_s = environment.progress_every_s() if every_s is None else every_s
        try:
            self.saved = self._wait(every_s)
        except Exception as e:  # a base the trials may still train on; the comparison is what is lost
            first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            self.log(f"warning: the base model could not be evaluated ({first[:300]}); the study goes on")
            self.ref, self.saved = None, None
            return None
        self.ref = None
        from ..files import write_atomic

        write_atomic(self.path, json.dumps(self.saved) + "\n")
        summary = self.saved["summary"]
        scores = ", ".join(
            f"{name} {summary[name]:.3g}"
            for name in ("click_acc", "type_acc", "step_acc", "format_error_rate")
            if summary.get(name) is not None
        )
        self.log(f"base model: {scores} on {summary['n']} eval records")
        return self.saved

    def _wait(self, every_s: float) -> dict:
        import ray

        try:
            while not ray.wait([self.ref], timeout=max(every_s, 1.0))[0]:
                self.log(f"evaluating the base model ({int(time.monotonic() - self.started)} s)")
            return ray.get(self.ref)
        except BaseException:  # Ctrl-C or SIGTERM: the task must not keep its accelerator after we exit
            ray.cancel(self.ref, force=True)
            raise


def _measure_task(spec: dict, after=None) -> dict:  # ``after``: Ray resolves it before the task starts
    return load_or_measure(Spec.from_dict(spec), log=lambda line: None)


def compare_trials(record, storage, base: dict) -> bool:
    """Each COMPLETE trial of ``record`` (a :class:`~raylora.record.trials.StudyRecord`) against ``base``:
    its final evaluation (``eval_items.json`` in its latest checkpoint) gives ``trial.vs_base`` =
    :func:`compare`'s result plus ``metric``; trials without one keep theirs. True when one changed."""
    from ..layout import EVAL_ITEMS
    from ..record.states import TrialState
    from .checkpoints import Checkpoints

    runs_dir, filesystem = storage.ray_path(RUNS)
    metric = metric_for(record.metric)
    checkpoints = Checkpoints(runs_dir, filesystem, record.metric, record.mode)
    changed = False
    for trial in record.trials.values():
        if trial.state != TrialState.COMPLETE:
            continue
        mine = checkpoints.for_trial(trial.trial_id)
        names = mine.names()
        text = mine._read(f"{mine.folder}/{names[-1]}/{EVAL_ITEMS}") if names else None
        if text is None:
            continue
        result = compare(base["items"], json.loads(text), metric)
        vs_base = None if result is None else {"metric": metric, **result}
        changed, trial.vs_base = changed or vs_base != trial.vs_base, vs_base
    return changed
