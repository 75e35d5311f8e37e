"""One driver per study: an exclusive lock in the study folder, held while ``raylora search`` runs.

Two drivers of one study (a cron overlap, two people on shared storage) would each ask Optuna for trials,
resume from each other's checkpoints and log every step twice. The lock is ``<study>/driver.lock``, a
small JSON object naming its holder (host, pid, the process's start time, when it started) and when the
lease expires; the holder renews the lease every :data:`RENEW_S` seconds.

* Local or NFS folder: the file is created with ``O_EXCL`` (atomic there). A lock whose holder is gone is
  stale and taken over: same host and the pid is not that process any more, or the lease expired
  (a holder on another host that stopped renewing).
* Object storage (no exclusive create): a lease object. A launcher takes a missing or expired lease by
  writing its own, waits, and reads it back; it holds the lock only if its own lease is still there.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from ..errors import UserError
from ..files import write_atomic
from ..layout import LOCK

LEASE_S = 120.0  # a lease not renewed for this long belongs to a holder that is gone
RENEW_S = 20.0
SETTLE_S = 2.0  # object storage: how long a launcher waits before reading its lease back


def _start_ticks(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), or None when unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, ticks: str | None) -> bool:
    """Whether process ``pid`` on this host is still the one that took the lock (not a reused pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    now = _start_ticks(pid)
    return ticks is None or now is None or now == ticks


class StudyLock:
    """The lock of one study on its storage (:mod:`raylora.tracking.storage`); :meth:`acquire` or exit 2."""

    def __init__(self, storage):
        self.storage = storage
        self.token = uuid.uuid4().hex
        self.holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "pid_start": _start_ticks(os.getpid()),
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "token": self.token,
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.held = False

    # -- where the lock lives ------------------------------------------------------------------------

    @property
    def _path(self) -> str:
        if self.storage.remote:
            return f"{self.storage.fs_path}/{LOCK}"
        return str(self.storage.directory / LOCK)

    def _body(self) -> bytes:
        return (json.dumps({**self.holder, "expires": time.time() + LEASE_S}) + "\n").encode()

    def _read(self) -> dict | None:
        try:
            if self.storage.remote:
                with self.storage.filesystem.open_input_stream(self._path) as f:
                    data = f.read()
            else:
                with open(self._path, "rb") as f:
                    data = f.read()
        except (FileNotFoundError, OSError):
            return None
        try:
            return json.loads(data)
        except ValueError:  # being written right now, or torn by a holder killed mid-write
            try:
                written = os.stat(self._path).st_mtime if not self.storage.remote else 0.0
            except OSError:
                written = 0.0
            return {"expires": written + 10.0}

    def _write(self) -> None:
        if self.storage.remote:
            self.storage.filesystem.create_dir(self.storage.fs_path, recursive=True)  # a no-op on S3
            with self.storage.filesystem.open_output_stream(self._path) as f:
                f.write(self._body())
        else:
            write_atomic(Path(self._path), self._body())

    def _stale(self, held: dict) -> bool:
        if held.get("host") == self.holder["host"] and isinstance(held.get("pid"), int):
            return not _alive(held["pid"], held.get("pid_start"))
        return float(held.get("expires", 0)) < time.time()

    # -- taking and giving back ----------------------------------------------------------------------

    def acquire(self) -> StudyLock:
        """Take the lock, or raise a :class:`UserError` naming its holder."""
        for _ in range(5):
            if self._try():
                self.held = True
                self._thread = threading.Thread(target=self._renew, daemon=True, name="raylora-lock")
                self._thread.start()
                return self
        raise UserError("--storage", f"could not take the lock {self._display()} (it kept changing hands)")

    def check_free(self) -> dict | None:
        """Read only: raise the :class:`UserError` that :meth:`acquire` would when a live driver holds the
        lock (a second driver is told before it starts Ray, not after); else the stale lock there, if any."""
        held = self._read()
        if held is not None and not self._stale(held):
            raise self._busy(held)
        return held

    def _busy(self, held: dict) -> UserError:
        return UserError(
            "study.name",
            f"study {self.storage.location} is already being run by pid {held.get('pid')} on "
            f"{held.get('host')} (since {held.get('started')}); wait for it to end, or remove "
            f"{self._display()} if that driver is gone",
        )

    def _try(self) -> bool:
        held = self.check_free()
        if self.storage.remote:
            self._write()
            time.sleep(SETTLE_S)  # another launcher that read the same expired lease writes meanwhile
            return (self._read() or {}).get("token") == self.token
        if held is not None:  # stale: take it over (whoever removes it first; the other retries)
            try:
                os.unlink(self._path)
            except FileNotFoundError:
                pass
        self.storage.directory.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(self._body())
        return True

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_S):
            try:
                if (self._read() or {}).get("token") == self.token:
                    self._write()
            except OSError:
                pass  # storage trouble shows up in the study itself; the lease is retried next time

    def release(self) -> None:
        """Give the lock back (only if it is still this driver's)."""
        self._stop.set()
        if not self.held:
            return
        self.held = False
        try:
            if (self._read() or {}).get("token") != self.token:
                return
            if self.storage.remote:
                self.storage.filesystem.delete_file(self._path)
            else:
                os.unlink(self._path)
        except OSError:
            pass  # a lock left behind is stale once this process is gone

    def _display(self) -> str:
        return self.storage.display(LOCK)

    def current(self) -> dict | None:
        """Who holds the lock now, read without taking it: the lock file's fields plus ``stale`` (its
        holder is gone: it may be taken over), or None when nobody holds it."""
        held = self._read()
        if held is None:
            return None
        return {**{k: v for k, v in held.items() if k != "token"}, "stale": self._stale(held)}

    def __enter__(self) -> StudyLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
