"""SIGTERM stops a study as Ctrl-C does: what Kubernetes, ``docker stop`` and a scheduler's kill send.

The first SIGTERM is handed to whoever handles Ctrl-C's SIGINT at that moment: Tune's loop ends (the
workers stop at their next step, the summary and report are written, the lock released), or a
``KeyboardInterrupt`` ends what runs before it. The command then exits 143 (128 + SIGTERM) instead of 130.
A second SIGTERM exits at once.

``ray.init`` installs a SIGTERM handler of its own (``sys.exit``, which can be raised inside a garbage
collector callback and lost there), so :func:`install` runs again after it. A SIGTERM sent to the driver's
process group reaches the local Ray processes the driver started too; they are started with SIGTERM
blocked (:func:`held_from_children`), so the GCS and raylet the study still needs to wind down survive it.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager

TERMINATED = 128 + signal.SIGTERM
"""The exit status after a SIGTERM (143), as a shell reports a process SIGTERM ended."""
INTERRUPTED = 128 + signal.SIGINT
"""The exit status after Ctrl-C (130)."""

_received: list[int] = []


def install() -> None:
    """Handle SIGTERM as Ctrl-C from now on (main thread only; Python allows no handler elsewhere)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


def _on_sigterm(signum: int, frame) -> None:
    if _received:
        os.write(2, b"error: terminated again; exiting now (continue the study with --resume)\n")
        os._exit(TERMINATED)
    _received.append(signum)
    # Whoever handles Ctrl-C now handles it. Called, not raised: a background job's SIGINT is ignored.
    on_interrupt = signal.getsignal(signal.SIGINT)
    if callable(on_interrupt) and on_interrupt is not signal.default_int_handler:
        on_interrupt(signal.SIGINT, frame)
    else:
        raise KeyboardInterrupt


def terminated() -> bool:
    """Whether a SIGTERM was received."""
    return bool(_received)


def exit_code() -> int:
    """The exit status of an interrupted command: 143 after a SIGTERM, else 130 (Ctrl-C)."""
    return TERMINATED if terminated() else INTERRUPTED


@contextmanager
def held_from_children():
    """Block SIGTERM while the processes of a local Ray start (they inherit the mask), then handle it here
    again. A SIGTERM to the process group then reaches only this driver, which stops the study while the
    GCS and raylet still serve it. Ray stops its processes with SIGKILL after a second's grace at exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        install()  # before unblocking: a SIGTERM that came meanwhile is delivered to this handler
        signal.pthread_sigmask(signal.SIG_SETMASK, before)
