"""``raylora report``: a study's report rebuilt from its folder (or the study an MLflow experiment records),
after sending the MLflow records an earlier run could not, and comparing trials with the base model anew.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..files import write_atomic
from ..layout import REPORT_DIR, SUMMARY
from ..record.trials import StudyRecord
from ..tracking import report, tags


def regenerate(target: str, tracking_uri: str | None = None, log=print) -> Path:
    """Rebuild the report of a study (folder or URI), or of the study an MLflow experiment records; log
    it there. MLflow records an earlier run could not send are sent first."""
    from mlflow import MlflowClient

    from ..errors import NothingToDo
    from ..layout import BASELINE as BASELINE
    from ..layout import JOURNAL
    from ..tracking.storage import open_study
    from ..tracking.tracker import replay_pending
    from ..tracking.tracker import tracking_uri as resolve_uri

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
        from ..tracking.tracker import check_uri

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
        from . import baseline

        if baseline.compare_trials(record, storage, json.loads((directory / BASELINE).read_text())):
            write_atomic(directory / SUMMARY, json.dumps(record.to_dict(), indent=2) + "\n")
    study = report.load_optuna(directory / JOURNAL, summary["study"])
    out = report.write(directory / REPORT_DIR, record, study)
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
        client.log_artifacts(parent.info.run_id, str(out), REPORT_DIR)
    return out
