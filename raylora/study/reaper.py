"""After a driver is killed outright (SIGKILL, an OOM killer), the processes it started do not linger.

Ray ends the GCS and raylet of a local Ray with its driver, but not everything below them: the dashboard's
module processes, and a worker busy in a task (the base-model scoring, holding its GPU) can outlive it. A
small watcher in a session of its own records the driver's descendants every few seconds while the driver
lives; once it is gone, it ends those that are still there (the same process, by its start time). On an
attached cluster the driver has no Ray descendants here, and Ray ends the job's workers itself.

Linux only (it reads ``/proc``); elsewhere :func:`start` does nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

EVERY_S = 2.0


def start() -> None:
    """Watch this process; best effort, never an error."""
    if not Path("/proc/self/stat").exists():
        return
    try:
        subprocess.Popen(
            [sys.executable, "-m", "raylora.study.reaper", str(os.getpid())],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a SIGTERM or Ctrl-C to the driver's group leaves it be
        )
    except OSError:
        pass


def watch(pid: int) -> None:
    """Record ``pid``'s descendants until it exits; then SIGKILL those still running."""
    started = _start_time(pid)
    seen: dict[int, int] = {}
    while started is not None and _start_time(pid) == started:
        seen.update(descendants(pid))
        seen.pop(os.getpid(), None)  # the watcher is the driver's child too
        seen = {p: t for p, t in seen.items() if _start_time(p) == t}
        time.sleep(EVERY_S)
    for p, t in seen.items():
        if _start_time(p) == t:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass


def descendants(pid: int) -> dict[int, int]:
    """``{pid: start time}`` of every process below ``pid``."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        if fields:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
            starts[int(entry.name)] = int(fields[19])
    out, stack = {}, list(children.get(pid, []))
    while stack:
        p = stack.pop()
        if p in starts and p not in out:
            out[p] = starts[p]
            stack.extend(children.get(p, []))
    return out


def _stat(pid: int) -> list[str] | None:
    """``/proc/PID/stat`` after the command name: state, ppid, ... (start time at index 19)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def _start_time(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[19]) if fields and fields[0] != "Z" else None


if __name__ == "__main__":
    watch(int(sys.argv[1]))
