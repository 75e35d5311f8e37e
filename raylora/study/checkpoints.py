"""A study's adapter checkpoints: ``<study>/runs/<slot>/checkpoint_s<step>``, on local disk or any pyarrow
filesystem, keeping each trial's latest and its best.

A checkpoint is whole or it is not one. On a local (or NFS) filesystem it is written under a hidden
temporary name, fsynced, and renamed into place; on object storage its ``report.json`` is uploaded last,
as the mark that every other file is there. Readers see only complete checkpoints, so a writer killed
mid-write (a driver killed, a full disk) leaves the previous checkpoint as the one to resume from. A
power loss can still leave a renamed checkpoint's files empty where the disk lied about a flush: every
checkpoint carries a manifest (:mod:`.manifest`), and a resume takes the newest one that matches it
(:meth:`Checkpoints.trusted`), or starts afresh.

Written by rank 0 of the worker group training the trial (:class:`raylora.study.pool_worker.PoolSession`);
read back when a trial resumes on any runner, and by the driver when it logs adapters to MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ..layout import CHECKPOINT_PREFIX, DONE
from ..record.trials import finite
from . import manifest


@dataclass
class Checkpoints:
    """A study's adapter checkpoints: ``<runs_dir>/<slot>/checkpoint_s<step>``, on local disk or a pyarrow
    filesystem (None: local), keeping each trial's latest and its best by the objective (the newer one on
    a tie, as Ray Train's own rule)."""

    runs_dir: str
    filesystem: object
    metric: str
    mode: str
    slot: str | None = None

    def for_trial(self, slot: str) -> Checkpoints:
        return replace(self, slot=slot)

    @property
    def folder(self) -> str:
        return f"{self.runs_dir}/{self.slot}"

    @property
    def fs(self):
        import pyarrow.fs

        return self.filesystem or pyarrow.fs.LocalFileSystem()

    def names(self) -> list[str]:
        """The trial's complete checkpoint folder names, oldest first."""
        return [name for name in self._folders() if self._complete(name)]

    def _folders(self) -> list[str]:
        import pyarrow.fs

        infos = self.fs.get_file_info(pyarrow.fs.FileSelector(self.folder, allow_not_found=True))
        return sorted(
            i.base_name
            for i in infos
            if i.type == pyarrow.fs.FileType.Directory and i.base_name.startswith(CHECKPOINT_PREFIX)
        )

    def _complete(self, name: str) -> bool:
        import pyarrow.fs

        info = self.fs.get_file_info(f"{self.folder}/{name}/{DONE}")
        return info.type == pyarrow.fs.FileType.File

    def latest(self) -> Path | None:
        """A local folder holding the trial's latest complete checkpoint (downloaded if remote), or None."""
        return self.trusted(discard=False)[0]

    def trusted(self, discard: bool) -> tuple[Path | None, list[str]]:
        """The trial's newest checkpoint whose files match its manifest, as a local folder (downloaded if
        remote; None: start afresh), and ``NAME (why)`` for each newer one passed over. With ``discard``
        those are deleted, so neither pruning nor the summary ever picks them again."""
        passed_over = []
        for name in reversed(self.names()):
            why = manifest.problem(self.fs, f"{self.folder}/{name}")
            if why is None:
                local = self._local(name)
                why = manifest.unloadable(local)
                if why is None:
                    return local, passed_over
                if self.filesystem is not None:  # a downloaded copy
                    import shutil

                    shutil.rmtree(local, ignore_errors=True)
            passed_over.append(f"{name} ({why})")
            if discard:
                self._delete(name)
        return None, passed_over

    def _local(self, name: str) -> Path:
        path = f"{self.folder}/{name}"
        if self.filesystem is None:
            return Path(path)
        import tempfile

        import pyarrow.fs

        local = Path(tempfile.mkdtemp(prefix="raylora-resume-"))
        pyarrow.fs.copy_files(path, str(local), source_filesystem=self.filesystem)
        return local

    def save(self, local: Path, step: int, metrics: dict) -> str:
        """Store folder ``local`` as the checkpoint of ``step``, whole or not at all; return its path; drop
        superseded ones."""
        import json

        name = f"{CHECKPOINT_PREFIX}{step:07d}"
        path = f"{self.folder}/{name}"
        report = json.dumps({"step": step, self.metric: metrics.get(self.metric)})
        if self.filesystem is None:
            self._save_local(local, path, report)
        else:
            self._save_remote(local, path, report)
        self._prune(name)
        return path

    def _save_local(self, local: Path, path: str, report: str) -> None:
        import os
        import shutil
        import uuid

        (local / DONE).write_text(report)
        manifest.write(local)
        target = Path(path)
        staging = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copytree(local, staging)
            manifest.fsync_tree(staging)  # a power loss must not leave renamed but empty files
            if target.exists():  # the same step again (a trial resumed at its last checkpoint)
                shutil.rmtree(target)
            os.rename(staging, target)
            manifest.fsync(target.parent)  # the rename itself
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _save_remote(self, local: Path, path: str, report: str) -> None:
        import pyarrow.fs

        from ..layout import MANIFEST

        if self.fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound:
            self.fs.delete_dir(path)  # the same step again: never mark stale files complete
        (local / DONE).write_text(report)
        manifest.write(local)
        last = [local / MANIFEST, local / DONE]  # the manifest, then the mark that the checkpoint is whole
        files = [f for f in sorted(local.rglob("*")) if f.is_file() and f not in last]
        for file in files + last:
            name = f"{path}/{file.relative_to(local).as_posix()}"
            self.fs.create_dir(name.rsplit("/", 1)[0], recursive=True)
            with self.fs.open_output_stream(name) as f:
                f.write(file.read_bytes())

    def best(self) -> str | None:
        """The trial's best complete checkpoint by the objective: the newer one on a tie, the latest when
        none holds a value; None when there is none."""
        import json
        import math

        sign = 1.0 if self.mode == "min" else -1.0
        best, best_value = None, math.inf
        for name in self.names():  # oldest first, so the newer one wins a tie
            text = self._read(f"{self.folder}/{name}/{DONE}")
            value = json.loads(text).get(self.metric) if text else None
            value = sign * value if finite(value) else math.inf
            if value <= best_value:
                best, best_value = name, value
        return best

    def _prune(self, latest: str) -> None:
        keep = (self.best(), latest)
        stale = [name for name in self.names() if name not in keep]
        torn = [name for name in self._folders() if not self._complete(name)]
        for name in stale + torn:
            self._delete(name)

    def _delete(self, name: str) -> None:
        try:
            self.fs.delete_dir(f"{self.folder}/{name}")
        except OSError:
            pass  # gone already

    def _read(self, path: str) -> str | None:
        try:
            with self.fs.open_input_stream(path) as f:
                return f.read().decode()
        except OSError:
            return None
