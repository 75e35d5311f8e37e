"""MLflow: the study's system of record. During a study the search driver writes it through this module
alone (workers never talk to MLflow); afterwards ``raylora report`` (:mod:`raylora.study.refresh`) logs a
regenerated report and ``raylora promote`` (:mod:`.promote`) writes the model registry.

One experiment per study, one parent run per study, one child run per trial (nested with
``mlflow.parentRunId``). Runs are found again by their ``raylora.*`` tags, so a resumed or retried trial
continues its own run instead of creating a second one. Every write goes through an outbox: when the
tracking server is unreachable the study goes on, and the writes are replayed in order once it is back
(or at the end), and the user is told. Writes still queued when the study ends (or the driver dies) are in
``<study>/mlflow_pending.json``; the next ``raylora search --resume`` or ``raylora report`` sends them.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .. import environment, redact
from ..files import digest, unwritable, write_atomic
from ..layout import PENDING, REPORT_DIR
from ..record.states import TrialState
from ..redact import scrub
from ..spec import metrics, space
from . import store, tags

if TYPE_CHECKING:
    from ..record.trials import StudyRecord, TrialRecord
    from ..spec import Spec

TRIAL_METRICS = (*metrics.BETTER, "samples_per_s", "tokens_per_s", "peak_mem_mb")
BEST = metrics.BETTER
"""Direction of every metric a ``best_`` summary is kept for."""


def latest_per_step(history) -> dict[int, float]:
    """Step → value of an MLflow metric history, the value logged last winning. A resume that passed
    over a damaged checkpoint trains the steps after the one it resumed from again: MLflow keeps the
    earlier values too (it deletes no metric), and the later ones are the adapter's."""
    latest: dict[int, tuple[int, float]] = {}
    for m in history:
        if m.step not in latest or m.timestamp >= latest[m.step][0]:
            latest[m.step] = (m.timestamp, m.value)
    return {step: value for step, (_, value) in sorted(latest.items())}


def quiet_mlflow() -> None:
    """Keep MLflow's INFO lines (its migrations log several on every new store) off the user's terminal:
    what matters is printed by raylora."""
    import logging

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def tracking_uri(override: str | None = None, spec: Spec | None = None, storage: str | None = None) -> str:
    """--tracking-uri, else the spec's, else $MLFLOW_TRACKING_URI, else ``<storage>/mlflow.db`` (SQLite,
    beside the studies of ``storage``, default the spec's or the default ``study.storage``); absolute."""
    given = store.given(override, spec.tracking.tracking_uri if spec else None)
    if given:
        return store.absolute(given)
    if storage is None:
        from ..spec.schema import Study

        storage = spec.study.storage if spec else Study.model_fields["storage"].default
    return store.default_uri(storage)


KNOWN_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "file", "databricks", "uc")


def check_uri(uri: str) -> None:
    """Refuse, in one line naming ``--tracking-uri``, a store that can never work: an unknown scheme, or a
    local store (SQLite, folder) whose folder cannot be written (MLflow would retry for minutes)."""
    from urllib.parse import urlsplit

    from ..errors import UserError
    from ..redact import redact

    scheme = urlsplit(uri).scheme.split("+")[0].lower()
    if scheme and len(scheme) > 1 and scheme not in KNOWN_SCHEMES:
        raise UserError(
            "--tracking-uri",
            f"{redact(uri)}: unknown scheme {scheme!r}; use http(s)://HOST, sqlite:///PATH, "
            "postgresql://, mysql://, databricks or a folder",
        )
    if scheme == "sqlite":
        path = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else None
        if path is None or path in ("", ":memory:"):
            return
        folder = Path("/" + path.lstrip("/") if uri.startswith("sqlite:////") else path).parent
    elif scheme in ("", "file") or len(scheme) == 1:  # a folder (or a Windows drive letter)
        folder = Path(urlsplit(uri).path if scheme == "file" else uri)
        if os.environ.get(environment.ALLOW_FILE_STORE, "").lower() not in ("1", "true"):
            raise UserError(
                "--tracking-uri",
                f"{redact(uri)}: MLflow 3 no longer opens folder stores (maintenance mode); use "
                f"sqlite:///{folder / 'mlflow.db'}, or set {environment.ALLOW_FILE_STORE}=true to keep it",
            )
    else:
        return
    problem = unwritable(folder)
    if problem:
        raise UserError("--tracking-uri", f"{redact(uri)}: {problem}")


