"""The closed vocabularies of a study's life: a trial's state, a pool job's state, and how an exception
out of a trial becomes one.

Trial states (``summary.json``, MLflow's ``raylora.state`` tag, the leaderboard):

    RUNNING ──▶ COMPLETE     trained every step; its value is its best objective
            ├─▶ PRUNED       stopped early by ASHA; its value is its last objective, at a lower budget
            ├─▶ INFEASIBLE   out of memory (measured, or predicted by the memory estimate)
            └─▶ FAILED       any other error of its own training (a non-finite loss included)
    A fault of what carries the trial (storage, a node, the pool: :data:`NOT_A_VERDICT`) leaves it RUNNING,
    to resume from its checkpoint.

Every transition is made by :class:`raylora.study.optuna_searcher.StudySearcher`, or, for what a killed
driver left, read back from the Optuna journal by :func:`from_optuna` (the resume's settling and the
summary's rebuild); nothing else assigns a trial's state.
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


def from_optuna(trial, frozen, goals) -> bool:
    """Give ``trial`` (a :class:`~raylora.record.trials.TrialRecord`) the verdict Optuna's ``frozen`` trial
    holds, its objective ``values`` (named by ``goals``, ``(metric, mode)`` pairs) included; False when Optuna
    holds none (RUNNING, or FAIL without a reason: an interrupted attempt a resume settled)."""
    import optuna

    TS = optuna.trial.TrialState
    if frozen.state == TS.COMPLETE:
        # frozen.value raises for a multi-objective study; the first objective is the ranked one
        trial.state, trial.value = TrialState.COMPLETE, frozen.values[0]
        trial.values.update({metric: v for (metric, _), v in zip(goals, frozen.values, strict=False)})
    elif frozen.state == TS.PRUNED and frozen.constraints.get("out_of_memory", 0.0) > 0:
        trial.state, trial.value, trial.error = TrialState.INFEASIBLE, None, "out of memory"
    elif frozen.state == TS.PRUNED:
        trial.state, trial.value = TrialState.PRUNED, trial.last_value
    elif frozen.state == TS.FAIL and "error" in frozen.user_attrs:
        trial.state, trial.value, trial.error = TrialState.FAILED, None, frozen.user_attrs["error"]
    else:
        return False
    return True


class JobState(StrEnum):
    """A trial's state in the trial pool, as its Tune trial driver sees it."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    STOPPED = "stopped"  # by the scheduler: its workers end it at their next step
    LOST = "lost"  # the pool was restarted (its actor died) and no longer knows the trial: submit it again


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
INFRA_FAULT = "infrastructure-fault"
"""A status (not a trial state): what carried the trial failed, not its training (a node, the raylet, the
trial pool or a trial driver died; a worker group could not start; a data file vanished). As for a storage
fault, the trial stays unfinished and resumes from its checkpoint."""
NOT_A_VERDICT = (STORAGE_FAULT, INFRA_FAULT)
"""Statuses that end a trial's attempt without deciding the trial."""
FAULT_ERRNOS = frozenset({28, 30, 13, 122})  # ENOSPC, EROFS, EACCES, EDQUOT

# Ray's and Ray Train's errors for a process, node or worker group that is gone or never came: the
# infrastructure's, never a trial's (names, so this layer does not import Ray).
_INFRA_ERRORS = frozenset(
    {
        "RayActorError",
        "ActorDiedError",
        "ActorUnavailableError",
        "NodeDiedError",
        "LocalRayletDiedError",
        "WorkerCrashedError",
        "RaySystemError",
        "ObjectLostError",
        "OwnerDiedError",
        "RpcError",
        "ActorUnschedulableError",
        "TaskUnschedulableError",
        "WorkerGroupStartupTimeoutError",
        "WorkerGroupStartupFailedError",
        "WorkerHealthCheckTimeoutError",
        "WorkerHealthCheckFailedError",
        "PreemptionError",
        "RuntimeEnvSetupError",
    }
)


