"""What the user sees during ``raylora search``: trial events as they happen, and where each running trial
is between its evaluations.

On a terminal, a live view under the event lines: trials done of the total and the best so far, then one
row per running trial (step of max_steps, samples/s, ETA, its latest objective). Elsewhere (``ray job
logs``, ``kubectl logs``, CI) plain lines only: the events, and one line per running trial every
``RAYLORA_PROGRESS_EVERY_S`` seconds (30 by default). Steps between evaluations come from the trial pool,
which rank 0 of each trial tells every couple of seconds (:meth:`TrialPool.progress`).

Before its first step a trial's worker group goes through start-up phases (starting workers n/m,
importing, loading the model, indexing the data n/m, resuming from a checkpoint; see
:class:`~raylora.train.session.Phase`): the live view shows the phase in the step column, and plain output
says each one that lasts more than :data:`PHASE_AFTER_S` seconds, so no start is silent.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager

from .. import environment
from ..record.states import DISCARDED, TrialState
from ..record.trials import StudyRecord, TrialRecord, short_params
from ..spec import Spec, space
from ..train.session import phase_name
from .listener import TrialListener

PHASE_AFTER_S = 3.0
"""A start-up phase shorter than this goes unsaid in plain output (it would only add noise)."""


class Progress(TrialListener):
    """Prints trial starts, evaluations and ends with running / finished / pruned counts and the best;
    with :meth:`watch`, also each running trial's step between evaluations."""

    def __init__(self, spec: Spec, record: StudyRecord, log: Callable[[str], None], live: bool | None = None):
        self.spec, self.record, self.log = spec, record, log
        self.metric = spec.study.objective.metric
        self.start = time.monotonic()
        self.live = sys.stdout.isatty() if live is None else live
        self.every_s = environment.progress_every_s()
        self.total = space.trials(spec)  # the space's size when smaller
        self.steps: dict[str, dict] = {}  # slot -> the pool's latest step report (or start-up phase)
        self.phase_after_s = min(PHASE_AFTER_S, self.every_s)
        self._said: dict[str, str] = {}  # slot -> the last start-up phase a plain line named
        self._view = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        # Tune pickles its searcher, and with it this object: the live view and its thread stay here.
        state = dict(self.__dict__)
        state.update(_view=None, _thread=None, _lock=None, _stop=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.Lock(), _stop=threading.Event())

    def begin(self, plan) -> None:
        nodes = len(plan.nodes)
        resumed = f", resuming {', '.join(plan.resumed)}" if plan.resumed else ""
        self.log(
            f"study {self.spec.study.name}: {plan.remaining} trial(s) to run, "
            f"{plan.max_concurrent} at a time "
            f"on {nodes} node(s); scheduler {plan.scheduler}{resumed}"
        )
        local = f" (local copy {plan.study_dir})" if plan.storage.remote else ""
        self.log(f"  storage: {plan.storage.display()}{local}")
        if plan.dashboard_url:
            self.log(f"  Ray dashboard: {plan.dashboard_url}")

    def watch(self, pool) -> None:
        """Follow the running trials' steps from the trial pool until :meth:`end`."""
        if self.live:
            from rich.console import Console
            from rich.live import Live

            self._view = Live(self._table(), console=Console(), refresh_per_second=2, transient=True)
            self._view.start()
        self._thread = threading.Thread(target=self._follow, args=(pool,), daemon=True, name="progress")
        self._thread.start()

    def started(self, trial: TrialRecord) -> None:
        self._line(f"{trial.trial_id} start  {short_params(trial.params)}")

    def reported(self, trial: TrialRecord, result: dict) -> None:
        if result.get(DISCARDED):
            self._line(f"{trial.trial_id} warning: discarded checkpoint(s) {result[DISCARDED]}")
        if trial.value is None:
            return
        resumed = f"  (resumed from step {trial.resumed_from_step})" if trial.resumed_from_step else ""
        self._line(f"{trial.trial_id} step {trial.steps:<4} {self.metric} best {trial.value:.4g}{resumed}")

    def ended(self, trial: TrialRecord, result: dict) -> None:
        with self._lock:
            self.steps.pop(trial.trial_id, None)
        value = f" {self.metric} {trial.value:.4g}" if trial.value is not None else ""
        error = f"  ({trial.error})" if trial.error else ""
        self._line(
            f"{trial.trial_id} {trial.state.lower()} at step {trial.steps}{value}{error}  | {self._counts()}"
        )

    def end(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._view is not None:
            self._view.stop()
            self._view = None
        self._line(f"{'stopped' if self.record.unfinished() else 'done'}  | {self._counts()}")

    # -- between evaluations ------------------------------------------------------------------------

    def _follow(self, pool) -> None:
        import ray

        poll = 1.0 if self.live else min(self.every_s, 2.0)
        last_line = time.monotonic()
        while not self._stop.wait(poll):
            try:
                snapshot = ray.get(pool.snapshot.remote(), timeout=10)
            except Exception:  # the pool is busy or gone: the events still say what happens
                continue
            with self._lock:
                self.steps = snapshot
            if self._view is not None:
                self._view.update(self._table())
                continue
            self.phase_lines(snapshot, time.time())
            if time.monotonic() - last_line >= self.every_s - poll:  # never more than every_s apart
                last_line = time.monotonic()
                for slot, values in sorted(snapshot.items()):
                    self._line(f"{slot} {_where(values)}{self._objective(slot)}")

    def phase_lines(self, snapshot: dict[str, dict], now: float) -> None:
        """Plain output: one line when a trial's worker group has been in a start-up phase for
        ``phase_after_s`` (a phase that only advances, ``indexing the data 3/9``, is said once)."""
        for slot, values in sorted(snapshot.items()):
            phase = values.get("phase")
            said = values.get("group", slot)  # a group's phase is said once, before and after its trial
            if phase is None or self._said.get(said) == phase_name(phase):
                continue
            if now - values["since"] >= self.phase_after_s:
                self._said[said] = phase_name(phase)
                self._line(f"{slot} {phase}")

    def _objective(self, slot: str) -> str:
        trial = self.record.trials.get(slot)
        if trial is None or trial.last_value is None:
            return ""
        return f" · {self.metric} {trial.last_value:.4g} at step {trial.steps}"

    def _table(self):
        from rich.table import Table

        finished = len(self.record.finished())
        best = self.record.best()
        best_text = (
            f"best {best.trial_id} {self.metric} {best.value:.4g}" if best else "no finished trial yet"
        )
        table = Table(title=f"{finished}/{self.total} trials done · {best_text}", title_justify="left")
        for column in ("trial", "step", "samples/s", "ETA", "last report", f"latest {self.metric}", "params"):
            table.add_column(column)
        with self._lock:
            steps = dict(self.steps)
        for name, values in sorted(steps.items()):
            if name not in self.record.trials:  # a worker group starting ahead of its trial
                table.add_row(name, _where(values, steps_only=True), "-", "-", "-", "")
        for trial in sorted(self.record.unfinished(), key=lambda t: t.trial_id):
            values = steps.get(trial.trial_id, {})
            step = _where(values, steps_only=True) if values else "queued"
            rate = values.get("samples_per_s")
            latest = f"{trial.last_value:.4g} @ {trial.steps}" if trial.last_value is not None else "-"
            table.add_row(
                trial.trial_id,
                step,
                f"{rate:.2f}" if rate else "-",
                _eta(values) or "-",
                _age(values) or "-",
                latest,
                short_params(trial.params),
            )
        return table

    def _counts(self) -> str:
        states = [t.state for t in self.record.trials.values()]
        best = self.record.best()
        best_text = f"best {best.trial_id} {best.value:.4g}" if best else "best -"
        S = TrialState
        return (
            f"running {states.count(S.RUNNING)} · complete {states.count(S.COMPLETE)} · "
            f"pruned {states.count(S.PRUNED)} · "
            f"failed {states.count(S.FAILED) + states.count(S.INFEASIBLE)} · "
            f"{best_text}"
        )

    def _line(self, text: str) -> None:
        elapsed = int(time.monotonic() - self.start)
        line = f"[{elapsed // 60:02d}:{elapsed % 60:02d}] {text}"
        if self._view is not None:
            self._view.console.print(line, highlight=False, markup=False, soft_wrap=True)
        else:
            self.log(line)


@contextmanager
def saying(log: Callable[[str], None] | None, what: str, every_s: float | None = None):
    """Say ``what (N s)`` every ``every_s`` seconds (``RAYLORA_PROGRESS_EVERY_S``) while the block runs, so
    a slow step of the driver's own (Ray's start) is never silent; ``log`` None says nothing."""
    every_s = environment.progress_every_s() if every_s is None else every_s
    done, start = threading.Event(), time.monotonic()

    def say() -> None:
        while not done.wait(max(every_s, 1.0)):
            log(f"{what} ({int(time.monotonic() - start)} s)")

    if log is not None:
        threading.Thread(target=say, daemon=True, name="raylora-saying").start()
    try:
        yield
    finally:
        done.set()


def _where(values: dict, steps_only: bool = False) -> str:
    """``step 12/40 · ...`` for a training trial, ``loading the model (for 14 s)`` while it starts."""
    if "step" not in values:
        return f"{values['phase']} (for {max(0, int(time.time() - values['since']))} s)"
    return f"{values['step']}/{values['max_steps']}" if steps_only else _step_text(values)


def _step_text(values: dict) -> str:
    parts = [f"step {values['step']}/{values['max_steps']}"]
    if values.get("samples_per_s"):
        parts.append(f"{values['samples_per_s']:.2f} samples/s")
    if eta := _eta(values):
        parts.append(f"eta {eta}")
    if values.get("train/loss") is not None:
        parts.append(f"train/loss {values['train/loss']:.4g}")
    if age := _age(values):
        parts.append(f"last report {age} ago")
    return " · ".join(parts)


def _age(values: dict) -> str | None:
    """How long ago the trial's workers last reported (a step or an evaluation), as m:ss."""
    seconds = values.get("heard_s")
    if seconds is None:
        return None
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


def _eta(values: dict) -> str | None:
    """Time left for a trial at its current rate (steps left × seconds per step), as m:ss."""
    rate, step = values.get("steps_per_s"), values.get("step")
    if not rate or step is None:
        return None
    seconds = int((values["max_steps"] - step) / rate)
    return f"{seconds // 60}:{seconds % 60:02d}"
