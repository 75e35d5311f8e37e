"""MLflow: the study's system of record, written by the search driver alone (one writer per store).

One experiment per study, one parent run per study, one child run per trial (nested with
``mlflow.parentRunId``). Runs are found again by their ``raylora.*`` tags, so a resumed or retried trial
continues its own run instead of creating a second one. Every write goes through an outbox: when the
tracking server is unreachable the study goes on, and the writes are replayed in order once it is back
(or at the end), and the user is told.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from .spec import Spec
    from .study import StudyRecord, TrialRecord

TRIAL_METRICS = ("train/loss", "eval/loss", "eval/click_acc", "samples_per_s", "tokens_per_s", "peak_mem_mb")
# Direction of every metric a "best_" summary is kept for.
BEST = {"train/loss": "min", "eval/loss": "min", "eval/click_acc": "max"}
SECRET_WORDS = ("token", "secret", "password", "passwd", "key", "credential")


def tracking_uri(override: str | None = None, spec: Spec | None = None) -> str:
    """--tracking-uri, else the spec's, else $MLFLOW_TRACKING_URI, else ./mlflow.db (SQLite)."""
    uri = override or (spec and spec.tracking.tracking_uri) or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def scrub(values: dict[str, Any]) -> dict[str, Any]:
    """Drop anything whose name says token, secret, password or key, so it never reaches MLflow."""
    return {k: v for k, v in values.items() if not any(word in k.lower() for word in SECRET_WORDS)}