def classify(error: BaseException) -> tuple[str, str]:
    """(INFEASIBLE | FAILED | STORAGE_FAULT | INFRA_FAULT, one-line reason) for an exception out of a
    trial, a ``TorchTrainer.fit`` or a call to the trial pool.

    Only what the trial's own training raised is a verdict: out of memory is INFEASIBLE, any other error
    of its own FAILED. A full or unwritable storage, a data file gone, and Ray's errors for a process,
    node or worker group that died or never started, or a collective that lost its peer (:func:`peer_lost`),
    with no error of the trial's own among the causes, are faults of the infrastructure."""
    from ..errors import first_line

    causes = list(_causes(error))
    fault = storage_fault(error)
    if fault:
        return STORAGE_FAULT, fault
    if any(_is_oom(e) for e in causes):
        return TrialState.INFEASIBLE, "out of memory: " + first_line(next(e for e in causes if _is_oom(e)))
    gone = next((e for e in causes if isinstance(e, FileNotFoundError)), None)
    if gone is not None:  # the data and the model were checked before the study: this went missing since
        return INFRA_FAULT, f"{gone.filename or first_line(gone)}: no such file (it was there at the start)"
    infra = [e for e in causes if _names(e) & _INFRA_ERRORS or _lost_peer(e)]
    own = _own(error)
    if infra and not own:
        return INFRA_FAULT, f"{type(infra[-1]).__name__}: {first_line(infra[-1])}"
    root = own[-1] if own else causes[-1] if causes else error
    return TrialState.FAILED, f"{type(root).__name__}: {first_line(root)}"


_PEER_LOST_ERRORS = frozenset({"DistNetworkError", "DistBackendError"})
"""torch.distributed's errors for a collective whose peers went away (NCCL, the TCP store)."""
_PEER_LOST_TEXTS = ("Connection reset by peer", "Connection closed by peer", "Broken pipe")
"""What gloo's plain ``RuntimeError`` says when a peer process died mid-collective."""


def peer_lost(error: BaseException) -> bool:
    """Whether a worker's error is a collective that lost a peer (another worker of its group died, or
    its node), with no error of the trial's own beside it: the trial's group restarts and resumes it, as
    for the dead worker itself; not a verdict on the trial."""
    return _from_lost_peer(error) and not _own(error)


def _lost_peer(error: BaseException) -> bool:
    if _names(error) & _PEER_LOST_ERRORS:
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and "gloo" in text and any(t in text for t in _PEER_LOST_TEXTS)


def _from_lost_peer(error: BaseException) -> bool:
    """``error`` is a lost peer, or was raised because of one (one is among its causes)."""
    return any(_lost_peer(e) for e in _causes(error))


def _own(error: BaseException) -> list[BaseException]:
    """``error``'s causes raised by the trial's own code for a reason of its own (not a lost peer)."""
    return [e for e in _causes(error) if _is_trials_own(e) and not _from_lost_peer(e)]


def _names(error: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(error).__mro__}


def _is_trials_own(error: BaseException) -> bool:
    """An exception raised by code other than Ray's (Ray's wrappers carry the trial's own as a cause), or
    an actor that died of its own constructor's error (Ray keeps only that error's text)."""
    own_init = getattr(error, "actor_init_failed", False) or "raised in its creation task" in str(error)
    return own_init or not type(error).__module__.startswith("ray.")


def _causes(error: BaseException):
    seen: set[int] = set()
    stack = [error]
    while stack:
        e = stack.pop()
        if not isinstance(e, BaseException) or id(e) in seen:  # Ray's "cause" may be a protobuf context
            continue
        seen.add(id(e))
        yield e
        failures = getattr(e, "worker_failures", None) or {}
        stack.extend(failures.values())
        stack.extend([getattr(e, "cause", None), getattr(e, "controller_failure", None)])
        stack.extend([e.__cause__, e.__context__])


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
