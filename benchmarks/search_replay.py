"""Search replay: raylora's own sampler and scheduler driven against a table of learning curves.

Nothing is trained. For every seed and method the replay builds a spec (the quickstart spec with the
table's search space, steps and evaluation points), then runs what ``raylora search`` runs on it:
:class:`~raylora.study.optuna_searcher.StudySearcher` over the Optuna sampler ``open_optuna`` builds (with
``study.enqueue``, warm start, objectives and constraints as the spec says) and the Tune scheduler
:func:`raylora.study.stopping.scheduler` builds (Tune's own ``ASHAScheduler`` object on one objective).
A sampled configuration gets the curve of its nearest neighbour in the table (standardized transformed
parameters: log learning rate, log rank, ...); N simulated workers run trials concurrently, each
evaluation interval costing the table's seconds for that run divided by its evaluations.

    python benchmarks/search_replay.py --table surestop --seeds 50 --first-seed 0 --workers 4 --json
    python benchmarks/search_replay.py --table surestop --rows 200 --split-seed 7 ...   # a re-split

Methods (each seed gives every method random search's accelerator-hours as its budget):
  raylora         the spec's defaults: TPE and the default scheduler (ASHA, grace ``eval_every``, reduction 2)
  random          random sampler, no stopping, ``--trials`` trials (the reference)
  asha            plain ASHA written out: TPE + ASHA, grace = ``eval_every``, reduction 2, no bound (the
                  defaults before issue 27, and still the defaults: the replay showed each alternative
                  costlier)
  hyperband       random sampler + Tune's asynchronous Hyperband (3 brackets, reduction 3)
  topk_one_epoch  random sampler; ``--trials`` configurations for the first ~10% of training, the best
                  quarter trained to the end
  raylora_grace_auto  TPE + ASHA with ``grace_steps: auto`` (15% of max_steps), a protective option
  raylora_bound   TPE + ASHA with ``bound: largest_gain`` (BoundedASHA: a stop must also pass the
                  report's could-still-win rule), the cheaper protective option
  asha_promotion  a what-if, not something ``raylora search`` runs: TPE + ASHA as Li et al. (2020) wrote
                  it (:class:`PromotionASHA`): a trial pauses at each rung, and a free worker resumes the
                  best paused trial in the top 1/reduction of its rung (highest rung first) or starts a
                  new one; a trial may be promoted long after it paused, as its rung fills
  asha_promotion_neighbours  the same what-if, and a paused trial is promotable too when the finished
                  configuration nearest its own finished at least as well as the finished trials'
                  median (:class:`Neighbours`): it judges a slow starter by where it sits, not only by
                  how it started

``--methods raylora_bound,asha`` replays only those (and random search, which sets the budget).

Metrics: ``compute_to_random_best`` (accelerator-hours until a completed trial is as good as random
search's final best, over random search's hours; null when never), ``top1pct_stopped`` (of the trials
whose table row is in the table's top 1%, the fraction stopped early), regret against budget, and the
table's Spearman between each rung and the final values.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import statistics
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks" / "data"
SURESTOP_SPACE = {
    "training.learning_rate.llm": {"loguniform": [1e-5, 1e-3]},
    "training.lora.r": {"choice": [4, 8, 16, 32]},
    "training.per_device_train_batch_size": {"choice": [8, 16, 32, 64]},
    "training.warmup_steps": {"int": [0, 75]},
    "training.weight_decay": {"loguniform": [1e-5, 1e-1]},
    "training.lora.dropout": {"uniform": [0.0, 0.3]},
}
BUDGET_GRID = [round(0.05 * k, 2) for k in range(1, 21)]  # fractions of random search's hours
INDEPENDENT = 100_003  # the seed offset of every method but the reference random search
METHODS = (
    "raylora",
    "random",
    "asha",
    "hyperband",
    "topk_one_epoch",
    "raylora_grace_auto",
    "raylora_bound",
    "asha_promotion",
    "asha_promotion_neighbours",
)
TPE_METHODS = tuple(m for m in METHODS if m not in ("random", "hyperband", "topk_one_epoch"))


@dataclass
class Table:
    """Learning curves: one row per configuration (``params`` as spec paths), lower values better."""

    name: str
    params: list[dict]
    curves: np.ndarray  # (rows, evaluations)
    steps: list[int]
    seconds: np.ndarray  # accelerator-seconds of each full run
    search: dict
    metric: str = "eval/loss"
    final: np.ndarray = field(init=False)

    def __post_init__(self):
        self.final = self.curves.min(axis=1)  # what a study records: the best evaluation's value
        self._columns = [p for p in self.search]
        self._x = np.array([self._encode(p) for p in self.params], dtype=float)
        self._mean, self._std = self._x.mean(0), self._x.std(0)
        self._std[self._std == 0] = 1.0
        self._z = (self._x - self._mean) / self._std

    def _encode(self, params: dict) -> list[float]:
        return [x for path, raw in self.search.items() for x in _transform(raw, _sampled(raw, params, path))]

    def nearest(self, params: dict, used: set[int] = frozenset()) -> int:
        """The row nearest ``params`` on standardized transformed parameters, among rows not ``used`` yet.

        Each row is one training run with its own seed: a second trial mapped to the same row would get
        that run's curve again, noise and all, and a sampler that keeps proposing one point would be
        told the same number forever (TPE then collapses onto it). A new trial gets a new run: the
        nearest unused one (the nearest of all once every row is used).
        """
        z = (np.array(self._encode(params)) - self._mean) / self._std
        distance = ((self._z - z) ** 2).sum(axis=1)
        if len(used) < len(distance):
            distance[list(used)] = np.inf
        row = int(np.argmin(distance))
        return row

    def subset(self, rows: list[int]) -> Table:
        return Table(
            self.name,
            [self.params[r] for r in rows],
            self.curves[rows],
            self.steps,
            self.seconds[rows],
            self.search,
            self.metric,
        )


def _sampled(raw: dict, params: dict, path: str):
    """``params``' value of ``path``; a conditional parameter not sampled (vision's rate for an LLM-only
    scope) counts as the middle of its range."""
    value = params.get(path)
    return _middle(raw) if value is None else value


def _options(raw: dict) -> list:
    return raw.get("choice") or raw.get("loguniform") or raw.get("uniform") or raw.get("int")


def _categorical(raw: dict) -> bool:
    return "choice" in raw and not all(isinstance(v, (int, float)) for v in raw["choice"])


def _transform(raw: dict, value) -> list[float]:
    """One searched parameter's coordinates: one-hot for categories; the log for rates, ranks and batch
    sizes (they act multiplicatively; not for a choice that includes 0); else the value."""
    if _categorical(raw):
        return [float(value == option) for option in raw["choice"]]
    if "loguniform" in raw or ("choice" in raw and min(_options(raw)) > 0):
        return [math.log(float(value))]
    return [float(value)]


def _middle(raw: dict):
    """The middle of a search range on its own scale (what an unsampled conditional parameter counts as)."""
    if "choice" in raw:
        return raw["choice"][len(raw["choice"]) // 2]
    kind = next(k for k in ("loguniform", "uniform", "int") if k in raw)
    low, high = raw[kind]
    return math.sqrt(low * high) if kind == "loguniform" else (low + high) / 2


def load_surestop(path: Path = DATA / "surestop_cc03c_pool.json") -> Table:
    pool = json.loads(path.read_text())
    steps, params = pool["eval_steps"], []
    for run in pool["runs"]:
        c = run["config"]
        params.append(
            {
                "training.learning_rate.llm": c["lr"],
                "training.lora.r": c["rank"],
                "training.per_device_train_batch_size": c["batch"],
                "training.warmup_steps": round(c["warmup_frac"] * steps[-1]),
                "training.weight_decay": c["weight_decay"],
                "training.lora.dropout": c["lora_dropout"],
            }
        )
    curves = np.array([run["val_ce"] for run in pool["runs"]])
    seconds = np.array([run["wall_clock_s"] for run in pool["runs"]])
    return Table("surestop", params, curves, steps, seconds, SURESTOP_SPACE)


def load_tiny(path: Path = DATA / "tiny_quickstart_table.json") -> Table:
    table = json.loads(path.read_text())
    rows = table["rows"]
    return Table(
        "tiny",
        [r["params"] for r in rows],
        np.array([r["eval_loss"] for r in rows]),
        table["eval_steps"],
        np.array([r["seconds"] for r in rows]),
        table["search"],
    )


def spec_for(table: Table, method: str, seed: int, trials: int, workers: int):
    """The spec ``raylora search`` would get for this method: quickstart, reshaped to the table."""
    import yaml

    from raylora.spec.load import build

    data = yaml.safe_load((ROOT / "search_spaces" / "quickstart.yaml").read_text())
    data["search"] = table.search
    every = table.steps[1] - table.steps[0]
    data["training"].update({"max_steps": table.steps[-1], "eval_every": every, "click_eval_samples": 0})
    sampler = "tpe" if method in TPE_METHODS else "random"
    if method != "random":  # independent of the reference search's draws, as a user's study would be
        seed += INDEPENDENT
    plain_asha = {"grace_steps": every, "reduction_factor": 2, "bound": "none"}
    scheduler = {
        "raylora": {},
        "asha": plain_asha,
        "asha_promotion": plain_asha,  # its rungs; simulate_promotion pauses and resumes at them
        "asha_promotion_neighbours": plain_asha,
        "raylora_grace_auto": {"grace_steps": "auto"},
        "raylora_bound": {"bound": "largest_gain"},
    }.get(method, {})
    data["study"].update(
        {
            "num_trials": trials,
            "max_concurrent_trials": workers,
            "sampler": {"type": sampler, "seed": seed},
            "scheduler": {"type": "fifo"} if method == "random" else scheduler,
        }
    )
    return build(data)


class _Record:
    """A StudyRecord that keeps nothing on disk (the replay saves after every report)."""

    def __new__(cls, spec):
        from raylora.study import optuna_searcher

        record = optuna_searcher.StudyRecord(Path("/nonexistent"), "replay", *_objective(spec))
        record.goals = [(o.metric, o.mode) for o in spec.study.goals]
        record.limits = spec.study.constraint_limits()
        record.save = lambda: None
        return record


def _objective(spec):
    return spec.study.objective.metric, spec.study.objective.mode


def _scheduler(spec, method: str):
    from raylora.study import stopping

    if method != "hyperband":
        return stopping.scheduler(spec, spec.training.max_steps)
    from ray.tune.schedulers import AsyncHyperBandScheduler

    return AsyncHyperBandScheduler(
        time_attr="step",
        metric=spec.study.objective.metric,
        mode="min",
        max_t=spec.training.max_steps - 1,
        grace_period=spec.training.eval_every,
        reduction_factor=3,
        brackets=3,
        stop_last_trials=False,
    )


def _searcher(spec):
    """The study's searcher over the Optuna sampler raylora builds, warm-started as the spec says."""
    import optuna

    from raylora.study import optuna_searcher, warm

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    directions = ["minimize" if o.mode == "min" else "maximize" for o in spec.study.goals]
    study = optuna.create_study(directions=directions)
    study.sampler = optuna_searcher._sampler(spec, seed=spec.study.sampler.seed)
    warm.warm_start(study, spec, log=lambda message: None)
    return optuna_searcher.StudySearcher(spec, study, _Record(spec), [])


