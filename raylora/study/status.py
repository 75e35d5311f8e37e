"""``raylora status``: where a study stands, read from its folder alone — no Ray, no torch, nothing written.

    summary.json          trials by state, the best so far
    runs/<slot>/reports.jsonl, checkpoint_s<step>/
                          each unfinished trial's last reported step, the age of that report, and the
                          checkpoint ``--resume`` would restart it from
    driver.lock           who runs the study now (or ran it, if that driver is gone)
    spec.json             how many trials the study was asked for: what ``--resume`` would still run

On URI storage the same files are read in place through pyarrow (the local mirror is left alone).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

from ..errors import UserError
from ..layout import JOURNAL, LOCK, REPORTS, RUNS, SPEC, SUMMARY
from ..record.states import TrialState
from ..record.trials import StudyRecord


@dataclass
class RunningTrial:
    """An unfinished trial: where its workers last said it was."""

    trial_id: str
    step: int
    """The step of its last report (0: none yet)."""
    last_report_age_s: float | None
    """Seconds since that report was sent (None: no report yet)."""
    value: float | None
    """The objective at that report."""
    checkpoint_step: int | None
    """The step of its latest whole checkpoint: where ``--resume`` restarts it (None: from the start)."""


@dataclass
class Standing:
    """Where a study stands; :meth:`to_dict` is what ``raylora status --json`` prints."""

    location: str
    name: str
    metric: str
    mode: str
    state: str
    """running (a live driver holds the lock), stopped (unfinished trials, no live driver) or finished."""
    counts: dict[str, int]
    best: dict | None
    running: list[RunningTrial] = field(default_factory=list)
    lock: dict | None = None
    resume: str = ""
    num_trials: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def read(location: str, now: float | None = None) -> Standing:
    """The standing of the study at ``location`` (a folder or a URI); a :class:`UserError` when it is not
    a study (no ``summary.json``, ``optuna.journal`` or ``spec.json`` there)."""
    folder = _Folder(location)
    names = [name for name in (SUMMARY, JOURNAL, SPEC) if folder.read(name) is not None]
    if not names:
        raise UserError("status", f"{location}: not a study folder (no {SUMMARY}, {JOURNAL} or {SPEC})")
    now = time.time() if now is None else now
    summary, spec = _json(folder, SUMMARY), _json(folder, SPEC)
    record = _record(folder, summary, spec)
    lock = _lock(folder, now)
    running = [_running(folder, t, record.metric, now) for t in _unfinished(record)]
    num_trials = ((spec or {}).get("spec") or {}).get("study", {}).get("num_trials")
    standing = Standing(
        location=folder.display,
        name=record.name,
        metric=record.metric,
        mode=record.mode,
        state=_state(record, lock, num_trials),
        counts={state.value: sum(t.state == state for t in record.trials.values()) for state in TrialState},
        best=_best(record),
        running=running,
        lock=lock,
        num_trials=num_trials,
    )
    standing.resume = _resume(standing, record, summary is None and folder.read(SUMMARY) is not None)
    return standing


def _json(folder: _Folder, name: str) -> dict | None:
    text = folder.read(name)
    try:
        return json.loads(text) if text is not None else None
    except ValueError:
        return None  # torn or hand-edited: the resume verdict says what happens to it


def _record(folder: _Folder, summary: dict | None, spec: dict | None) -> StudyRecord:
    study = ((spec or {}).get("spec") or {}).get("study", {})
    objective = (summary or {}).get("objective") or study.get("objective") or {}
    name = (summary or {}).get("study") or study.get("name") or folder.display.rstrip("/").rsplit("/", 1)[-1]
    record = StudyRecord(None, name, objective.get("metric", "?"), objective.get("mode", "min"))
    if summary is not None:
        try:
            record.trials = StudyRecord.parse_summary(json.dumps(summary))
        except ValueError:
            pass  # parses as JSON but not as a summary: counted as no trials, rebuilt on --resume
    return record


def _unfinished(record: StudyRecord):
    return sorted(record.unfinished(), key=lambda t: t.trial_id)


def _running(folder: _Folder, trial, metric: str, now: float) -> RunningTrial:
    """A trial's last report from its ``reports.jsonl`` (what rank 0 sent, even if no driver heard it)."""
    slot, last = trial.trial_id, None
    for line in (folder.read(f"{RUNS}/{slot}/{REPORTS}") or "").splitlines():
        try:
            last = json.loads(line)
        except ValueError:
            continue  # the last line of a worker killed mid-write
    checkpoints = folder.checkpoint_steps(slot)
    resume_at = checkpoints[-1] if checkpoints else None
    if last is None:
        return RunningTrial(slot, trial.steps, None, trial.last_value, resume_at)
    at = last.get("reported_at")
    age = max(0.0, now - float(at)) if isinstance(at, (int, float)) else None
    value = last.get(metric, trial.last_value)
    return RunningTrial(slot, int(last.get("step", trial.steps)), age, value, resume_at)


