"""``raylora report``: a study's report rebuilt from its folder (or the study an MLflow experiment records),
after sending the MLflow records an earlier run could not, and comparing trials with the base model anew.
A torn ``summary.json`` is rebuilt from the journal as ``search --resume`` does; reading never creates an
MLflow store, and a tracking server that does not answer is one line.
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
    from ..errors import NothingToDo
    from ..layout import BASELINE as BASELINE
    from ..layout import JOURNAL
    from ..tracking import store
    from ..tracking.storage import open_study
    from ..tracking.tracker import replay_pending
    from ..tracking.tracker import tracking_uri as resolve_uri

    is_study = "://" in target or Path(target).expanduser().is_dir()
    client = None
    if tracking_uri or not is_study:
        client = store.open_client(_reachable(resolve_uri(tracking_uri), target, is_study))
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
    replay_pending(storage, log, uri=resolve_uri(tracking_uri) if tracking_uri else None)
    summary = _summary(storage, log)
    record = StudyRecord(
        directory, summary["study"], summary["objective"]["metric"], summary["objective"]["mode"]
    )
    record.trials = StudyRecord.open_summary(directory / SUMMARY)
    record.goals = [(o["metric"], o["mode"]) for o in summary.get("objectives", [])] or record.goals
    limits = summary.get("constraints", {}).items()
    record.limits = {m: (text.split()[0], float(text.split()[1])) for m, text in limits}
    record.scheduler = summary.get("scheduler")
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


def _reachable(uri: str, target: str, is_study: bool) -> str:
    """``uri``, once it is known to be a store that answers. Looking an experiment up never creates an
    empty store; a study's records may be sent to a new one named with ``--tracking-uri``."""
    from ..errors import UserError
    from ..tracking import store
    from ..tracking.tracker import check_uri

    check_uri(uri)
    missing = store.sqlite_file(uri)
    if not is_study and missing is not None and not missing.is_file():
        raise UserError("report", f"{target}: no such study folder, and no MLflow store at {missing}")
    store.must_answer(uri)
    return uri


def _summary(storage, log) -> dict:
    """The study's ``summary.json``; a torn one is rebuilt from the journal and ``spec.json`` first."""
    path = storage.directory / SUMMARY
    try:
        return json.loads(path.read_text())
    except ValueError:
        pass
    from ..errors import UserError
    from ..layout import JOURNAL, SPEC
    from ..spec import Spec, space
    from .optuna_searcher import open_optuna
    from .repair import rebuild_summary
    from .stopping import scheduler_name

    try:
        spec = Spec.from_dict(json.loads((storage.directory / SPEC).read_text())["spec"])
    except (OSError, ValueError, KeyError, TypeError):
        spec = None
    if spec is None or not (storage.directory / JOURNAL).is_file():
        raise UserError(
            storage.display(SUMMARY), f"does not parse, and no {SPEC} and {JOURNAL} to rebuild it from"
        )
    record = StudyRecord(
        storage.directory, spec.study.name, spec.study.objective.metric, spec.study.objective.mode
    )
    record.goals = [(o.metric, o.mode) for o in spec.study.goals]
    record.limits = spec.study.constraint_limits()
    record.scheduler = scheduler_name(spec, space.largest_max_steps(spec))
    rebuild_summary(record, open_optuna(storage.directory, spec, log), spec, storage)
    record.save()
    storage.push()
    log(f"warning: {storage.display(SUMMARY)} did not parse; rebuilt it from {JOURNAL}")
    return json.loads(path.read_text())