def fingerprint(path: str | None) -> str | None:
    """sha256 of a data file's bytes (None when it is not a local file)."""
    if not path or not Path(path).is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Tracker:
    """Records a study in MLflow from the driver's view of trials (no MLflow access needed on workers)."""

    def __init__(self, spec: Spec, uri: str, study_dir: Path, log: Callable[[str], None] = print):
        import logging

        from mlflow import MlflowClient

        # MLflow logs INFO lines for every new store's migrations; what matters here is printed by raylora.
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self.spec, self.uri, self.study_dir, self.log = spec, uri, study_dir, log
        self.client = MlflowClient(tracking_uri=uri)
        self.experiment_name = spec.tracking.experiment or spec.study.name
        self.experiment_id: str | None = None
        self.parent_id: str | None = None
        self.runs: dict[str, str] = {}  # trial id -> run id
        self.outbox: list[tuple[str, Callable[[], None]]] = []
        self.offline_since: float | None = None
        self.last_checkpoint: dict[str, str] = {}

    def connect(self) -> None:
        """Open the store now (a new SQLite store runs its migrations); an unreachable server can wait."""
        try:
            self.client.search_experiments(max_results=1)
        except Exception:  # the outbox reports it at the first write
            pass

    # -- the outbox ----------------------------------------------------------------------------------

    def _send(self, what: str, write: Callable[[], None]) -> None:
        self.outbox.append((what, write))
        self.flush()

    def flush(self) -> bool:
        """Replay queued writes in order; False (and the rest kept) while MLflow is unreachable."""
        while self.outbox:
            what, write = self.outbox[0]
            try:
                write()
            except Exception as e:  # server down, network, 5xx: keep it for later
                if self.offline_since is None:
                    self.offline_since = time.monotonic()
                    self.log(
                        f"MLflow unreachable at {self.uri} ({type(e).__name__}); the study goes on and "
                        f"{len(self.outbox)} record(s) wait to be sent"
                    )
                return False
            self.outbox.pop(0)
        if self.offline_since is not None:
            self.log(f"MLflow reachable again: every queued record was sent to {self.uri}")
            self.offline_since = None
        return True

    def close(self, wait_s: float = 60.0) -> bool:
        """Send what is left, retrying for up to ``wait_s`` seconds; say what could not be sent."""
        deadline = time.monotonic() + wait_s
        while not self.flush() and time.monotonic() < deadline:
            time.sleep(2.0)
        if self.outbox:
            self.log(
                f"MLflow still unreachable: {len(self.outbox)} record(s) were not sent; the study's "
                "summary.json has every result, and `raylora search --resume` sends them again"
            )
            return False
        return True

    # -- the study ------------------------------------------------------------------------------------

    def start_study(self, record: StudyRecord) -> None:
        """Find or create the experiment and the study's parent run."""
        self._send("experiment", self._ensure_experiment)
        self._send("parent run", self._ensure_parent)
        for trial in record.trials.values():
            if trial.mlflow_run_id:
                self.runs[trial.trial_id] = trial.mlflow_run_id

    def _ensure_experiment(self) -> None:
        experiment = self.client.get_experiment_by_name(self.experiment_name)
        if experiment is not None:
            self.experiment_id = experiment.experiment_id
            return
        location = None
        if self.uri.startswith("sqlite:///"):
            # Keep a local store's artifacts beside its database, not in whatever ./mlruns the cwd has.
            location = (Path(self.uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
        self.experiment_id = self.client.create_experiment(self.experiment_name, artifact_location=location)

    def _ensure_parent(self) -> None:
        from mlflow.entities import Param, RunTag

        runs = self._find({"raylora.role": "study", "raylora.study": self.spec.study.name})
        if runs:
            self.parent_id = runs[0].info.run_id
            self.client.update_run(self.parent_id, status="RUNNING")
            return
        objective = self.spec.study.objective
        tags = {
            "raylora.role": "study",
            "raylora.study": self.spec.study.name,
            "raylora.version": _version(),
            "raylora.objective.metric": objective.metric,
            "raylora.objective.mode": objective.mode,
            "raylora.base_model": self.spec.model.name_or_path,
            "raylora.study_dir": str(self.study_dir),
            **({"raylora.git_commit": commit} if (commit := _git_commit()) else {}),
        }
        run = self.client.create_run(self.experiment_id, run_name=self.spec.study.name, tags=tags)
        self.parent_id = run.info.run_id
        params = scrub({k: _param(v) for k, v in self.spec.flat().items()})
        params.update({f"search.{k}": json.dumps(v) for k, v in self.spec.search.items()})
        self._log_params(self.parent_id, params, Param, RunTag)

    def _find(self, tags: dict[str, str]) -> list:
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        return self.client.search_runs([self.experiment_id], filter_string=query, max_results=5)

    def _log_params(self, run_id: str, params: dict[str, str], Param, RunTag) -> None:
        items = [Param(k, v[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run_id, params=items[i : i + 100])

    # -- trials ---------------------------------------------------------------------------------------

    def trial_started(self, trial: TrialRecord) -> None:
        self._send(f"{trial.trial_id} run", lambda: self._ensure_trial_run(trial))

    def _ensure_trial_run(self, trial: TrialRecord) -> None:
        from mlflow.entities import Param, RunStatus, RunTag

        run_id = self.runs.get(trial.trial_id)
        if run_id is None:
            found = self._find(
                {
                    "raylora.role": "trial",
                    "raylora.study": self.spec.study.name,
                    "raylora.trial_id": trial.trial_id,
                }
            )
            run_id = found[0].info.run_id if found else None
        if run_id is None:
            spec = self.spec
            tags = {
                "mlflow.parentRunId": self.parent_id,
                "raylora.role": "trial",
                "raylora.study": spec.study.name,
                "raylora.trial_id": trial.trial_id,
                "raylora.state": "RUNNING",
                "raylora.base_model": spec.model.name_or_path,
                **({"raylora.base_model_revision": spec.model.revision} if spec.model.revision else {}),
                **(
                    {"raylora.dataset_fingerprint": fp}
                    if (fp := fingerprint(_local(spec.data.train)))
                    else {}
                ),
            }
            run_id = self.client.create_run(
                self.experiment_id, run_name=trial.trial_id, tags=tags
            ).info.run_id
        else:
            self.client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
            self.client.set_tag(run_id, "raylora.state", "RUNNING")
        self.runs[trial.trial_id] = run_id
        trial.mlflow_run_id = run_id
        concrete = self.spec.with_values(trial.params)
        params = scrub({k: _param(v) for k, v in concrete.flat().items()})
        self._log_params(run_id, params, Param, RunTag)

    def trial_result(self, trial: TrialRecord, result: dict) -> None:
        if result.get("checkpoint_path"):
            self.last_checkpoint[trial.trial_id] = result["checkpoint_path"]
        step = int(result.get("step", 0))
        now = int(time.time() * 1000)
        values = {k: result[k] for k in TRIAL_METRICS if isinstance(result.get(k), (int, float))}
        values.update(
            {k: v for k, v in result.items() if k.startswith("lr/") and isinstance(v, (int, float))}
        )
        self._send(f"{trial.trial_id} metrics", lambda: self._log_metrics(trial.trial_id, values, step, now))

    def _log_metrics(self, trial_id: str, values: dict, step: int, now: int) -> None:
        from mlflow.entities import Metric

        metrics = [Metric(k, float(v), now, step) for k, v in values.items()]
        self.client.log_batch(self.runs[trial_id], metrics=metrics)

    def trial_ended(self, trial: TrialRecord) -> None:
        final = self.last_checkpoint.get(trial.trial_id)
        self._send(f"{trial.trial_id} end", lambda: self._finish_trial(trial, final))

    def _finish_trial(self, trial: TrialRecord, final_checkpoint: str | None) -> None:
        from mlflow.entities import Metric, RunStatus

        run_id = self.runs[trial.trial_id]
        now = int(time.time() * 1000)
        summaries = []
        for metric, mode in BEST.items():
            # From the run's own history, so a trial resumed after a crash counts all its steps.
            seen = [m.value for m in self.client.get_metric_history(run_id, metric)]
            if seen:
                summaries.append(
                    Metric(f"best_{metric}", float(min(seen) if mode == "min" else max(seen)), now, 0)
                )
        checkpoint = Path(final_checkpoint) if final_checkpoint else None
        targets = _read_json(checkpoint / "targets.json") if checkpoint else None
        if targets:
            for part, count in targets.get("trainable_params", {}).items():
                summaries.append(Metric(f"trainable_params/{part}", float(count), now, 0))
        if summaries:
            self.client.log_batch(run_id, metrics=summaries)
        if trial.adapter_path and Path(trial.adapter_path).is_dir():
            self.client.log_artifacts(run_id, trial.adapter_path, "adapter/best")
        if checkpoint and (checkpoint / "adapter").is_dir():
            self.client.log_artifacts(run_id, str(checkpoint / "adapter"), "adapter/final")
        if checkpoint and (checkpoint / "targets.json").is_file():
            self.client.log_artifact(run_id, str(checkpoint / "targets.json"))
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "trial_config.yaml"
            concrete = self.spec.with_values(trial.params).to_dict()
            config.write_text(yaml.safe_dump(concrete, sort_keys=False))
            self.client.log_artifact(run_id, str(config))
        self.client.set_tag(run_id, "raylora.state", trial.state)
        if trial.error:
            self.client.set_tag(run_id, "raylora.error", trial.error[:5000])
        ok = trial.state in ("COMPLETE", "PRUNED")
        self.client.set_terminated(
            run_id, RunStatus.to_string(RunStatus.FINISHED if ok else RunStatus.FAILED)
        )

    def end_study(self, record: StudyRecord) -> None:
        self._send("study summary", lambda: self._finish_study(record))

    def _finish_study(self, record: StudyRecord) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        best = record.best()
        metrics = [Metric("trials_finished", float(len(record.finished())), now, 0)]
        if best is not None:
            metrics.append(Metric(f"best_{record.metric}", float(best.value), now, 0))
            self.client.set_tag(self.parent_id, "raylora.best_trial", best.trial_id)
        self.client.log_batch(self.parent_id, metrics=metrics)
        if len(record.finished()) >= self.spec.study.num_trials:
            self.client.set_terminated(self.parent_id, "FINISHED")

    def log_report(self, directory: Path) -> None:
        self._send("report", lambda: self.client.log_artifacts(self.parent_id, str(directory), "report"))

    def runs_link(self) -> str | None:
        """The MLflow UI page of the study's runs, when the tracking URI is a server."""
        if self.uri.startswith("http") and self.experiment_id:
            return f"{self.uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs"
        return None


def _param(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _local(ref: str | None) -> str | None:
    if ref is None:
        return None
    from . import builtin

    return builtin.resolve_data(ref, "train") if builtin.is_builtin(ref) else ref


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


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
