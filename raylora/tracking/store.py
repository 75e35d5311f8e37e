"""The MLflow store a study records to: which one, made absolute, created once, and reached or refused.

    --tracking-uri  >  tracking.tracking_uri  >  $MLFLOW_TRACKING_URI  >  spec.json's (on --resume)
                    >  sqlite:///<storage>/mlflow.db, beside the studies (never the working directory)

The URI a study keeps (``spec.json``, ``mlflow_pending.json``) has no credentials (:mod:`raylora.redact`);
at run time they come from MLflow's own ``MLFLOW_TRACKING_USERNAME`` / ``_PASSWORD`` / ``_TOKEN``, or from
the URI given on the command line, which stays in this process.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from .. import environment
from ..errors import EnvironmentFault, UserError
from ..redact import redact
from ..redact import text as redact_text

STORE_FILE = "mlflow.db"
REACH_TIMEOUT_S = "10"


def default_uri(storage_root: str) -> str:
    """``sqlite:///<storage>/mlflow.db`` beside a local storage's studies; for object storage, under
    ``$RAYLORA_HOME`` (SQLite needs a local file)."""
    folder = environment.home() if "://" in storage_root else Path(storage_root).expanduser()
    return f"sqlite:///{folder.absolute() / STORE_FILE}"


def absolute(uri: str) -> str:
    """A SQLite or folder URI with its path made absolute (the same store from any working directory)."""
    path = sqlite_file(uri)
    if path is not None:
        return f"sqlite:///{path}"
    scheme = urlsplit(uri).scheme
    if uri and (not scheme or len(scheme) == 1):  # a folder, or a Windows drive letter
        return str(Path(uri).expanduser().absolute())
    return uri


def sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (absolute), or None for any other store."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    if path in ("", ":memory:"):
        return None
    return Path("/" + path.lstrip("/")) if uri.startswith("sqlite:////") else Path(path).absolute()


def for_study(
    given: str | None, stored: str | None, storage_root: str, log: Callable[[str], None] = print
) -> str:
    """The store a search records to: the one ``given`` (flag, spec or environment) else the one the study
    recorded (``stored``, credentials removed) else the default beside the storage. A given store other
    than the recorded one is used, with a warning naming both."""
    if not given:
        return stored or default_uri(storage_root)
    uri = absolute(given)
    if stored and redact(uri) != stored:
        log(
            f"warning: the study's MLflow records are in {stored}; this run records to {redact(uri)} "
            "(drop --tracking-uri to keep one store)"
        )
    return uri


def given(override: str | None, spec_uri: str | None) -> str | None:
    """The store the user named: ``--tracking-uri``, else ``tracking.tracking_uri``, else
    ``$MLFLOW_TRACKING_URI``; None when none is named."""
    return override or spec_uri or os.environ.get(environment.TRACKING_URI) or None


def must_exist(uri: str, flag: str = "--tracking-uri") -> None:
    """Refuse (exit 2) a SQLite store that does not exist: reading a study never creates an empty store."""
    path = sqlite_file(uri)
    if path is not None and not path.is_file():
        raise UserError(flag, f"no MLflow store at {path} (give the study's --tracking-uri)")


def must_answer(uri: str) -> None:
    """Refuse (exit 1, one line, within seconds) a tracking server that does not answer; MLflow's own
    retries take minutes. Local stores are not checked."""
    if urlsplit(uri).scheme not in ("http", "https"):
        return
    environment.set_defaults(environment.MLFLOW)
    from mlflow import MlflowClient

    try:
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as e:  # connection refused, DNS, timeout, 5xx, 401: all say the same to the user
        lines = str(e).strip().splitlines()
        reason = redact_text(lines[0][:200]) if lines else type(e).__name__
        raise EnvironmentFault(
            "MLflow", f"the tracking server at {redact(uri)} does not answer ({reason})"
        ) from None


@contextmanager
def created(uri: str):
    """Hold a lock beside a SQLite store while it is created or migrated, so that two processes opening a
    new store at once do not both run MLflow's schema migration (one would fail); other stores need none."""
    path = sqlite_file(uri)
    if path is None:
        yield
        return
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def open_client(uri: str):
    """An ``MlflowClient`` on ``uri`` whose store exists (a new SQLite store is created under the lock)."""
    environment.set_defaults(environment.MLFLOW)
    from mlflow import MlflowClient

    path = sqlite_file(uri)
    if path is None:
        return MlflowClient(tracking_uri=uri)
    with created(uri):
        if not path.exists():
            _copy_empty_store(path)
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)  # creates (or completes a copied) store
    return client


def _copy_empty_store(path: Path) -> None:
    """Start a new SQLite store as a copy of an empty one made once per MLflow version in
    ``$RAYLORA_HOME/cache/mlflow``: MLflow's schema migrations cost every new store ~2 CPU-s (a first
    study's start). The copy has no experiment; MLflow adds its Default one, with this store's artifact
    location, when it opens it. Anything in the way (an unwritable cache) leaves the store to MLflow."""
    import shutil
    import sqlite3

    import mlflow

    empty = environment.home() / "cache" / "mlflow" / f"empty-{mlflow.__version__}.db"
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        if not empty.is_file():
            empty.parent.mkdir(parents=True, exist_ok=True)
            made = empty.with_name(f".{empty.name}.{os.getpid()}")
            made.unlink(missing_ok=True)
            mlflow.MlflowClient(tracking_uri=f"sqlite:///{made}").search_experiments(max_results=1)
            with sqlite3.connect(made) as db:
                db.execute("DELETE FROM experiments")
            os.replace(made, empty)
        shutil.copyfile(empty, partial)
        os.replace(partial, path)
    except Exception:  # an unwritable or full cache, MLflow's own error there: MLflow makes this store
        partial.unlink(missing_ok=True)
