"""Where a study lives: a local or NFS folder, or a pyarrow filesystem URI (``s3://``, ``gs://``, ...).

Ray writes Tune state and trial checkpoints straight to the storage (``<study>/tune``, ``<study>/runs``).
The study's own small files (``summary.json``, ``optuna.journal``, ``mlflow_pending.json``, ``report/``)
are written in a local folder: the study folder itself, or, for a URI, a mirror under
``$RAYLORA_HOME/studies/`` that is downloaded when the study opens (so ``--resume`` works from any
machine) and uploaded after every save. Object stores replace whole objects, so a reader of the bucket
never sees half a file.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from .. import environment
from ..errors import UserError, first_line
from ..files import unwritable, write_atomic
from ..layout import REPORT_DIR as REPORT
from ..layout import STATE_FILES
from ..redact import redact

UNPUSHED = ".raylora-unpushed"  # in a mirror whose last changes did not reach the storage


def open_storage(root: str, study: str, log: Callable[[str], None] = print) -> LocalStorage | UriStorage:
    """The storage of study ``study`` under ``root``: a folder, or a URI pyarrow understands."""
    if "://" in root and not root.startswith("file://"):
        return UriStorage(root, study, log)
    path = urlsplit(root).path if root.startswith("file://") else root
    return LocalStorage(Path(path).expanduser().resolve() / study)


def open_study(location: str, log: Callable[[str], None] = print) -> LocalStorage | UriStorage:
    """The storage of the study at ``location`` (``<root>/<study>``: a folder or a URI)."""
    if "://" not in location or location.startswith("file://"):
        path = Path(urlsplit(location).path if location.startswith("file://") else location)
        return LocalStorage(path.expanduser().resolve())
    parts = urlsplit(location)
    root_path, _, study = parts.path.rstrip("/").rpartition("/")
    if not study:
        raise UserError("report", f"{redact(location)} names no study folder")
    return UriStorage(urlunsplit(parts._replace(path=root_path)), study, log)


class LocalStorage:
    """A study folder on a local or shared (NFS, EFS) file system; the state is the folder itself."""

    remote = False
    filesystem = None

    def __init__(self, directory: Path):
        self.directory = directory
        self.location = str(directory)

    def display(self, name: str = "") -> str:
        """Where ``name`` (a file of the study) is, as a user would type it."""
        return str(self.directory / name) if name else str(self.directory)

    def check(self) -> None:
        """Stop with one line naming ``--storage`` when the study cannot be written here: a path that is a
        file, a read-only mount, a folder without write permission (the folder itself is created later)."""
        problem = unwritable(self.directory)
        if problem:
            raise UserError("--storage", f"{problem}; a study lives in a folder you can write in")

    def pull(self) -> None:
        """Nothing to download."""

    def push(self, report: bool = False) -> bool:
        """Nothing to upload."""
        return True

    def ray_path(self, sub: str) -> tuple[str, None]:
        """``(storage_path, storage_filesystem)`` for a Ray ``RunConfig`` writing under ``<study>/sub``."""
        return str(self.directory / sub), None

    def uri(self, path: str) -> str:
        """The user-facing name of a path Ray reported (local paths are already that)."""
        return path

    @contextmanager
    def local_copy(self, ref: str) -> Iterator[Path | None]:
        """A local path holding file or folder ``ref`` (None when it does not exist)."""
        path = Path(ref)
        yield path if path.exists() else None


class UriStorage:
    """A study under a pyarrow filesystem URI, with its small state mirrored in a local folder."""

    remote = True

    def __init__(self, root: str, study: str, log: Callable[[str], None] = print):
        import pyarrow.fs

        parts = urlsplit(root)
        self.log = log
        try:
            self.filesystem, root_path = pyarrow.fs.FileSystem.from_uri(root)
        except (ValueError, OSError, ImportError) as e:
            raise UserError("--storage", f"{redact(root)}: {first_line(e, 300)}") from None
        self._root_path = root_path.rstrip("/")
        self._root_uri = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2], query=""))
        self._root_uri = self._root_uri.rstrip("/")
        self.fs_path = f"{self._root_path}/{study}"
        safe = urlsplit(redact(root))
        self.location = urlunsplit(safe._replace(path=f"{safe.path.rstrip('/')}/{study}"))
        key = hashlib.sha256(self.location.encode()).hexdigest()[:16]
        self.directory = environment.home() / "studies" / key / study
        self._pushed: dict[str, tuple[int, int]] = {}  # state file -> (size, mtime_ns) last uploaded
        self._failing = False

    def display(self, name: str = "") -> str:
        """Where ``name`` (a file of the study) is, as a user would type it."""
        return self.uri(f"{self.fs_path}/{name}" if name else self.fs_path)

    def uri(self, path: str) -> str:
        """``s3://bucket/...`` for a path on this storage's filesystem (Ray reports them without scheme)."""
        if "://" in path or not path.startswith(self._root_path):
            return path
        return self._root_uri + path[len(self._root_path) :]

    def _fs_path(self, ref: str) -> str:
        return self._root_path + ref[len(self._root_uri) :] if ref.startswith(self._root_uri) else ref

    def check(self) -> None:
        """Write and delete a marker under the study, or stop with one line saying why not."""
        import pyarrow.fs

        marker = f"{self.fs_path}/.raylora-check-{uuid.uuid4().hex}"
        bucket = self.fs_path.lstrip("/").split("/")[0]
        try:
            if bucket and self.filesystem.get_file_info(bucket).type == pyarrow.fs.FileType.NotFound:
                raise UserError("--storage", f"{self.location}: bucket {bucket!r} does not exist")
            with self.filesystem.open_output_stream(marker) as f:
                f.write(b"raylora storage check\n")
            self.filesystem.delete_file(marker)
        except OSError as e:
            raise UserError("--storage", f"cannot write to {self.location}: {first_line(e, 300)}") from None

    def pull(self) -> None:
        """Make the local mirror hold exactly the study's state files as they are in the storage (unless
        an earlier run here could not upload its last changes: then they are uploaded first)."""
        import pyarrow.fs

        self.directory.mkdir(parents=True, exist_ok=True)
        if (self.directory / UNPUSHED).exists():
            self.log(f"uploading the study's state an earlier run kept in {self.directory}")
            self._pushed.clear()
            if not self.push(report=True):
                raise UserError("--storage", f"cannot upload the study's state to {self.location}")
        selector = pyarrow.fs.FileSelector(self.fs_path, allow_not_found=True)
        remote = {info.base_name: info for info in self.filesystem.get_file_info(selector)}
        for name in STATE_FILES:
            local = self.directory / name
            if name in remote and remote[name].type == pyarrow.fs.FileType.File:
                write_atomic(local, read_whole(self.filesystem, f"{self.fs_path}/{name}"))
                self._pushed[name] = _signature(local)
            else:
                local.unlink(missing_ok=True)
                self._pushed.pop(name, None)
        shutil.rmtree(self.directory / REPORT, ignore_errors=True)
        if REPORT in remote and remote[REPORT].type == pyarrow.fs.FileType.Directory:
            _download(self.filesystem, f"{self.fs_path}/{REPORT}", self.directory / REPORT, folder=True)

    def push(self, report: bool = False) -> bool:
        """Upload the state files that changed since the last upload (and ``report/``); False on failure.

        A failure is told once and retried at the next push: Ray's checkpoints do not depend on it, and
        the mirror keeps everything meanwhile.
        """
        import pyarrow.fs

        try:
            for name in STATE_FILES:
                local = self.directory / name
                if local.is_file():
                    signature = _signature(local)
                    if self._pushed.get(name) != signature:
                        with self.filesystem.open_output_stream(f"{self.fs_path}/{name}") as f:
                            f.write(local.read_bytes())
                        self._pushed[name] = signature
                elif self._pushed.pop(name, None) is not None:
                    _delete(self.filesystem, f"{self.fs_path}/{name}")
            if report and (self.directory / REPORT).is_dir():
                pyarrow.fs.copy_files(
                    str(self.directory / REPORT),
                    f"{self.fs_path}/{REPORT}",
                    destination_filesystem=self.filesystem,
                )
        except OSError as e:
            (self.directory / UNPUSHED).touch()
            if not self._failing:
                self.log(
                    f"could not upload the study's state to {self.location} ({first_line(e, 300)}); "
                    f"it is kept in {self.directory} and uploaded at the next save"
                )
            self._failing = True
            return False
        if self._failing:
            self.log(f"the study's state is uploaded to {self.location} again")
        self._failing = False
        (self.directory / UNPUSHED).unlink(missing_ok=True)
        return True

    def ray_path(self, sub: str):
        """``(storage_path, storage_filesystem)`` for a Ray ``RunConfig`` writing under ``<study>/sub``.

        The filesystem is passed explicitly because Ray joins names onto ``storage_path`` as a string,
        which would mangle a URI's query parameters (``?endpoint_override=...``).
        """
        return f"{self.fs_path}/{sub}", self.filesystem

    @contextmanager
    def local_copy(self, ref: str) -> Iterator[Path | None]:
        """A temporary local copy of file or folder ``ref`` (None when it does not exist)."""
        import pyarrow.fs

        path = self._fs_path(ref)
        info = self.filesystem.get_file_info(path)
        if info.type == pyarrow.fs.FileType.NotFound:
            yield None
            return
        with tempfile.TemporaryDirectory(prefix="raylora-fetch-") as tmp:
            local = Path(tmp) / info.base_name
            _download(self.filesystem, path, local, info.type == pyarrow.fs.FileType.Directory)
            yield local


def read_whole(filesystem, path: str, attempts: int = 5) -> bytes:
    """File ``path`` as one consistent version, even while a running study rewrites it.

    pyarrow's S3 streams take the object's size when opened: an object replaced by a shorter one before
    the read comes back padded with stray bytes, a longer one cut short. A read whose length matches
    the object's size afterwards is whole.
    """
    for _ in range(attempts):
        with filesystem.open_input_stream(path) as f:
            data = f.read()
        if filesystem.get_file_info(path).size == len(data):
            return data
    raise OSError(f"{path} kept changing while it was read ({attempts} attempts)")


def _download(filesystem, path: str, local: Path, folder: bool) -> None:
    import pyarrow.fs

    # pyarrow copies a folder's files into an existing local folder only.
    (local if folder else local.parent).mkdir(parents=True, exist_ok=True)
    pyarrow.fs.copy_files(path, str(local), source_filesystem=filesystem)


def _signature(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def _delete(filesystem, path: str) -> None:
    try:
        filesystem.delete_file(path)
    except FileNotFoundError:
        pass
