"""The trial pool's watchdog: a trial whose workers stopped reporting is a fault of what runs it.

A worker that hangs (a deadlocked collective, a stopped process, a hung filesystem) would hold its trial
and its accelerators for good. Rank 0 tells the pool after every step and every evaluation; once a trial
has made its first step, the watchdog measures the longest silence between two of those (an evaluation
included) and calls the trial stalled when the current silence is :data:`MULTIPLE` times that, and at least
:data:`FLOOR_S`. ``RAYLORA_WATCHDOG_S`` sets a fixed limit instead (0 turns the watchdog off). The pool
then ends the trial's workers: Ray Train starts the group again and the trial resumes from its checkpoint,
up to :data:`RESTARTS` times, after which it is left unfinished as an infrastructure fault.

Model loading before the first step is not watched: how long it takes depends on the model and the disk.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

MULTIPLE = 10.0
"""The limit, in multiples of the longest silence between two reports seen so far."""
FLOOR_S = 300.0
"""No limit below this many seconds (a step of a large model, an evaluation, a checkpoint upload)."""
RESTARTS = 2
"""How often a stalled trial's workers are started again, from its checkpoint, before it is left
unfinished (an infrastructure fault: the study stops, and ``--resume`` runs it again)."""


@dataclass
class _Heard:
    at: float
    longest: float = 0.0


class Watchdog:
    """When each trial's workers last reported, and whether a trial has been silent too long."""

    def __init__(self, fixed_s: float | None = None, clock=time.time):
        self.fixed_s, self.clock = fixed_s, clock
        self._heard: dict[str, _Heard] = {}

    def heard(self, slot: str) -> None:
        """Rank 0 of ``slot`` reported (a step or an evaluation)."""
        now = self.clock()
        last = self._heard.get(slot)
        if last is None:
            self._heard[slot] = _Heard(now)
            return
        last.longest, last.at = max(last.longest, now - last.at), now

    def forget(self, slot: str) -> None:
        """``slot`` ended, or its workers restart (timing starts again at their first step)."""
        self._heard.pop(slot, None)

    def age(self, slot: str) -> float | None:
        """Seconds since ``slot`` last reported (None before its first step)."""
        last = self._heard.get(slot)
        return None if last is None else self.clock() - last.at

    def limit(self, slot: str) -> float | None:
        """The silence after which ``slot`` is stalled (None: not watched)."""
        if self.fixed_s is not None:
            return self.fixed_s or None
        last = self._heard.get(slot)
        return None if last is None else max(FLOOR_S, MULTIPLE * last.longest)

    def stalled(self, slot: str) -> float | None:
        """The seconds ``slot`` has been silent, when that is over its limit; else None."""
        age, limit = self.age(slot), self.limit(slot)
        return age if age is not None and limit is not None and age > limit else None