@dataclass
class Run:
    """One simulated study: completions as (accelerator-hours so far, value), and what was stopped."""

    completions: list[tuple[float, float]] = field(default_factory=list)
    hours: float = 0.0
    rows: list[tuple[int, bool]] = field(default_factory=list)  # (table row, stopped early)


def simulate(
    table: Table, spec, method: str, workers: int, budget_h: float | None, trials: int, start_s: float = 0.0
) -> Run:
    """Run the study's searcher and scheduler over the table with ``workers`` simulated accelerators; each
    trial's start costs ``start_s`` accelerator-seconds before its first step."""
    np.random.seed(spec.study.sampler.seed)  # Tune's Hyperband picks brackets with numpy's global RNG
    searcher = _searcher(spec)
    scheduler = _scheduler(spec, method)
    metric, evals = spec.study.objective.metric, len(table.steps)
    run, events, running, used = (
        Run(),
        [],
        {},
        set(),
    )  # running: trial id → (row, start of its current interval)
    consumed, launched, now = 0.0, 0, 0.0

    def spent(at: float) -> float:
        return consumed + sum(at - start for _, start in running.values())

    def launch(at: float) -> None:
        nonlocal launched
        trial_id = f"r{launched:04d}"
        launched += 1
        config = searcher.suggest(trial_id)
        row = table.nearest(config["params"], used)
        used.add(row)
        scheduler.on_trial_add(None, types.SimpleNamespace(trial_id=trial_id))
        running[trial_id] = (row, at)
        heapq.heappush(events, (at + start_s + table.seconds[row] / evals, trial_id, 0))

    def may_launch() -> bool:
        if budget_h is None:
            return launched < trials
        return spent(now) / 3600 < budget_h

    for _ in range(workers):
        if may_launch():
            launch(0.0)
    while events:
        now, trial_id, index = heapq.heappop(events)
        row, start = running[trial_id]
        consumed += now - start
        result = {"step": table.steps[index], metric: float(table.curves[row, index])}
        trial = types.SimpleNamespace(trial_id=trial_id)
        last = index == evals - 1
        action = "CONTINUE" if last else scheduler.on_trial_result(None, trial, result)
        if last or action == "STOP":
            del running[trial_id]
            if last:
                scheduler.on_trial_complete(None, trial, result)
            searcher.on_trial_result(trial_id, result)
            searcher.on_trial_complete(trial_id, result)
            run.rows.append((row, not last))
            if last:
                run.completions.append((spent(now) / 3600, float(table.final[row])))
            if may_launch():
                launch(now)
            continue
        searcher.on_trial_result(trial_id, result)
        running[trial_id] = (row, now)
        heapq.heappush(events, (now + table.seconds[row] / evals, trial_id, index + 1))
    run.hours = consumed / 3600
    return run