class Tracker:
    """Records a study in MLflow from the driver's view of trials (no MLflow access needed on workers).

    Every write is a plain record (what to write and the values to write, timestamps included) queued in
    an outbox, so that records MLflow could not take yet are saved in the study as ``mlflow_pending.json``
    and replayed by a later ``raylora search --resume`` or ``raylora report``. Replaying is idempotent:
    runs are found by their tags, params and artifacts are rewritten with the same values, and MLflow
    drops a metric identical to one it holds (same key, step, timestamp and value).
    """

    def __init__(self, spec: Spec, uri: str, storage, log: Callable[[str], None] = print):

        quiet_mlflow()
        environment.set_defaults(environment.MLFLOW)  # an unreachable server fails fast into the outbox
        # self.uri is what is printed and saved; the client alone holds the credentials the URI may carry.
        self.spec, self.uri, self.storage, self.log = spec, redact.redact(uri), storage, log
        self.client = store.open_client(uri)  # a new SQLite store is created under a lock
        self.experiment_name = spec.tracking.experiment or spec.study.name
        self.experiment_id: str | None = None
        self.parent_id: str | None = None
        self.runs: dict[str, str] = {}  # trial id -> run id
        self.outbox: list[dict] = []
        self.offline_since: float | None = None
        self.last_checkpoint: dict[str, str] = {}
        self.record: StudyRecord | None = None
        self.replaying = 0  # records of an earlier run, loaded from the pending file
        # Each kind of record in the outbox and the method that writes it to MLflow.
        self._writers: dict[str, Callable[[dict], None]] = {
            "experiment": self._write_experiment,
            "parent": self._write_parent,
            "trial_run": self._write_trial_run,
            "metrics": self._write_metrics,
            "trial_end": self._write_trial_end,
            "study_end": self._write_study_end,
            "report": self._write_report,
            "baseline": self._write_baseline,
        }

    def __getstate__(self) -> dict:
        # Tune pickles its searcher, and with it this tracker, into the study's tune/ folder: never the
        # client, which holds the credentials a tracking URI may carry (it is never read back).
        return {**self.__dict__, "client": None, "_writers": {}, "log": None}

    @property
    def pending_path(self) -> Path:
        return Path(self.storage.directory) / PENDING

    def connect(self) -> None:
        """Reach the store now; an unreachable server can wait."""
        try:
            self.client.search_experiments(max_results=1)
        except Exception:  # the outbox reports it at the first write
            pass

    # -- the outbox ----------------------------------------------------------------------------------

    def _send(self, write: str, **values: Any) -> None:
        self.outbox.append({"write": write, **values})
        self.flush()

    def flush(self) -> bool:
        """Replay queued writes in order; False (the rest kept, and saved in the study) while MLflow is
        unreachable."""
        while self.outbox:
            entry = self.outbox[0]
            try:
                self._writers[entry["write"]](entry)
            except Exception as e:  # server down, network, 5xx: keep it for later
                if self.offline_since is None:
                    self.offline_since = time.monotonic()
                    self.log(
                        f"MLflow unreachable at {self.uri} ({type(e).__name__}); the study goes on and "
                        f"{len(self.outbox)} record(s) wait to be sent"
                    )
                self._save_pending()
                return False
            self.outbox.pop(0)
        if self.offline_since is not None:
            self.log(f"MLflow reachable again: every queued record was sent to {self.uri}")
            self.offline_since = None
        if self.pending_path.exists():
            self.pending_path.unlink()
            self.storage.push()
            if self.replaying:
                self.log(f"MLflow: sent the {self.replaying} record(s) an earlier run could not send")
                self.replaying = 0
        return True

    def close(self, wait_s: float = 15.0) -> bool:
        """Send what is left, retrying until MLflow has been unreachable for ``wait_s`` seconds (a server
        restarting at the study's end comes back; one down all along is not waited for again); save and
        say what could not be sent."""
        deadline = (self.offline_since or time.monotonic()) + wait_s
        while not self.flush() and time.monotonic() < deadline:
            time.sleep(2.0)
        if self.outbox:
            self._save_pending()
            self.log(
                f"MLflow still unreachable at {self.uri}: {len(self.outbox)} record(s) saved to "
                f"{self.storage.display(PENDING)}; `raylora search --resume` or `raylora report "
                f"{self.storage.location}` sends them once it is back"
            )
            return False
        return True

    def _save_pending(self) -> None:
        """Write the outbox to the study (the experiment and parent run are found again on load)."""
        records = [r for r in self.outbox if r["write"] not in ("experiment", "parent")]
        if not records:
            return
        saved = redact.values({"tracking_uri": self.uri, "spec": self.spec.to_dict(), "records": records})
        self.pending_path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.pending_path, json.dumps(saved, indent=1) + "\n")
        self.storage.push()

    # -- the study ------------------------------------------------------------------------------------

    def start_study(self, record: StudyRecord, reopen: bool = True) -> None:
        """Find or create the experiment and the study's parent run; first, replay what an earlier run
        of this study saved for this tracking URI. ``reopen`` marks the parent run RUNNING again."""
        self.record = record
        for trial in record.trials.values():
            if trial.mlflow_run_id:
                self.runs[trial.trial_id] = trial.mlflow_run_id
        saved = read_pending(self.storage)
        earlier = saved["records"] if saved and saved["tracking_uri"] == self.uri else []
        if earlier:
            self.log(f"MLflow: sending {len(earlier)} record(s) an earlier run saved for {self.uri}")
        self.replaying = len(earlier)
        self.outbox[:0] = [{"write": "experiment"}, {"write": "parent", "reopen": reopen}, *earlier]
        self.flush()

    def _write_experiment(self, entry: dict) -> None:
        experiment = self.client.get_experiment_by_name(self.experiment_name)
        if experiment is not None:
            self.experiment_id = experiment.experiment_id
            return
        location = None
        if self.uri.startswith("sqlite:///"):
            # Keep a local store's artifacts beside its database, not in whatever ./mlruns the cwd has.
            location = (Path(self.uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
        self.experiment_id = self.client.create_experiment(self.experiment_name, artifact_location=location)

    def _write_parent(self, entry: dict) -> None:
        from mlflow.entities import Param, RunTag

        runs = self._find({tags.ROLE: tags.STUDY_ROLE, tags.STUDY: self.spec.study.name})
        if runs:
            self.parent_id = runs[0].info.run_id
            if entry.get("reopen", True):
                self.client.update_run(self.parent_id, status="RUNNING")
            return
        objective = self.spec.study.objective
        values = {
            tags.ROLE: tags.STUDY_ROLE,
            tags.STUDY: self.spec.study.name,
            tags.VERSION: _version(),
            tags.OBJECTIVE_METRIC: objective.metric,
            tags.OBJECTIVE_MODE: objective.mode,
            tags.BASE_MODEL: self.spec.model.name_or_path,
            tags.STUDY_DIR: redact.redact(self.storage.location),
            **({tags.GIT_COMMIT: commit} if (commit := _git_commit()) else {}),
        }
        run = self.client.create_run(self.experiment_id, run_name=self.spec.study.name, tags=values)
        self.parent_id = run.info.run_id
        params = scrub({k: _param(v) for k, v in self.spec.flat().items()})
        params.update({f"search.{k}": redact.text(json.dumps(v)) for k, v in self.spec.search.items()})
        self._log_params(self.parent_id, params, Param, RunTag)

    def _find(self, values: dict[str, str]) -> list:
        return self.client.search_runs([self.experiment_id], filter_string=tags.query(values), max_results=5)

    def _find_trial(self, trial_id: str) -> str | None:
        found = self._find(
            {tags.ROLE: tags.TRIAL_ROLE, tags.STUDY: self.spec.study.name, tags.TRIAL_ID: trial_id}
        )
        return found[0].info.run_id if found else None

    def _run_id(self, trial_id: str) -> str:
        run_id = self.runs.get(trial_id) or self._find_trial(trial_id)
        if run_id is None and self.record is not None and trial_id in self.record.trials:
            # Records sent to another store than the one the run was made in (report --tracking-uri).
            self._write_trial_run({"trial_id": trial_id, "params": self.record.trials[trial_id].params})
            run_id = self.runs.get(trial_id)
        if run_id is None:
            raise LookupError(f"no MLflow run for trial {trial_id}")
        self.runs[trial_id] = run_id
        return run_id

    def _log_params(self, run_id: str, params: dict[str, str], Param, RunTag) -> None:
        items = [Param(k, v[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run_id, params=items[i : i + 100])

    # -- trials ---------------------------------------------------------------------------------------

    def trial_started(self, trial: TrialRecord) -> None:
        self._send("trial_run", trial_id=trial.trial_id, params=trial.params)

    def _write_trial_run(self, entry: dict) -> None:
        from mlflow.entities import Param, RunStatus, RunTag

        trial_id = entry["trial_id"]
        run_id = self.runs.get(trial_id) or self._find_trial(trial_id)
        if run_id is None:
            spec = self.spec
            values = {
                tags.PARENT_RUN: self.parent_id,
                tags.ROLE: tags.TRIAL_ROLE,
                tags.STUDY: spec.study.name,
                tags.TRIAL_ID: trial_id,
                tags.STATE: str(TrialState.RUNNING),
                tags.BASE_MODEL: spec.model.name_or_path,
                **({tags.BASE_REVISION: spec.model.revision} if spec.model.revision else {}),
                **({tags.DATASET_FINGERPRINT: fp} if (fp := digest(_local(spec.data.train))) else {}),
            }
            run_id = self.client.create_run(self.experiment_id, run_name=trial_id, tags=values).info.run_id
        else:
            self.client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
            self.client.set_tag(run_id, tags.STATE, str(TrialState.RUNNING))
        self.runs[trial_id] = run_id
        if self.record is not None and trial_id in self.record.trials:
            self.record.trials[trial_id].mlflow_run_id = run_id
        concrete = self.spec.with_values(entry["params"])
        params = scrub({k: _param(v) for k, v in concrete.flat().items()})
        self._log_params(run_id, params, Param, RunTag)

    def trial_result(self, trial: TrialRecord, result: dict) -> None:
        if result.get("checkpoint_path"):
            self.last_checkpoint[trial.trial_id] = result["checkpoint_path"]
        values = {k: result[k] for k in TRIAL_METRICS if isinstance(result.get(k), (int, float))}
        values.update(
            {
                k: v
                for k, v in result.items()
                if k.startswith(("lr/", "cost/")) and isinstance(v, (int, float))
            }
        )
        self._send(
            "metrics",
            trial_id=trial.trial_id,
            values=values,
            step=int(result.get("step", 0)),
            # The worker's time of the report: the same evaluation sent again after a resume is the same
            # metric, which MLflow keeps once.
            time=int(float(result.get("reported_at") or time.time()) * 1000),
        )

    def _write_metrics(self, entry: dict) -> None:
        from mlflow.entities import Metric

        step, now = entry["step"], entry["time"]
        metrics = [Metric(k, float(v), now, step) for k, v in entry["values"].items()]
        self.client.log_batch(self._run_id(entry["trial_id"]), metrics=metrics)

    def end_stale_runs(self, record: StudyRecord) -> None:
        """End the runs of trials that finished while a killed driver could not say so (resume only)."""
        finished = {t.trial_id: t for t in record.finished()}
        if not finished or self.experiment_id is None:
            return
        study = self.spec.study.name
        query = tags.query({tags.ROLE: tags.TRIAL_ROLE, tags.STUDY: study}) + " and status = 'RUNNING'"
        try:
            runs = self.client.search_runs([self.experiment_id], filter_string=query)
        except Exception:  # unreachable: the runs stay as they are until a later resume
            return
        for run in runs:
            trial = finished.get(run.data.tags.get(tags.TRIAL_ID, ""))
            if trial is not None:
                self.trial_ended(trial)

    def trial_ended(self, trial: TrialRecord) -> None:
        self._send(
            "trial_end",
            trial={k: getattr(trial, k) for k in ("trial_id", "params", "state", "error", "adapter_path")},
            checkpoint=self.last_checkpoint.get(trial.trial_id),
            time=int(time.time() * 1000),
        )

    def _write_trial_end(self, entry: dict) -> None:
        from mlflow.entities import Metric, RunStatus

        trial, checkpoint, now = entry["trial"], entry["checkpoint"], entry["time"]
        run_id = self._run_id(trial["trial_id"])
        summaries = []
        for metric, mode in BEST.items():
            # From the run's own history, so a trial resumed after a crash counts all its steps.
            seen = list(latest_per_step(self.client.get_metric_history(run_id, metric)).values())
            if seen:
                summaries.append(
                    Metric(f"best_{metric}", float(min(seen) if mode == "min" else max(seen)), now, 0)
                )
        storage = self.storage
        with storage.local_copy(f"{checkpoint}/targets.json") if checkpoint else _none() as targets_file:
            targets = _read_json(targets_file) if targets_file else None
            for part, count in (targets or {}).get("trainable_params", {}).items():
                summaries.append(Metric(f"trainable_params/{part}", float(count), now, 0))
            if summaries:
                self.client.log_batch(run_id, metrics=summaries)
            if targets_file:
                self.client.log_artifact(run_id, str(targets_file))
        # Adapters on URI storage are downloaded first; MLflow uploads from local files.
        with storage.local_copy(trial["adapter_path"]) if trial["adapter_path"] else _none() as best:
            if best and best.is_dir():
                self.client.log_artifacts(run_id, str(best), "adapter/best")
        with storage.local_copy(f"{checkpoint}/adapter") if checkpoint else _none() as final:
            if final and final.is_dir():
                self.client.log_artifacts(run_id, str(final), "adapter/final")
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "trial_config.yaml"
            concrete = redact.values(self.spec.with_values(trial["params"]).to_dict())
            config.write_text(yaml.safe_dump(concrete, sort_keys=False))
            self.client.log_artifact(run_id, str(config))
        self.client.set_tag(run_id, tags.STATE, str(trial["state"]))
        if trial["error"]:
            self.client.set_tag(run_id, tags.ERROR, redact.text(trial["error"])[:5000])
        ok = trial["state"] in (TrialState.COMPLETE, TrialState.PRUNED)
        self.client.set_terminated(
            run_id, RunStatus.to_string(RunStatus.FINISHED if ok else RunStatus.FAILED)
        )

    def end_study(self, record: StudyRecord) -> None:
        best = record.best()
        self._send(
            "study_end",
            finished=len(record.finished()),
            best_trial=best.trial_id if best else None,
            best_value=best.value if best else None,
            complete=len(record.finished()) >= space.trials(self.spec),
            pareto=record.to_dict().get("pareto_front"),
            time=int(time.time() * 1000),
        )

    def _write_study_end(self, entry: dict) -> None:
        from mlflow.entities import Metric

        now = entry["time"]
        metrics = [Metric("trials_finished", float(entry["finished"]), now, 0)]
        if entry["best_trial"] is not None:
            metric = self.spec.study.objective.metric
            metrics.append(Metric(f"best_{metric}", float(entry["best_value"]), now, 0))
            self.client.set_tag(self.parent_id, tags.BEST_TRIAL, entry["best_trial"])
        self.client.log_batch(self.parent_id, metrics=metrics)
        for trial_id in entry.get("pareto") or ():
            self.client.set_tag(self._run_id(trial_id), tags.PARETO, "true")
        if entry["complete"]:
            self.client.set_terminated(self.parent_id, "FINISHED")

    def log_baseline(self, base: dict) -> None:
        """The base model's scores on the eval set (:mod:`raylora.study.baseline`) on the parent run, as
        ``base/<metric>`` (``base/click_acc``, ``base/format_error_rate``, ``base/n``, ...)."""
        summary = base.get("summary", {})
        values = {k: float(v) for k, v in summary.items() if isinstance(v, (int, float))}
        self._send(
            "baseline", values=values, fingerprint=base.get("fingerprint"), time=int(time.time() * 1000)
        )

    def _write_baseline(self, entry: dict) -> None:
        from mlflow.entities import Metric

        metrics = [Metric(f"base/{k}", v, entry["time"], 0) for k, v in sorted(entry["values"].items())]
        self.client.log_batch(self.parent_id, metrics=metrics)
        if entry.get("fingerprint"):
            self.client.set_tag(self.parent_id, tags.BASELINE, entry["fingerprint"])

    def log_report(self, directory: Path) -> None:
        """Log the study's ``report/`` folder (read when sent, so a replay logs the latest report)."""
        self._send("report")

    def _write_report(self, entry: dict) -> None:
        directory = Path(self.storage.directory) / REPORT_DIR
        if directory.is_dir():
            self.client.log_artifacts(self.parent_id, str(directory), REPORT_DIR)

    def runs_link(self) -> str | None:
        """The MLflow UI page of the study's runs when the tracking URI is a server (the server itself
        while it has not answered), else None."""
        if not self.uri.startswith("http"):
            return None
        if self.experiment_id:
            return f"{self.uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs"
        return self.uri


def read_pending(storage) -> dict | None:
    """The MLflow records an earlier run of the study saved because MLflow was unreachable (or None)."""
    return _read_json(Path(storage.directory) / PENDING)


def replay_pending(
    storage, log: Callable[[str], None] = print, wait_s: float = 15.0, uri: str | None = None
) -> bool:
    """Send the records an earlier run saved to the tracking URI they were meant for (or to ``uri``, when
    that store was lost); True when none are left. The study's ``summary.json`` gets the MLflow run ids it
    did not have."""
    from ..record.trials import StudyRecord
    from ..spec import Spec

    saved = read_pending(storage)
    if saved is None:
        return True
    spec = Spec.from_dict(saved["spec"])
    record = StudyRecord.open(storage.directory, spec)
    record.on_save = storage.push
    if uri and redact.redact(uri) != saved["tracking_uri"]:
        log(f"MLflow: sending the records saved for {saved['tracking_uri']} to {redact.redact(uri)} instead")
        saved["tracking_uri"] = redact.redact(uri)
        write_atomic(Path(storage.directory) / PENDING, json.dumps(saved, indent=1) + "\n")
        for trial in record.trials.values():
            trial.mlflow_run_id = None  # run ids of the other store
    # The saved URI has no credentials: MLflow's variables supply them, or the URI given (same store).
    tracker = Tracker(spec, uri or saved["tracking_uri"], storage, log)
    tracker.start_study(record, reopen=False)
    sent = tracker.close(wait_s)
    if record.trials:
        record.save()
    return sent


def send_pending(storage, uri: str, trials_to_run: bool, log: Callable[[str], None] = print) -> None:
    """Before a search: send what an earlier run saved, unless this run's tracker will (same tracking URI
    and trials to run). Records meant for another, unreachable tracking URI stop a run that would log
    elsewhere, so they are never overwritten."""
    saved_for = read_pending(storage)["tracking_uri"]
    if trials_to_run and saved_for == redact.redact(uri):
        return
    same = uri if saved_for == redact.redact(uri) else None  # the credentials of the URI given, if any
    if not replay_pending(storage, log, uri=same) and trials_to_run:
        from ..errors import UserError

        raise UserError(
            "--tracking-uri",
            f"MLflow records of an earlier run wait in {storage.display(PENDING)} for {saved_for}, which is "
            f"unreachable; run again once it is back, or with --tracking-uri {saved_for}",
        )


@contextmanager
def _none():
    yield None


def _param(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _local(ref: str | None) -> str | None:
    if ref is None:
        return None
    from .. import builtin

    return builtin.resolve_data(ref, "train") if builtin.is_builtin(ref) else ref


def _read_json(path: Path | None) -> dict | None:
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


def _version() -> str:
    from importlib.metadata import version

    return version("raylora")


def _git_commit() -> str | None:
    import subprocess

    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
