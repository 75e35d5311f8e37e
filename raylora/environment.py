"""Every environment variable raylora reads or sets, each declared once with the reason for it.

Read:

* ``RAYLORA_HOME`` — where the built-in model and data, the encoded-data cache and URI studies' local
  mirrors live (default ``~/.cache/raylora``); passed on to Ray workers.
* ``RAYLORA_INJECT_OOM``, ``RAYLORA_INJECT_ERROR`` — fault injection for tests (``raylora.train.faults``);
  passed on to Ray workers.
* ``RAYLORA_PROGRESS_EVERY_S`` — seconds between plain progress lines when output is not a terminal
  (``ray job logs``, ``kubectl logs``, CI); default 30.
* ``RAYLORA_WATCHDOG_S`` — seconds without a report from a trial's workers after which the trial pool
  restarts them from the trial's checkpoint (``raylora.study.watchdog``); 0 turns the watchdog off; unset,
  the limit follows the trial's measured pace.
* ``MLFLOW_TRACKING_URI`` — MLflow's own default store, used when neither ``--tracking-uri`` nor
  ``tracking.tracking_uri`` is given.
* ``MLFLOW_ALLOW_FILE_STORE`` — MLflow 3's opt-in for folder stores; without it a folder ``--tracking-uri``
  is refused in one line (``raylora.tracking.tracker.check_uri``) instead of MLflow's traceback.
* ``RAY_ADDRESS`` — Ray's own cluster address; when set, ``ray.init`` uses it and raylora does not look for
  the cluster a ``ray start`` on this machine recorded (``raylora.study.cluster``).
* ``RAY_TMPDIR``, ``TMPDIR`` (Linux) — Ray's temp root, where ``ray start`` records its cluster's address.
* ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` — a Ray auth token at hand (else ``~/.ray/auth_token``): when
  there is one and the user set no ``RAY_AUTH_MODE``, attaching to a cluster sets it to ``token``.
* ``RAY_AUTH_MODE`` — read only to leave a mode the user chose alone (see Set).

A test (``tests/test_architecture.py``) fails when a module reads a variable not named here.

Set (values already in the environment win, except where a comment says why not): :data:`CLI`,
:data:`MLFLOW`, :data:`RAY_TRAIN` (also passed to every Ray worker), :data:`RAY_DRIVER`.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME = "RAYLORA_HOME"
INJECT_OOM = "RAYLORA_INJECT_OOM"
INJECT_ERROR = "RAYLORA_INJECT_ERROR"
PROGRESS_EVERY_S = "RAYLORA_PROGRESS_EVERY_S"
WATCHDOG_S = "RAYLORA_WATCHDOG_S"
TRACKING_URI = "MLFLOW_TRACKING_URI"
ALLOW_FILE_STORE = "MLFLOW_ALLOW_FILE_STORE"
RAY_ADDRESS = "RAY_ADDRESS"
RAY_TMPDIR = "RAY_TMPDIR"
TMPDIR = "TMPDIR"
RAY_AUTH_TOKEN = "RAY_AUTH_TOKEN"
RAY_AUTH_TOKEN_PATH = "RAY_AUTH_TOKEN_PATH"

# Set by the command line before anything else: the results are what raylora prints. (Hub downloads show
# their own progress: raylora.train.download; loading a model shows none: raylora.train.model.build.)
CLI = {
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # one bar per logged adapter
    # MLflow's "View run ... at: URL" lines: raylora prints the study's one link (credentials removed).
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}

# Set before the first MLflow client exists.
MLFLOW = {
    # An unreachable tracking server must fail fast into raylora's outbox; MLflow retries for minutes.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}

# Exported to the trial drivers and the runners' controllers and workers (Ray reads some on import).
RAY_TRAIN = {
    # Trial drivers are reused, and Tune gives a stopped trial's driver only 2 s to return before it
    # fails the next trial instead.
    "TUNE_FUNCTION_THREAD_TIMEOUT_S": "600",
    # One more actor per runner that only matters on spot capacity (set it to 1 to keep it).
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    # Workers' prints are raylora's own progress lines; Train's patch would prefix each one again.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    # Train's Prometheus metrics cost a thread per worker and nothing here reads them.
    "RAY_TRAIN_METRICS_ENABLED": "0",
}

# Set on the search driver only, and forced: raylora depends on them.
RAY_DRIVER = {
    # Tune's new output engine prints experiment banners even when silent; raylora prints its own.
    "RAY_AIR_NEW_OUTPUT": "0",
    # A failed trial's final report carries its status instead of the objective, by design.
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
    # Tune's CSV, JSON and TensorBoard logs of each trial are never read (the study's summary and MLflow
    # are its records); the TensorBoard one alone costs the driver ~2 CPU-s of tensorboardX import.
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
}

# A local node with fractional-CPU trials starts more worker processes than Ray's default "expected"
# count and warns about each; that is by design here.
RAY_LOCAL_STARTUP = "RAY_worker_maximum_startup_concurrency"
# Ray 2.59+ clusters require token authentication; set when a token is at hand and the user set no mode.
RAY_AUTH_MODE = "RAY_AUTH_MODE"


def home() -> Path:
    """Where raylora keeps built artifacts and caches: ``$RAYLORA_HOME`` or ``~/.cache/raylora``."""
    value = os.environ.get(HOME)
    return Path(value).expanduser() if value else Path.home() / ".cache" / "raylora"


def progress_every_s() -> float:
    """Seconds between plain progress lines (``$RAYLORA_PROGRESS_EVERY_S``, default 30)."""
    try:
        return max(0.0, float(os.environ.get(PROGRESS_EVERY_S, "30")))
    except ValueError:
        return 30.0


def watchdog_s() -> float | None:
    """``$RAYLORA_WATCHDOG_S`` as seconds (0: off), or None when unset or not a number (the measured
    default)."""
    try:
        return max(0.0, float(os.environ[WATCHDOG_S]))
    except (KeyError, ValueError):
        return None


def set_defaults(values: dict[str, str]) -> None:
    """Set each variable the user has not set already."""
    for key, value in values.items():
        os.environ.setdefault(key, value)


def for_workers() -> dict[str, str]:
    """The variables a Ray runtime environment passes on to every worker."""
    passed = (HOME, INJECT_OOM, INJECT_ERROR, *RAY_TRAIN)
    return {key: os.environ[key] for key in passed if key in os.environ}
