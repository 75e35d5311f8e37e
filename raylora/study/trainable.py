"""The Tune trainable: one trial, run by the study's trial pool (never ``Tuner(trainer)``).

The trial driver queues its trial on :class:`raylora.study.pool.TrialPool`, whose long-lived Ray Train
worker groups train it, and forwards the reports to Tune as they come. A trial's adapter checkpoints live
under ``<study>/runs/<slot>``, so a restarted trial resumes from its latest one. Failures are classified
on the workers and reported here as a final result, so one bad trial never takes the study down: out of
memory on any worker → INFEASIBLE, anything else → FAILED with its reason.
"""

from __future__ import annotations

from ..record.states import ERROR, INFRA_FAULT, STATUS, JobState, TrialState, classify


def run_trial(config: dict, base_spec: dict, pool, data_sha256: dict | None = None) -> None:
    """Tune function trainable: ``config`` holds the trial's ``slot`` and sampled dotted-path ``params``;
    ``data_sha256`` the data files' digests from ``spec.json``, checked before the trial starts."""
    import ray
    import ray.tune

    from ..spec import Spec
    from .specfile import changed_data

    if config.get("prescreened"):
        _end(TrialState.INFEASIBLE, config["prescreened"])
        return
    slot = config["slot"]
    try:
        spec = Spec.from_dict(base_spec).with_values(config["params"])
        changed = changed_data(spec, data_sha256 or {})
        if changed:  # a study ranks trials trained on the same data, or stops
            _end(INFRA_FAULT, changed)
            return
        ray.get(pool.submit.remote(slot, spec.to_dict()))
    except Exception as e:  # the trial ends here; the searcher tells Optuna what happened
        _end(*classify(e))
        return
    cursor = 0
    while True:
        try:
            reports, state, error = ray.get(pool.poll.remote(slot, cursor, 5.0))
        except Exception as e:  # the pool is gone for good (out of restarts, its node died): not a verdict
            _end(*classify(e))
            return
        if state == JobState.STOPPED:
            return  # stopped by the scheduler: its workers end it at their next step
        if state == JobState.LOST:  # the pool was restarted: the trial resumes from its checkpoint there
            try:
                ray.get(pool.submit.remote(slot, spec.to_dict()))
            except Exception as e:
                _end(*classify(e))
                return
            cursor = 0  # its reports come again (replayed first); the searcher keeps each step once
            continue
        for metrics in reports:
            ray.tune.report(metrics)
        cursor += len(reports)
        if state == JobState.FAILED:
            _end(*error)
            return
        if state == JobState.DONE:
            return


def _end(status: str, message: str) -> None:
    """A trial's final report when it did not train to the end: its status and one-line reason."""
    import ray.tune

    ray.tune.report({STATUS: str(status), ERROR: message})
