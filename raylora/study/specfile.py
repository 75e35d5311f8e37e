"""The resolved spec a study was started with (``<study>/spec.json``), and the check ``--resume`` makes.

A resumed study must be the same study: a new learning-rate range, another ``training.max_steps`` or other
data would rank trials that are not comparable, and a changed choice list breaks Optuna's journal.
Everything but :data:`MAY_CHANGE` (how many trials, where they run, where results go) is compared, and
so are the bytes of local data files (their sha256). It also records the MLflow store the study records
to (absolute, credentials removed: :mod:`raylora.redact`), which ``--resume`` uses unless given another.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import redact
from ..errors import SpecError, UserError, raise_all
from ..files import write_atomic
from ..layout import JOURNAL, SPEC

if TYPE_CHECKING:
    from ..spec import Spec

MAY_CHANGE = ("study.num_trials", "study.max_concurrent_trials", "study.storage", "resources", "tracking")
DATA_FILES = ("data.train", "data.eval")


def resolved(spec: Spec, tracking_uri: str | None = None) -> dict:
    """What ``spec.json`` holds: the resolved spec (defaults included), the values the user set, the
    sha256 of each local data file and the MLflow store; no credentials (:func:`raylora.redact.values`)."""
    values = spec.model_dump(mode="json")
    digests = {}
    for path in DATA_FILES:
        ref = spec.get(path)
        digest = _sha256(ref) if isinstance(ref, str) else None
        if digest:
            digests[path] = digest
    return redact.values(
        {
            "spec": values,
            "set": _flatten(json.loads(json.dumps(spec.to_dict(), default=str))),
            "data_sha256": digests,
            **({"tracking_uri": redact.redact(tracking_uri)} if tracking_uri else {}),
        }
    )


def save(directory: Path, spec: Spec, tracking_uri: str | None = None) -> None:
    """Write ``spec.json`` atomically (the current spec: changes it allowed are recorded too)."""
    directory.mkdir(parents=True, exist_ok=True)
    write_atomic(directory / SPEC, json.dumps(resolved(spec, tracking_uri), indent=1) + "\n")


def stored_uri(directory: Path) -> str | None:
    """The MLflow store ``spec.json`` records (credentials removed), or None."""
    try:
        return json.loads((directory / SPEC).read_text()).get("tracking_uri")
    except (OSError, ValueError, AttributeError):
        return None


def check(directory: Path, spec: Spec, accept: bool = False) -> None:
    """Refuse a resume whose spec differs from the study's in anything but :data:`MAY_CHANGE`: one
    :class:`SpecError` per changed path, ``old → new``. A study with a journal but no ``spec.json`` (an
    older raylora, a deleted file) is refused unless ``accept`` (``--accept-spec``) takes the current spec
    as the study's."""
    path = directory / SPEC
    if not path.is_file():
        if (directory / JOURNAL).is_file() and not accept:
            raise UserError(
                str(path),
                "missing, so nothing shows this spec is the one the study began with; restore it, or "
                "resume with --accept-spec to take the current spec as the study's",
            )
        return
    try:
        stored = json.loads(path.read_text())
        old_spec, old_data = stored["spec"], stored.get("data_sha256", {})
    except (ValueError, KeyError, TypeError):
        raise SpecError(str(path), "does not parse; restore it or start a new study.name") from None
    now = resolved(spec)
    old, new = _flatten(old_spec), _flatten(now["spec"])
    # Paths set in either spec, compared with defaults filled in: a default a newer raylora changed for a
    # path neither spec sets is not the user's change.
    given = set(stored.get("set", old)) | set(now["set"])
    errors = []
    for key in sorted(k for k in set(old) | set(new) if k in given or _under(k, given)):
        if _may_change(key) or old.get(key, _UNSET) == new.get(key, _UNSET):
            continue
        errors.append(SpecError(key, f"{_show(old.get(key, _UNSET))} → {_show(new.get(key, _UNSET))}{_WHY}"))
    for key in DATA_FILES:
        before, after = old_data.get(key), now["data_sha256"].get(key)
        if before and after and before != after and old.get(key) == new.get(key):
            errors.append(
                SpecError(key, f"the file's contents changed (sha256 {before[:12]}… → {after[:12]}…){_WHY}")
            )
    raise_all(errors)


def data_digests(directory: Path) -> dict[str, str]:
    """``{data.train: sha256, ...}`` of the local data files, as ``spec.json`` recorded them."""
    try:
        return dict(json.loads((directory / SPEC).read_text()).get("data_sha256", {}))
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


def changed_data(spec: Spec, digests: dict[str, str]) -> str | None:
    """Why the data files of ``spec`` are not those the study began with (``digests``, from
    :func:`data_digests`): the first file that changed or went missing, named; None when all match."""
    for key, before in sorted(digests.items()):
        ref = spec.get(key)
        after = _sha256(ref) if isinstance(ref, str) else None
        if after is None:
            return f"{key} ({ref}) is missing since the study began"
        if after != before:
            return f"{key} ({ref}) changed since the study began (sha256 {before[:12]}… → {after[:12]}…)"
    return None


_UNSET = object()
_WHY = " (--resume continues the study as it began; use a new study.name to change this)"


def _show(value: Any) -> str:
    return "(unset)" if value is _UNSET else json.dumps(value)


def _under(key: str, given: set[str]) -> bool:
    """Whether ``key`` lies under a path set as a whole (a list or a table given in one value)."""
    return any(key.startswith(p + ".") or p.startswith(key + ".") for p in given)


def _may_change(key: str) -> bool:
    return any(key == p or key.startswith(p + ".") for p in MAY_CHANGE)


def _flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(values, dict) and values:
        out: dict[str, Any] = {}
        for key, value in values.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: values}


def _sha256(ref: str) -> str | None:
    from ..files import digest

    return None if "://" in ref else digest(str(Path(ref.split("#", 1)[0]).expanduser()))
