"""Repairs of a study's state after a crash: a torn end of ``optuna.journal``, an unreadable summary.

Optuna appends one JSON line per journal record and acknowledges it once written; a process killed (or a
disk filled) mid-append leaves a last line without its newline, or one that does not parse. That record
was never acknowledged, so it is dropped before anything is appended after it (Optuna would otherwise
append to the fragment and fail to read the journal ever after). A bad line anywhere else is corruption
nobody can repair safely: an error naming the file and line.

``summary.json`` is rebuilt from what the journal and the checkpoints hold.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError
from ..layout import RUNS

if TYPE_CHECKING:
    import optuna

    from ..record.trials import StudyRecord
    from ..spec import Spec


def repair_journal(path: Path, log: Callable[[str], None] = print) -> None:
    """Drop a torn last record of Optuna journal ``path`` (with one line saying so); raise a
    :class:`UserError` naming ``file:LINE`` for a bad record anywhere else."""
    torn = check_journal(path)
    if torn is None:
        return
    keep, size, line = torn
    with open(path, "r+b") as f:
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    log(
        f"warning: dropped a torn last record ({size} bytes) of {path} at line {line} "
        "(a process stopped mid-write; it was never acknowledged)"
    )


def check_journal(path: Path) -> tuple[int, int, int] | None:
    """Read Optuna journal ``path`` (no write): raise a :class:`UserError` naming ``file:LINE`` for a bad
    record before its last one; for a torn last record, ``(bytes to keep, its size, its line)``; else
    None (a whole journal, or none)."""
    if not path.is_file():
        return None
    data = path.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # after the last newline: empty when the file ends whole
    keep = len(data) - len(tail)
    if not tail and lines and not _parses(lines[-1]):
        tail = lines.pop()  # a whole-looking last line that does not parse is torn too
        keep -= len(tail) + 1
    for number, line in enumerate(lines, start=1):
        if line.strip() and not _parses(line):
            raise UserError(
                f"{path}:{number}",
                "not an Optuna journal record (the journal is corrupt before its last line); restore it "
                "from a backup, or start a new study.name",
            )
    if tail.strip() or keep != len(data):
        return keep, len(tail), len(lines) + 1
    return None


def _parses(line: bytes) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def rebuild_summary(record: StudyRecord, study: optuna.Study, spec: Spec, storage) -> None:
    """Fill ``record`` (whose ``summary.json`` did not parse) from the Optuna journal and the checkpoints.

    A slot's latest Optuna trial is its attempt: COMPLETE, PRUNED (INFEASIBLE when out of memory) and FAIL
    with a reason are final; RUNNING, or FAIL without a reason (an interrupted attempt a resume settled),
    stays unfinished and resumes from its checkpoint. MLflow runs are found again by their tags.
    """

    from ..record.states import TrialState, from_optuna
    from ..record.trials import TrialRecord
    from ..spec import space
    from .checkpoints import Checkpoints

    latest: dict[str, optuna.trial.FrozenTrial] = {}
    for frozen in study.get_trials(deepcopy=False):
        slot = frozen.user_attrs.get("slot")
        if slot:
            latest[slot] = frozen
    runs_dir, filesystem = storage.ray_path(RUNS)
    objective = spec.study.objective
    checkpoints = Checkpoints(runs_dir, filesystem, objective.metric, objective.mode)
    for slot, frozen in sorted(latest.items()):
        values = frozen.intermediate_values
        trial = TrialRecord(slot, params=space.decode(spec, frozen.params), optuna_number=frozen.number)
        trial.steps = max(values, default=0)
        trial.last_value = values[trial.steps] if values else None
        scored = [v for v in values.values() if v is not None]
        best = (min if objective.mode == "min" else max)(scored) if scored else None
        if not from_optuna(trial, frozen, record.goals):
            trial.value = best
        chosen = checkpoints.for_trial(slot).best()
        if chosen and trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING):
            trial.adapter_path = storage.uri(f"{runs_dir}/{slot}/{chosen}/adapter")
        record.trials[slot] = trial


def point_at_existing(record: StudyRecord, spec: Spec, storage) -> None:
    """Trials (of any state) whose named checkpoint was since replaced (workers that went on after the
    driver or the scheduler stopped listening, a checkpoint discarded on resume) name their best complete
    checkpoint instead, or none: ``summary.json`` never names a checkpoint that does not exist."""
    import pyarrow.fs

    from .checkpoints import Checkpoints

    runs_dir, filesystem = storage.ray_path(RUNS)
    objective = spec.study.objective
    checkpoints = Checkpoints(runs_dir, filesystem, objective.metric, objective.mode)
    fs = checkpoints.fs
    for trial in record.trials.values():
        if not trial.adapter_path:
            continue
        path = storage.uri(trial.adapter_path)
        local = path if filesystem is None else path.split("://", 1)[-1]
        try:
            if fs.get_file_info(local).type != pyarrow.fs.FileType.NotFound:
                continue
        except (OSError, ValueError):
            continue
        chosen = checkpoints.for_trial(trial.trial_id).best()
        if chosen:
            trial.adapter_path = storage.uri(f"{runs_dir}/{trial.trial_id}/{chosen}/adapter")
        else:
            trial.adapter_path = None
    try:
        record.save()
    except OSError:
        pass  # a storage fault is reported by the driver
