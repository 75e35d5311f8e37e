"""A study's adapter checkpoints: ``<study>/runs/<slot>/checkpoint_s<step>``, on local disk or any pyarrow
filesystem, keeping each trial's latest and its best.

A checkpoint is whole or it is not one. On a local (or NFS) filesystem it is written under a hidden
temporary name and renamed into place; on object storage its ``report.json`` is uploaded last, as the
mark that every other file is there. Readers see only complete checkpoints, so a writer killed mid-write
(a driver killed, a full disk) leaves the previous checkpoint as the one to resume from.

Written by rank 0 of the worker group training the trial (:class:`raylora.study.pool_worker.PoolSession`);
read back when a trial resumes on any runner, and by the driver when it logs adapters to MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ..layout import DONE
from ..record.trials import finite

CHECKPOINT_PREFIX = "checkpoint_s"


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
        names = self.names()
        if not names:
            return None
        path = f"{self.folder}/{names[-1]}"
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
        target = Path(path)
        staging = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copytree(local, staging)
            if target.exists():  # the same step again (a trial resumed at its last checkpoint)
                shutil.rmtree(target)
            os.rename(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _save_remote(self, local: Path, path: str, report: str) -> None:
        import pyarrow.fs

        if self.fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound:
            self.fs.delete_dir(path)  # the same step again: never mark stale files complete
        self.fs.create_dir(path, recursive=True)
        pyarrow.fs.copy_files(str(local), path, destination_filesystem=self.fs)
        with self.fs.open_output_stream(f"{path}/{DONE}") as f:  # last: the checkpoint is whole
            f.write(report.encode())

    def _prune(self, latest: str) -> None:
        import json
        import math

        sign = 1.0 if self.mode == "min" else -1.0
        scored = []
        for name in self.names():
            value = self._read(f"{self.folder}/{name}/{DONE}")
            value = json.loads(value).get(self.metric) if value else None
            scored.append((sign * value if finite(value) else math.inf, name))
        best, best_value = latest, math.inf
        for value, name in scored:  # oldest first, so the newer one wins a tie
            if value <= best_value:
                best, best_value = name, value
        torn = [name for name in self._folders() if not self._complete(name)]
        for name in [name for _, name in scored if name not in (best, latest)] + torn:
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
