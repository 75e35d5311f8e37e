"""raylora: which parts of Qwen3-VL should LoRA train? Hyperparameter studies on Ray, recorded in MLflow.

The Python API is the command line's, one function per journey::

    import raylora

    spec = raylora.load_spec("search_spaces/quickstart.yaml", ["study.num_trials=2"])
    trained = raylora.train_trial(spec, "runs/one")          # one trial in this process
    plan, record = raylora.run_study(spec, storage="runs")   # the study on Ray
    result = raylora.promote_best(experiment=spec.study.name)

Each raises :class:`UserError` (with ``.lines()``, one per problem) for a mistake the user can fix.
Heavy libraries (torch, Ray, MLflow) are imported when a function is called, not by ``import raylora``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import UserError

if TYPE_CHECKING:
    from pathlib import Path

    from .record.trials import StudyRecord
    from .spec import Spec
    from .study.driver import Plan
    from .tracking.promote import PromoteResult
    from .train import TrainResult

__all__ = ["Spec", "UserError", "load_spec", "promote_best", "run_study", "train_trial"]


def load_spec(path: str | Path, overrides: list[str] = (), *, check_inputs: bool = True) -> Spec:
    """Read and validate a study spec (``--set``-style ``path=value`` overrides); with ``check_inputs``,
    also check its local model and data as ``raylora validate`` does. Every problem is raised at once."""
    from . import spec as spec_lib
    from .train import preflight

    spec = spec_lib.load(path, list(overrides))
    if check_inputs:
        preflight.local_inputs(spec)
    return spec


def train_trial(spec: Spec, output_dir: str | Path) -> TrainResult:
    """Train one trial with the spec's fixed values in this process (``raylora train``); writes
    ``adapter/``, ``metrics.json`` and ``targets.json`` to ``output_dir``."""
    from .train import LocalSession, train

    return train(spec, LocalSession(output_dir))


def run_study(spec: Spec, **options: Any) -> tuple[Plan, StudyRecord]:
    """Run or continue the study on Ray (``raylora search``); ``options`` are those of
    :func:`raylora.study.driver.run`: ``storage``, ``address``, ``tracking_uri``, ``resume``, ``dry_run``."""
    from .study import driver

    return driver.run(spec, **options)


def promote_best(**options: Any) -> PromoteResult:
    """Register the best finished trial's adapter in the MLflow Model Registry (``raylora promote best``);
    ``options`` are :func:`raylora.tracking.promote.promote_best`'s."""
    from .tracking import promote

    return promote.promote_best(**options)


def __getattr__(name: str) -> Any:
    if name == "Spec":  # pydantic is imported only when the spec is wanted
        from .spec import Spec

        return Spec
    raise AttributeError(f"module 'raylora' has no attribute {name!r}")