class PromotionASHA:
    """ASHA's promotion rule as Li et al. (2020, Algorithm 2) state it: a trial that reaches a rung pauses
    there, and a free worker takes the best trial not yet promoted from the highest rung where it is among
    the top ``len(rung) // factor`` (then, best first, any other that ``promotable`` says may still be
    good); with none, it starts a new trial. Tune's ``ASHAScheduler`` (what raylora runs) decides once,
    as a trial arrives, so the first arrivals at a rung go on unopposed and a trial stopped early never
    comes back; here a trial waits for its rung to fill."""

    def __init__(self, rungs: int, factor: float, promotable=None):
        self.factor = factor
        self.promotable = promotable or (lambda trial_id: False)  # beyond the top (Neighbours)
        self.recorded: list[dict[str, float]] = [{} for _ in range(rungs)]  # per rung: trial -> value
        self.promoted: list[set[str]] = [set() for _ in range(rungs)]

    def record(self, trial_id: str, rung: int, value: float) -> None:
        """``trial_id`` reached rung index ``rung`` with ``value`` (lower is better) and pauses there."""
        self.recorded[rung][trial_id] = value

    def promotion(self) -> tuple[str, int] | None:
        """The trial to resume and the rung it leaves (marked promoted), or None: start a new trial."""
        for rung in reversed(range(len(self.recorded))):
            values = self.recorded[rung]
            ranked = sorted(values, key=values.get)
            top = ranked[: int(len(values) // self.factor)]
            top += [t for t in ranked[len(top) :] if self.promotable(t)]
            waiting = [t for t in top if t not in self.promoted[rung]]
            if waiting:
                self.promoted[rung].add(waiting[0])
                return waiting[0], rung
        return None


class Neighbours:
    """Whether a paused trial may still be good, judged by its configuration: the finished trial nearest
    it in the search space (each parameter on its own scale, log for rates, ranks and batch sizes, scaled
    to its range) finished at least as well as the median of the finished trials. Needs two finished.

    A slow starter (long warmup, large batch) ranks low at the first rungs however well it would end;
    a configuration beside one that ended well is promotable anyway."""

    def __init__(self, search: dict):
        self.search = search
        self._where: dict[str, np.ndarray] = {}
        self._finished: dict[str, float] = {}

    def started(self, trial_id: str, params: dict) -> None:
        self._where[trial_id] = np.array(_unit(self.search, params))

    def finished(self, trial_id: str, value: float) -> None:
        self._finished[trial_id] = value

    def __call__(self, trial_id: str) -> bool:
        if len(self._finished) < 2 or trial_id in self._finished:
            return False
        here = self._where[trial_id]
        nearest = min(self._finished, key=lambda t: float(((self._where[t] - here) ** 2).sum()))
        return self._finished[nearest] <= float(np.median(list(self._finished.values())))


def _unit(search: dict, params: dict) -> list[float]:
    """``params``' coordinates (:func:`_transform`) with each numeric one scaled from its range to [0, 1]."""
    out: list[float] = []
    for path, raw in search.items():
        x = _transform(raw, _sampled(raw, params, path))
        if not _categorical(raw):
            [low], [high] = (_transform(raw, end(_options(raw))) for end in (min, max))
            x = [(x[0] - low) / (high - low) if high > low else 0.0]
        out += x
    return out


def simulate_promotion(
    table: Table,
    spec,
    workers: int,
    budget_h: float | None,
    trials: int,
    neighbours: bool = False,
    start_s: float = 0.0,
) -> Run:
    """The study's searcher over the table with :class:`PromotionASHA` on ``workers`` accelerators: a
    trial resumes where it paused (from its checkpoint), so promotion costs only the steps it adds.

    Optuna hears a trial's reports until it first pauses, and is told PRUNED then (what the study tells it
    for a stopped trial); one promoted later and finished is added as COMPLETE with its final value.
    Without ``budget_h``, ``trials`` new trials are started and every promotion is run out. With
    ``neighbours``, :class:`Neighbours` also makes paused trials promotable. Every start and every resume
    costs ``start_s`` accelerator-seconds before its first step."""
    import optuna

    from raylora.study import stopping

    searcher = _searcher(spec)
    study = searcher.study
    metric, evals = spec.study.objective.metric, len(table.steps)
    grace = stopping.grace_steps(spec, spec.training.max_steps)
    factor = spec.study.scheduler.reduction_factor
    marks = stopping.milestones(grace, table.steps[-1] - 1, factor)
    ends = [next(i for i, step in enumerate(table.steps) if step >= m) for m in marks] + [evals - 1]
    near = Neighbours(table.search) if neighbours else None
    asha = PromotionASHA(len(marks), factor, near)
    run, events, running, used = Run(), [], {}, set()
    rows: dict[str, int] = {}
    paused: dict[str, optuna.trial.FrozenTrial] = {}  # told PRUNED at their first pause
    finished: set[str] = set()
    consumed, launched = 0.0, 0

    def spent(at: float) -> float:
        return consumed + sum(at - start for start in running.values())

    def next_job(at: float) -> bool:
        nonlocal launched
        promotion = asha.promotion()
        if promotion:
            trial_id, rung = promotion
            first, last = ends[rung] + 1, ends[rung + 1]
        elif budget_h is None and launched >= trials:
            return False
        else:
            trial_id, first, last = f"r{launched:04d}", 0, ends[0]
            launched += 1
            params = searcher.suggest(trial_id)["params"]
            rows[trial_id] = table.nearest(params, used)
            used.add(rows[trial_id])
            if near:
                near.started(trial_id, params)
        running[trial_id] = at
        seconds = table.seconds[rows[trial_id]] * (last - first + 1) / evals
        heapq.heappush(events, (at + start_s + seconds, trial_id, first, last))
        return True

    def may_start(at: float) -> bool:
        return budget_h is None or spent(at) / 3600 < budget_h

    for _ in range(workers):
        if not next_job(0.0):
            break
    while events:
        now, trial_id, first, last = heapq.heappop(events)
        consumed += now - running.pop(trial_id)
        row = rows[trial_id]
        result = {"step": table.steps[last], metric: float(table.curves[row, last])}
        if trial_id not in paused and trial_id not in finished:
            for i in range(first, last):
                searcher.on_trial_result(
                    trial_id, {"step": table.steps[i], metric: float(table.curves[row, i])}
                )
        if last == evals - 1:
            run.completions.append((spent(now) / 3600, float(table.final[row])))
            if near:
                near.finished(trial_id, float(table.final[row]))
            if trial_id in paused:
                frozen = paused.pop(trial_id)
                study.add_trial(
                    optuna.trial.create_trial(
                        params=frozen.params,
                        distributions=frozen.distributions,
                        value=float(table.final[row]),
                    )
                )
            else:
                searcher.on_trial_complete(trial_id, result)
            finished.add(trial_id)
        else:
            asha.record(trial_id, ends.index(last), float(table.curves[row, last]))
            if trial_id not in paused:
                number = searcher._trials[trial_id][0].number
                searcher.on_trial_complete(trial_id, result)
                paused[trial_id] = study.trials[number]
        if may_start(now):
            next_job(now)
    run.hours = consumed / 3600
    run.rows = [(row, trial_id not in finished) for trial_id, row in rows.items()]
    return run


def top_k_one_epoch(table: Table, spec, trials: int, workers: int, start_s: float = 0.0) -> Run:
    """Screen ``trials`` random configurations up to the first evaluation at >= 10% of training, then
    train the best quarter to the end on ``workers`` accelerators, best screened first (resumed from the
    screen's checkpoint; each start and resume costs ``start_s`` accelerator-seconds)."""
    import optuna

    from raylora.spec import space

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=spec.study.sampler.seed))
    sample, evals = space.define_by_run(spec), len(table.steps)
    screen = next(i for i, s in enumerate(table.steps) if s >= 0.1 * table.steps[-1])
    rows = []
    for _ in range(trials):
        trial = study.ask()
        sample(trial)
        rows.append(table.nearest(space.decode(spec, trial.params), set(rows)))
        study.tell(trial, 0.0)
    run = Run()
    screened = sum(start_s + table.seconds[r] * (screen + 1) / evals for r in rows)
    keep = sorted(range(len(rows)), key=lambda i: table.curves[rows[i], screen])[: max(1, trials // 4)]
    run.rows = [(r, i not in keep) for i, r in enumerate(rows)]
    free, spans = [0.0] * workers, []  # each kept trial continues on the first free accelerator
    for i in keep:
        start = heapq.heappop(free)
        end = start + start_s + table.seconds[rows[i]] * (evals - screen - 1) / evals
        spans.append((start, end, float(table.final[rows[i]])))
        heapq.heappush(free, end)
    for _, end, value in sorted(spans, key=lambda s: s[1]):
        spent = screened + sum(min(end, e) - s for s, e, _ in spans if s < end)
        run.completions.append((spent / 3600, value))
    run.hours = (screened + sum(e - s for s, e, _ in spans)) / 3600
    return run


def best_at(run: Run, hours: float) -> float:
    """The best completed value within ``hours`` (inf before the first completion)."""
    return min((v for h, v in run.completions if h <= hours + 1e-12), default=math.inf)


def hours_to_reach(run: Run, target: float) -> float:
    return min((h for h, v in run.completions if v <= target + 1e-12), default=math.inf)


def replay_seed(
    table: Table, seed: int, workers: int, trials: int, methods=METHODS, start_s: float = 0.0
) -> dict:
    """Every method (or those of ``methods``) on one seed; random search sets the budget."""
    spec = spec_for(table, "random", seed, trials, workers)
    runs = {"random": simulate(table, spec, "random", workers, None, trials, start_s)}
    budget = runs["random"].hours
    for method in ("raylora", "asha", "hyperband", "raylora_grace_auto", "raylora_bound"):
        if method not in methods:
            continue
        spec = spec_for(table, method, seed, trials, workers)
        defaults = spec_for(table, "raylora", seed, trials, workers)
        # A TPE method whose scheduler is the defaults' replays the same study: reuse it.
        same = method in TPE_METHODS[1:] and _name(spec) == _name(defaults)
        runs[method] = (
            runs["raylora"]
            if same and "raylora" in runs
            else simulate(table, spec, method, workers, budget, trials, start_s)
        )
    for method in ("asha_promotion", "asha_promotion_neighbours"):
        if method in methods:
            spec = spec_for(table, method, seed, trials, workers)
            near = method.endswith("neighbours")
            runs[method] = simulate_promotion(table, spec, workers, budget, trials, near, start_s)
    if "topk_one_epoch" in methods:
        spec = spec_for(table, "topk_one_epoch", seed, trials, workers)
        runs["topk_one_epoch"] = top_k_one_epoch(table, spec, trials, workers, start_s)
    target = best_at(runs["random"], math.inf)
    top = set(np.argsort(table.final)[: max(1, round(0.01 * len(table.final)))].tolist())
    out = {}
    for method, run in runs.items():
        sampled = [stopped for row, stopped in run.rows if row in top]
        out[method] = {
            "compute_to_random_best": hours_to_reach(run, target) / budget,
            "top1pct_sampled": len(sampled),
            "top1pct_stopped": sum(sampled),
            "regret": [best_at(run, f * budget) - float(table.final.min()) for f in BUDGET_GRID],
            "hours": run.hours / budget,
            "trials": len(run.rows),
        }
    return out


def rung_agreement(table: Table, spec) -> dict[str, float]:
    """The table's Spearman between each rung of the scheduler raylora builds and the final values."""
    from raylora.record import agreement
    from raylora.study import stopping

    grace = stopping.grace_steps(spec, spec.training.max_steps)
    rungs = stopping.milestones(grace, spec.training.max_steps - 1, spec.study.scheduler.reduction_factor)
    out = {}
    for rung in rungs:
        index = next(i for i, s in enumerate(table.steps) if s >= rung)
        out[str(table.steps[index])] = round(agreement.spearman(table.curves[:, index], table.final), 4)
    return out


def _median(values: list[float]) -> float | None:
    m = statistics.median(values)
    return None if math.isinf(m) else round(m, 4)


def summarize(table: Table, per_seed: list[dict], workers: int, trials: int, seeds: list[int]) -> dict:
    methods = {}
    for method in [m for m in METHODS if m in per_seed[0]]:
        rows = [s[method] for s in per_seed]
        sampled, stopped = sum(r["top1pct_sampled"] for r in rows), sum(r["top1pct_stopped"] for r in rows)
        regret = np.array([r["regret"] for r in rows])
        methods[method] = {
            "compute_to_random_best": _median([r["compute_to_random_best"] for r in rows]),
            "reached_random_best": round(
                float(np.mean([r["compute_to_random_best"] < math.inf for r in rows])), 3
            ),
            "top1pct_stopped": round(stopped / sampled, 4) if sampled else None,
            "top1pct_sampled": sampled,
            "top1pct_stopped_upper95": _upper95(stopped, sampled),
            "median_regret_at_budget": {
                str(f): _finite(np.median(regret[:, i])) for i, f in enumerate(BUDGET_GRID)
            },
            "median_hours_used": _median([r["hours"] for r in rows]),
            "median_trials": _median([r["trials"] for r in rows]),
        }
    ours, topk = (
        methods.get(m, {}).get("median_regret_at_budget", {}) for m in ("raylora", "topk_one_epoch")
    )
    worse = [f for f in ours if f in topk and _worse(ours[f], topk[f])]
    spec = spec_for(table, "raylora", seeds[0], trials, workers)
    return {
        "table": table.name,
        "rows": len(table.final),
        "seeds": seeds,
        "workers": workers,
        "trials": trials,
        "raylora_scheduler": _name(spec),
        "rung_final_spearman": rung_agreement(table, spec),
        "methods": methods,
        "raylora_worse_than_topk_at_any_budget": bool(worse) if ours and topk else None,
        "raylora_worse_than_topk_at": worse,
    }


def _upper95(k: int, n: int) -> float | None:
    """One-sided 95% Clopper-Pearson upper bound on a rate seen k times in n."""
    from scipy.stats import beta

    return None if n == 0 else (1.0 if k == n else round(float(beta.ppf(0.95, k + 1, n - k)), 4))


def _name(spec) -> str:
    from raylora.study import stopping

    return stopping.scheduler_name(spec, spec.training.max_steps)


def _finite(x: float) -> float | None:
    return None if math.isinf(x) else round(float(x), 6)


def _worse(ours: float | None, theirs: float | None) -> bool:
    if theirs is None:
        return False
    return ours is None or ours > theirs + 1e-12


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", choices=("surestop", "tiny"), default="surestop")
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument(
        "--trials", type=int, help="random search's trials, the budget (default: 32 surestop, 8 tiny)"
    )
    parser.add_argument("--rows", type=int, default=0, help="replay on a random sub-table of this many rows")
    parser.add_argument("--split-seed", type=int, default=0, help="which sub-table --rows draws")
    parser.add_argument("--methods", help="only these methods (comma-separated; random always runs)")
    parser.add_argument(
        "--start-seconds",
        type=float,
        default=0.0,
        help="accelerator-seconds each trial start or resume costs before its first step (default 0)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    table = load_surestop() if args.table == "surestop" else load_tiny()
    if args.rows:
        rng = np.random.default_rng(args.split_seed)
        table = table.subset(sorted(rng.choice(len(table.final), args.rows, replace=False).tolist()))
    args.trials = args.trials or (32 if args.table == "surestop" else 8)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    methods = ("random", *args.methods.split(",")) if args.methods else METHODS
    if unknown := [m for m in methods if m not in METHODS]:
        parser.error(f"--methods: unknown {', '.join(unknown)} (allowed: {', '.join(METHODS)})")
    per_seed = [replay_seed(table, s, args.workers, args.trials, methods, args.start_seconds) for s in seeds]
    out = summarize(table, per_seed, args.workers, args.trials, seeds)
    if args.start_seconds:
        out["start_seconds"] = args.start_seconds
    print(json.dumps(out, indent=None if args.json else 2))
    return out


if __name__ == "__main__":
    sys.exit(main() and 0)