def _lock(folder: _Folder, now: float) -> dict | None:
    from .lock import LEASE_S, StudyLock

    held = StudyLock(folder.storage).current()
    if held is None:
        return None
    expires = held.get("expires")
    if isinstance(expires, (int, float)):
        held["renewed_age_s"] = max(0.0, now - (float(expires) - LEASE_S))
    return held


def _state(record: StudyRecord, lock: dict | None, num_trials: int | None) -> str:
    if lock is not None and not lock["stale"]:
        return "running"
    finished = len(record.finished())
    if record.unfinished() or (num_trials is not None and finished < num_trials):
        return "stopped"
    return "finished"


def _best(record: StudyRecord) -> dict | None:
    best = record.best()
    if best is None:
        return None
    return {
        "trial_id": best.trial_id,
        "value": best.value,
        "params": best.params,
        "adapter": best.adapter_path,
    }


def _resume(standing: Standing, record: StudyRecord, torn: bool) -> str:
    """One sentence: what ``raylora search SPEC --resume`` would do now."""
    lock = standing.lock
    if lock is not None and not lock["stale"]:
        return (
            f"refuse: the study is being run by pid {lock.get('pid')} on {lock.get('host')} "
            f"(since {lock.get('started')})"
        )
    steps = []
    if torn:
        steps.append(f"rebuild {SUMMARY} from {JOURNAL}")
    if lock is not None:
        steps.append(f"take over the stale {LOCK} of pid {lock.get('pid')} on {lock.get('host')}")
    for trial in standing.running:
        where = f"step {trial.checkpoint_step}" if trial.checkpoint_step else "the start"
        steps.append(f"resume {trial.trial_id} from {where}")
    finished = len(record.finished())
    total = standing.num_trials
    new = max(total - finished - len(standing.running), 0) if total is not None else 0
    if new:
        steps.append(f"start {new} new trial(s) (study.num_trials {total}, {finished} finished)")
    if not standing.running and not new:
        return f"nothing: all {finished} trial(s) finished (raise study.num_trials to run more)"
    return "; ".join(steps)


class _Folder:
    """The study's files, read in place: a local folder, or a URI through pyarrow."""

    def __init__(self, location: str):
        from ..tracking.storage import open_study

        self.storage = open_study(location, log=lambda line: None)
        self.display = self.storage.display()
        if not self.storage.remote and not self.storage.directory.is_dir():
            raise UserError("status", f"{location}: not a study folder (no folder there)")

    def _path(self, name: str) -> str:
        if self.storage.remote:
            return f"{self.storage.fs_path}/{name}"
        return str(self.storage.directory / name)

    def read(self, name: str) -> str | None:
        try:
            if self.storage.remote:
                with self.storage.filesystem.open_input_stream(self._path(name)) as f:
                    return f.read().decode()
            with open(self._path(name)) as f:
                return f.read()
        except (OSError, UnicodeDecodeError):
            return None

    def checkpoint_steps(self, slot: str) -> list[int]:
        """The steps of the trial's whole checkpoints (those with their ``report.json``), oldest first."""
        from .checkpoints import CHECKPOINT_PREFIX, Checkpoints

        runs = Checkpoints(self._path(RUNS), self.storage.filesystem, "", "min").for_trial(slot)
        try:
            names = runs.names()
        except OSError:
            return []
        return [int(name.removeprefix(CHECKPOINT_PREFIX)) for name in names]
