"""The closed vocabularies of a study's life: a trial's state, a pool job's state, and how an exception
out of a trial becomes one.

Trial states (``summary.json``, MLflow's ``raylora.state`` tag, the leaderboard):

    RUNNING ──▶ COMPLETE     trained every step; its value is its best objective
            ├─▶ PRUNED       stopped early by ASHA; its value is its last objective, at a lower budget
            ├─▶ INFEASIBLE   out of memory (measured, or predicted by the memory estimate)
            └─▶ FAILED       any other error, with its reason

Every transition is made by :class:`raylora.study.optuna_searcher.StudySearcher` (or, for what a killed
driver left, by the driver's resume); nothing else assigns a trial's state.
"""

from __future__ import annotations

from enum import StrEnum


class TrialState(StrEnum):
    """A trial's state in the study."""

    RUNNING = "RUNNING"
    COMPLETE = "COMPLETE"
    PRUNED = "PRUNED"
    INFEASIBLE = "INFEASIBLE"
    FAILED = "FAILED"


FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.INFEASIBLE, TrialState.FAILED)
"""Finished states, in the leaderboard's order."""


class JobState(StrEnum):
    """A trial's state in the trial pool, as its Tune trial driver sees it."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    STOPPED = "stopped"  # by the scheduler: its workers end it at their next step


EXIT = "exit"
"""The pool's answer to a runner asking for its next trial when the study is over."""

# Keys of a trial driver's final report when the trial did not train to the end.
STATUS = "raylora/status"
ERROR = "raylora/error"
DISCARDED = "raylora/discarded"
"""A report's key naming the checkpoints a resumed trial passed over (they failed their manifest)."""
STORAGE_FAULT = "storage-fault"
"""A status (not a trial state): the trial's storage is full, read-only or not writable. The study stops and
the trial stays unfinished, to resume once the cause is fixed."""
FAULT_ERRNOS = frozenset({28, 30, 13, 122})  # ENOSPC, EROFS, EACCES, EDQUOT


def classify(error: BaseException) -> tuple[str, str]:
    """(INFEASIBLE | FAILED | STORAGE_FAULT, one-line reason) for an exception out of a trial or a
    ``TorchTrainer.fit``."""
    from ..errors import first_line

    causes = list(_causes(error))
    fault = storage_fault(error)
    if fault:
        return STORAGE_FAULT, fault
    if any(_is_oom(e) for e in causes):
        return TrialState.INFEASIBLE, "out of memory: " + first_line(next(e for e in causes if _is_oom(e)))
    root = causes[-1] if causes else error
    return TrialState.FAILED, f"{type(root).__name__}: {first_line(root)}"


def _causes(error: BaseException):
    seen: set[int] = set()
    stack = [error]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        failures = getattr(e, "worker_failures", None) or {}
        stack.extend(failures.values())
        stack.extend([getattr(e, "cause", None), e.__cause__, e.__context__])


def _is_oom(error: BaseException) -> bool:
    names = {cls.__name__ for cls in type(error).__mro__}
    return "OutOfMemoryError" in names or "CUDA out of memory" in str(error)


def storage_fault(error: BaseException, where: str = "the study's storage") -> str | None:
    """``PATH: OS error`` when ``error`` (or a cause) is a full, read-only or unwritable storage."""
    import re

    for e in _causes(error):
        if isinstance(e, OSError) and e.errno in FAULT_ERRNOS:
            return f"{e.filename or where}: {e.strerror or e} (errno {e.errno})"
        if type(e).__name__ == "Error" and e.args and isinstance(e.args[0], list):
            # shutil.copytree gathers its per-file OSErrors into one Error of (src, dst, message) rows.
            for row in e.args[0]:
                found = re.search(r"\[Errno (\d+)\] ([^:']+)", str(row[-1])) if len(row) == 3 else None
                if found and int(found.group(1)) in FAULT_ERRNOS:
                    return f"{row[1]}: {found.group(2).strip()} (errno {found.group(1)})"
    return None
