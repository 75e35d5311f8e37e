"""The Tune trainable: one Ray Train ``TorchTrainer`` per trial (never ``Tuner(trainer)``).

Each Train run is named after the trial's slot (``t003``) under ``<study>/runs``, so a restarted trial
finds its latest adapter checkpoint. Failures are classified here and reported as a final result, so
one bad trial never takes the study down: out of memory on any worker → INFEASIBLE, anything else →
FAILED with its reason.
"""

from __future__ import annotations

STATUS = "raylora/status"
ERROR = "raylora/error"


class StopBoard:
    """The trials the scheduler stopped early, asked by each trial's rank-0 worker as it trains.

    Trial drivers are reused from one trial to the next (Tune ``reuse_actors``) instead of being started
    afresh, so a stopped trial is not killed with its driver: its workers see it here and end their Train
    run at the next step, which frees the driver for the next trial.
    """

    def __init__(self):
        self.stopped: set[str] = set()

    def stop(self, slot: str) -> None:
        self.stopped.add(slot)

    def is_stopped(self, slot: str) -> bool:
        return slot in self.stopped


def run_trial(config: dict, base_spec: dict, runs_dir: str, storage_filesystem, board) -> None:
    """Tune function trainable: ``config`` holds the trial's ``slot`` and sampled dotted-path ``params``.

    ``runs_dir`` is a path on ``storage_filesystem`` (a pyarrow filesystem; None: the local one), and
    ``board`` is the study's :class:`StopBoard` actor.
    """
    import ray.tune

    if config.get("prescreened"):
        ray.tune.report({STATUS: "INFEASIBLE", ERROR: config["prescreened"]})
        return
    try:
        trainer = _trainer(config, base_spec, runs_dir, storage_filesystem, board)
        trainer.fit()
    except Exception as e:  # the trial ends here; the searcher tells Optuna what happened
        status, message = classify(e)
        ray.tune.report({STATUS: status, ERROR: message})


def _trainer(config: dict, base_spec: dict, runs_dir: str, storage_filesystem, board):
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from .spec import Spec
    from .train_loop import train_fn_per_worker
    from .tune_report import StoppableTuneReport

    spec = Spec.from_dict(base_spec).with_values(config["params"])
    resources, objective = spec.resources, spec.study.objective
    use_gpu = resources.gpus_per_worker > 0
    per_worker = {"CPU": resources.cpus_per_worker, **({"GPU": resources.gpus_per_worker} if use_gpu else {})}
    return TorchTrainer(
        train_fn_per_worker,
        train_loop_config={"spec": spec.to_dict(), "trial_id": config["slot"], "stop_board": board},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=resources.workers_per_trial,
            use_gpu=use_gpu,
            resources_per_worker=per_worker,
            placement_strategy=resources.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=config["slot"],
            storage_path=runs_dir,
            storage_filesystem=storage_filesystem,
            callbacks=[StoppableTuneReport(board, config["slot"])],
            failure_config=ray.train.FailureConfig(max_failures=resources.max_failures),
            # Ray always keeps the latest checkpoint too, so a restart resumes from it.
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=1,
                checkpoint_score_attribute=objective.metric,
                checkpoint_score_order=objective.mode,
            ),
        ),
    )


def classify(error: BaseException) -> tuple[str, str]:
    """(INFEASIBLE | FAILED, one-line reason) for an exception out of ``TorchTrainer.fit``."""
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
