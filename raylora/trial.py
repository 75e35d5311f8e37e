"""The Tune trainable: one trial, run by the study's trial pool (never ``Tuner(trainer)``).

The trial driver queues its trial on :class:`raylora.pool.TrialPool`, whose long-lived Ray Train worker
groups train it, and forwards the reports to Tune as they come. A trial's adapter checkpoints live under
``<study>/runs/<slot>``, so a restarted trial resumes from its latest one. Failures are classified on the
workers and reported here as a final result, so one bad trial never takes the study down: out of memory
on any worker → INFEASIBLE, anything else → FAILED with its reason.
"""

from __future__ import annotations

STATUS = "raylora/status"
ERROR = "raylora/error"


def run_trial(config: dict, base_spec: dict, pool) -> None:
    """Tune function trainable: ``config`` holds the trial's ``slot`` and sampled dotted-path ``params``."""
    import ray
    import ray.tune

    from .spec import Spec

    if config.get("prescreened"):
        _end("INFEASIBLE", config["prescreened"])
        return
    slot = config["slot"]
    try:
        spec = Spec.from_dict(base_spec).with_values(config["params"])
        ray.get(pool.submit.remote(slot, spec.to_dict()))
    except Exception as e:  # the trial ends here; the searcher tells Optuna what happened
        _end(*classify(e))
        return
    cursor = 0
    while True:
        try:
            reports, state, error = ray.get(pool.poll.remote(slot, cursor, 5.0))
        except Exception as e:  # the pool itself is gone (its node died): this trial cannot go on
            _end(*classify(e))
            return
        if state == "stopped":
            return  # stopped by the scheduler: its workers end it at their next step
        for metrics in reports:
            ray.tune.report(metrics)
        cursor += len(reports)
        if state == "failed":
            _end(*error)
            return
        if state == "done":
            return


def _end(status: str, message: str) -> None:
    """A trial's final report when it did not train to the end: its status and one-line reason."""
    import ray.tune

    ray.tune.report({STATUS: status, ERROR: message})


def classify(error: BaseException) -> tuple[str, str]:
    """(INFEASIBLE | FAILED, one-line reason) for an exception out of a trial or a ``TorchTrainer.fit``."""
    causes = list(_causes(error))
    if any(_is_oom(e) for e in causes):
        return "INFEASIBLE", "out of memory: " + _first_line(next(e for e in causes if _is_oom(e)))
    root = causes[-1] if causes else error
    return "FAILED", f"{type(root).__name__}: {_first_line(root)}"


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


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    lines = [line for line in text.splitlines() if line.strip()]
    # Ray wraps worker errors with the remote traceback; the last line is the error itself.
    return (lines[-1] if len(lines) > 1 and "Traceback" in text else lines[0])[:500]
