"""Round 3 of faults, rule by rule: a non-finite value never wins and never reaches summary.json, one rule
picks the best, a checkpoint is checked by its manifest before it is trusted, and an infrastructure fault
is never a trial's verdict. Fast: no Ray, real files and real pyarrow filesystems."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raylora.record.states import TrialState
from raylora.record.trials import StudyRecord, TrialRecord, best_of

VALUES = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, 1.0]),
)
STATES = st.sampled_from(list(TrialState))


def _reference_best(trials: list[TrialRecord], mode: str) -> TrialRecord | None:
    """Written apart from best_of: sort the qualifying trials by hand, ties to the smaller slot number."""
    rows = []
    for t in trials:
        v = t.value
        if t.state != TrialState.COMPLETE or v is None or v != v or v in (math.inf, -math.inf):
            continue
        rows.append((v if mode == "min" else -v, int(t.trial_id[1:]), t))
    rows.sort(key=lambda r: (r[0], r[1]))
    return rows[0][2] if rows else None


@settings(max_examples=300)
@given(
    st.lists(st.tuples(STATES, VALUES), max_size=12),
    st.sampled_from(["min", "max"]),
    st.randoms(use_true_random=False),
)
def test_the_best_is_the_finite_extreme_of_the_complete_trials_whatever_the_order(rows, mode, rnd):
    trials = [TrialRecord(f"t{i}", state=s, value=v) for i, (s, v) in enumerate(rows)]
    rnd.shuffle(trials)  # the answer may not depend on the order trials were recorded in
    record = StudyRecord(None, "s", "eval/loss", mode)
    record.trials = {t.trial_id: t for t in trials}
    assert record.best() is _reference_best(trials, mode)
    ranked = record.ranked()
    if record.best() is not None:
        assert ranked[0] is record.best()  # the leaderboard's first row is the best


def test_best_of_ranks_nan_and_infinities_out_and_ties_go_to_the_lowest_trial_id():
    rows = [("t10", 1.0), ("t9", 1.0), ("t1", math.nan), ("t2", -math.inf), ("t3", None)]
    assert best_of(rows, "min", lambda r: r[1], lambda r: r[0]) == ("t9", 1.0)
    assert best_of(rows[2:], "max", lambda r: r[1], lambda r: r[0]) is None


def test_promote_picks_what_the_summary_picks_and_never_a_nan_run():
    from raylora.tracking.promote import select_best

    def run(trial_id, value, state="COMPLETE"):
        return {
            "tags": {"raylora.role": "trial", "raylora.state": state, "raylora.trial_id": trial_id},
            "metrics": {"best_eval/loss": value},
            "status": "FINISHED",
            "run_id": trial_id,
        }

    runs = [run("t000", math.nan), run("t001", 0.5), run("t002", 0.5), run("t003", 0.1, "PRUNED")]
    assert select_best(runs, "eval/loss", "min")["run_id"] == "t001"


def test_summary_json_is_strict_json_with_nan_and_infinity_anywhere(tmp_path):
    record = StudyRecord(tmp_path, "s", "eval/loss", "min")
    record.trials["t000"] = TrialRecord(
        "t000",
        state=TrialState.COMPLETE,
        value=math.nan,
        last_value=math.inf,
        cost={"cost/peak_mem_gb": -math.inf},
        values={"eval/loss": math.nan},
    )
    record.trials["t001"] = TrialRecord("t001", state=TrialState.COMPLETE, value=0.5)
    record.save()
    text = (tmp_path / "summary.json").read_text()

    def refuse(token):
        raise AssertionError(f"non-standard JSON token {token}")

    summary = json.loads(text, parse_constant=refuse)
    assert summary["best_trial"]["trial_id"] == "t001"
    t0 = summary["trials"][0]
    assert t0["value"] is None and t0["last_value"] is None and t0["cost"]["cost/peak_mem_gb"] is None
    assert StudyRecord.open_summary(tmp_path / "summary.json")["t000"].value is None


# -- a checkpoint is checked before it is trusted ----------------------------------------------------


def _checkpoints(runs_dir: str, filesystem=None):
    from raylora.study.checkpoints import Checkpoints

    return Checkpoints(runs_dir, filesystem, "eval/loss", "min").for_trial("t000")


def _save(checkpoints, step: int, tmp_path, loss: float = 1.0) -> str:
    import torch
    from safetensors.torch import save_file

    local = tmp_path / f"src{step}"
    (local / "adapter").mkdir(parents=True)
    save_file({"lora_A": torch.ones(4, 8)}, str(local / "adapter" / "adapter_model.safetensors"))
    torch.save({"step": step, "optimizer": {}, "scheduler": {}}, local / "trainer_state.pt")
    return checkpoints.save(local, step, {"eval/loss": loss})


def _zero(fs, path: str) -> None:
    """What a power loss leaves of a file renamed into place but never flushed: its name, no bytes."""
    with fs.open_output_stream(path) as f:
        f.write(b"")


def _truncate(fs, path: str) -> None:
    with fs.open_input_stream(path) as f:
        data = f.read()
    with fs.open_output_stream(path) as f:
        f.write(data[: len(data) // 2])


@pytest.mark.parametrize("damage", [_zero, _truncate])
@pytest.mark.parametrize("where", ["local", "memory"])
def test_a_damaged_newest_checkpoint_is_discarded_for_the_previous_then_a_fresh_start(
    tmp_path, where, damage
):
    import pyarrow.fs

    from raylora.layout import MANIFEST

    if where == "local":
        fs, runs = pyarrow.fs.LocalFileSystem(), str(tmp_path / "runs")
        checkpoints = _checkpoints(runs)  # local storage: Checkpoints' own fsync-and-rename path
    else:  # pyarrow's in-memory filesystem stands in for object storage (the upload path)
        fs = pyarrow.fs._MockFileSystem()
        runs = "bucket/study/runs"
        checkpoints = _checkpoints(runs, fs)
    first = _save(checkpoints, 2, tmp_path, loss=0.5)  # the best: kept by pruning
    newest = _save(checkpoints, 4, tmp_path, loss=0.9)
    assert checkpoints.names() == ["checkpoint_s0000002", "checkpoint_s0000004"]
    assert fs.get_file_info(f"{newest}/{MANIFEST}").type == pyarrow.fs.FileType.File

    damage(fs, f"{newest}/adapter/adapter_model.safetensors")
    resume, passed_over = checkpoints.trusted(discard=True)
    assert json.loads((resume / "report.json").read_text())["step"] == 2  # a download on object storage
    if where == "memory":
        import shutil

        shutil.rmtree(resume)
    assert passed_over[0].startswith("checkpoint_s0000004 (adapter/adapter_model.safetensors")
    assert checkpoints.names() == ["checkpoint_s0000002"]  # never picked again

    damage(fs, f"{first}/trainer_state.pt")
    resume, passed_over = checkpoints.trusted(discard=True)  # nothing left to trust: a fresh start
    assert resume is None and [p.split(" ")[:2] for p in passed_over] == [
        ["checkpoint_s0000002", "(trainer_state.pt"]
    ]
    assert checkpoints.names() == []


def test_an_empty_manifest_or_a_checkpoint_without_one_that_does_not_read_is_not_trusted(tmp_path):
    import pyarrow.fs

    from raylora.layout import MANIFEST
    from raylora.study import manifest

    fs = pyarrow.fs.LocalFileSystem()
    checkpoints = _checkpoints(str(tmp_path / "runs"))
    path = _save(checkpoints, 2, tmp_path)
    assert manifest.problem(fs, path) is None
    _zero(fs, f"{path}/{MANIFEST}")
    assert manifest.problem(fs, path) == f"{MANIFEST} does not parse"
    fs.delete_file(f"{path}/{MANIFEST}")  # a checkpoint from before manifests: its adapter must read
    assert manifest.problem(fs, path) is None
    _zero(fs, f"{path}/adapter/adapter_model.safetensors")
    assert "safetensors header" in manifest.problem(fs, path)


# -- infrastructure is not a verdict -----------------------------------------------------------------


def _infrastructure_errors():
    import ray.exceptions as rx
    from ray.train.v2._internal import exceptions as internal
    from ray.train.v2.api.exceptions import ControllerError, WorkerGroupError

    return {
        "actor died (the pool, a trial driver)": rx.ActorDiedError(),
        "actor unavailable": rx.ActorUnavailableError("gone", None),
        "node died": rx.NodeDiedError("node 10.0.0.2 died"),
        "raylet died": rx.LocalRayletDiedError(),
        "worker crashed": rx.WorkerCrashedError(),
        "owner died": rx.OwnerDiedError("ff" * 28, None, ""),
        "worker group did not start in time": internal.WorkerGroupStartupTimeoutError(2),
        "worker group failed to start": internal.WorkerGroupStartupFailedError("no placement group"),
        "controller lost its workers": ControllerError(internal.WorkerGroupStartupFailedError("gone")),
        "a worker killed": WorkerGroupError("a worker died", {1: rx.ActorDiedError()}),
        "data file vanished": FileNotFoundError(2, "No such file or directory", "/data/train.jsonl"),
    }


@pytest.mark.parametrize("case", list(_infrastructure_errors()))
def test_what_carried_the_trial_failing_is_not_a_verdict(case):
    from raylora.record.states import INFRA_FAULT, NOT_A_VERDICT, classify

    error = _infrastructure_errors()[case]
    status, reason = classify(error)
    assert status == INFRA_FAULT and status in NOT_A_VERDICT, (status, reason)
    assert "\n" not in reason and reason


def test_the_trials_own_error_oom_or_divergence_wrapped_by_ray_is_still_its_verdict():
    import ray.exceptions as rx
    import torch
    from ray.train.v2.api.exceptions import WorkerGroupError

    from raylora.errors import TrialError
    from raylora.record.states import classify

    own = RuntimeError("shape mismatch")
    assert classify(WorkerGroupError("a worker raised", {0: own})) == (
        TrialState.FAILED,
        "RuntimeError: shape mismatch",
    )
    # An actor whose own code raised dies with that error as its cause: the trial's, not Ray's.
    died = rx.ActorDiedError(rx.RayTaskError("f", "tb", RuntimeError("bad config")))
    assert classify(died)[0] == TrialState.FAILED
    oom = WorkerGroupError("oom", {0: torch.OutOfMemoryError("CUDA out of memory"), 1: rx.ActorDiedError()})
    assert classify(oom)[0] == TrialState.INFEASIBLE
    assert classify(TrialError("loss became NaN at step 3")) == (
        TrialState.FAILED,
        "TrialError: loss became NaN at step 3",
    )


_GLOO_PEER_LOST = st.sampled_from(
    [
        "[{}/gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:{}: Connection reset by peer",
        "[{}/gloo/transport/tcp/pair.cc:598] Connection closed by peer [10.0.0.{}]:{}",
        "[{}/gloo/transport/tcp/unbound_buffer.cc:{}] Write error: Broken pipe",
    ]
)


def _wrapped(leaf: BaseException, layers: list[str]) -> BaseException:
    """``leaf`` as Ray Train hands it on: under a worker group's error and/or as an exception's cause."""
    from ray.train.v2.api.exceptions import WorkerGroupError

    error = leaf
    for kind in layers:
        if kind == "group":
            error = WorkerGroupError("a worker raised", {0: error})
        else:
            outer = RuntimeError("while training")
            outer.__cause__ = error
            error = outer
    return error


@settings(max_examples=60)
@given(
    template=_GLOO_PEER_LOST,
    path=st.text("/_abcdefgh", max_size=12),
    port=st.integers(1, 65535),
    layers=st.lists(st.sampled_from(["group", "cause"]), max_size=3),
)
def test_a_collective_that_lost_its_peer_is_not_the_trials_verdict(template, path, port, layers):
    """A worker whose peer died (killed, its node lost) fails in its collective with gloo's RuntimeError
    (or torch's DistNetworkError / DistBackendError): its trial is resumed by the restarted group, never
    FAILED for it, however Ray wraps the error; the trial's own errors stay its verdict."""
    import torch.distributed as dist
    from ray.train.v2.api.exceptions import WorkerGroupError

    from raylora.record.states import INFRA_FAULT, classify, peer_lost

    text = template.format(path, *([port] * template.count("{}"))[1:])
    for leaf in (RuntimeError(text), dist.DistNetworkError("connect timed out"), dist.DistBackendError("x")):
        error = _wrapped(leaf, layers)
        assert peer_lost(error), error
        assert classify(error)[0] == INFRA_FAULT, classify(error)
    for own in (RuntimeError(text.replace("gloo", "mine")), RuntimeError("shape mismatch " + path)):
        assert not peer_lost(_wrapped(own, layers))
        assert classify(_wrapped(own, layers))[0] == TrialState.FAILED
    # One worker's own error, and its peer's lost collective beside it: the trial's verdict is its own.
    both = WorkerGroupError("workers raised", {0: _wrapped(RuntimeError(text), layers), 1: own})
    assert not peer_lost(both) and classify(both) == (TrialState.FAILED, f"RuntimeError: {str(own).strip()}")


# -- data fixed for the study's life -----------------------------------------------------------------


def test_a_data_file_changed_or_gone_since_the_study_began_is_named(tmp_path):
    from raylora import spec as spec_lib
    from raylora.study import specfile

    train = tmp_path / "train.jsonl"
    row = {
        "messages": [{"role": "user", "content": "click OK"}, {"role": "assistant", "content": "click(1, 2)"}]
    }
    train.write_text(json.dumps(row) + "\n")
    spec = spec_lib.load(
        Path(__file__).resolve().parents[1] / "search_spaces" / "quickstart.yaml", [f"data.train={train}"]
    )
    specfile.save(tmp_path / "study", spec)
    digests = specfile.data_digests(tmp_path / "study")
    assert set(digests) == {"data.train"}  # the built-in eval set has no file to hash
    assert specfile.changed_data(spec, digests) is None

    train.write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    changed = specfile.changed_data(spec, digests)
    assert changed.startswith(f"data.train ({train}) changed since the study began (sha256 "), changed
    train.unlink()
    assert specfile.changed_data(spec, digests) == f"data.train ({train}) is missing since the study began"


# -- the watchdog ------------------------------------------------------------------------------------


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_watchdog_limit_follows_the_measured_pace_above_a_floor_and_a_fixed_limit_wins():
    from raylora.study.watchdog import FLOOR_S, MULTIPLE, Watchdog

    clock = _Clock()
    dog = Watchdog(clock=clock)
    assert dog.limit("t000") is None and dog.stalled("t000") is None  # not watched before its first step
    dog.heard("t000")
    for gap in (1.0, 2.0, 60.0, 1.0):  # steps, an evaluation of 60 s, a step
        clock.now += gap
        dog.heard("t000")
    assert dog.limit("t000") == max(FLOOR_S, MULTIPLE * 60.0)
    clock.now += MULTIPLE * 60.0 - 1
    assert dog.stalled("t000") is None
    clock.now += 2
    assert dog.stalled("t000") == pytest.approx(MULTIPLE * 60.0 + 1)
    dog.forget("t000")  # its workers restart: timing starts again at their first step
    assert dog.stalled("t000") is None

    quick = Watchdog(clock=clock)
    quick.heard("t001")
    clock.now += 0.5
    quick.heard("t001")
    assert quick.limit("t001") == FLOOR_S  # fast steps never make the limit shorter than the floor

    fixed, off = Watchdog(fixed_s=30.0, clock=clock), Watchdog(fixed_s=0.0, clock=clock)
    for dog in (fixed, off):
        dog.heard("t002")
    clock.now += 31
    assert fixed.stalled("t002") == pytest.approx(31) and off.stalled("t002") is None


# -- a driver killed outright --------------------------------------------------------------------------


def test_what_a_killed_driver_started_is_ended_after_it(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    driver = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, time\n"
            "from raylora.study import reaper\n"
            "task = subprocess.Popen(['sleep', '300'], start_new_session=True)\n"  # as a Ray worker is
            "reaper.start()\n"
            "print(task.pid, flush=True)\n"
            "time.sleep(300)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    task = int(driver.stdout.readline())

    def running(pid: int) -> bool:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        return stat[stat.rfind(")") + 2] != "Z"

    time.sleep(3)  # the reaper has seen the task
    assert running(task)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    deadline = time.monotonic() + 15
    while running(task) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not running(task)
    with_parent = os.getpid()  # the test process itself was never the reaper's to end
    assert running(with_parent)


# -- the searcher: a non-finite objective fails the trial, a fault of what carried it decides nothing --


def _searcher(tmp_path):
    from raylora import spec as spec_lib
    from raylora.study.optuna_searcher import StudySearcher, open_optuna

    spec = spec_lib.load(
        Path(__file__).resolve().parents[1] / "search_spaces" / "quickstart.yaml",
        ["training.max_steps=4", "training.eval_every=2", "study.scheduler.type=fifo"],
    )
    record = StudyRecord(tmp_path, spec.study.name, "eval/loss", "min")
    study = open_optuna(tmp_path, spec, log=lambda line: None)
    return StudySearcher(spec, study, record, []), study, record


def test_a_nan_objective_fails_the_trial_in_the_summary_and_in_optuna(tmp_path):
    import optuna

    from raylora.record.states import ERROR, INFRA_FAULT, STATUS

    searcher, study, record = _searcher(tmp_path)
    searcher.suggest("tune-a")
    searcher.on_trial_result("tune-a", {"step": 2, "eval/loss": 0.7, "checkpoint_path": str(tmp_path / "c2")})
    searcher.on_trial_result("tune-a", {"step": 4, "eval/loss": math.nan})
    searcher.on_trial_complete("tune-a", {"step": 4, "eval/loss": math.nan})
    trial = record.trials["t000"]
    assert trial.state == TrialState.FAILED and trial.error == "the objective eval/loss became nan at step 4"
    assert trial.value is None and record.best() is None
    assert study.trials[0].state == optuna.trial.TrialState.FAIL

    # A trial whose node or pool died keeps its place: RUNNING, Optuna not told, the study stops.
    searcher.suggest("tune-b")
    searcher.on_trial_complete("tune-b", {STATUS: INFRA_FAULT, ERROR: "NodeDiedError: node 10.0.0.2 died"})
    assert record.trials["t001"].state == TrialState.RUNNING
    assert study.trials[1].state == optuna.trial.TrialState.RUNNING
    assert searcher.fault == "NodeDiedError: node 10.0.0.2 died"
    json.loads((tmp_path / "summary.json").read_text(), parse_constant=lambda t: 1 / 0)


_LOSS = st.floats(0.1, 10.0, allow_nan=False).map(lambda v: round(v, 3))  # ties happen


@settings(max_examples=40)
@given(
    first=st.lists(_LOSS, min_size=1, max_size=8),
    resume_at=st.integers(0, 8),
    again=st.lists(_LOSS, min_size=1, max_size=8),
)
def test_a_resumed_trial_keeps_no_value_of_the_evaluations_after_its_checkpoint(first, resume_at, again):
    """A driver stopped after ``first`` evaluations (every 2 steps, a checkpoint at each); the resume
    passes over the checkpoints after ``resume_at`` of them (emptied by a power loss; 0: none is left),
    the workers replay the reports up to it and train again. The trial's record is the history of the
    adapter it ends with: the replayed evaluations and the new ones, never one of those passed over."""
    import tempfile

    from raylora.study.optuna_searcher import StudySearcher

    resume_at = min(resume_at, len(first))
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        searcher, study, record = _searcher(tmp_path)

        def report(searcher, index: int, value: float, attempt: str, **extra) -> None:
            path = str(tmp_path / attempt / f"checkpoint_s{2 * (index + 1):07d}")
            searcher.on_trial_result(
                "tune", {"step": 2 * (index + 1), "eval/loss": value, "checkpoint_path": path, **extra}
            )

        searcher.suggest("tune")
        for i, value in enumerate(first):
            report(searcher, i, value, "a")
        # The driver stops; the resume's searcher takes the trial again.
        resumed = StudySearcher(searcher.spec, study, record, [record.trials["t000"]])
        resumed.suggest("tune")
        for i, value in enumerate(first[:resume_at]):  # replayed from the reports beside the checkpoints
            report(resumed, i, value, "a", replayed=True)
        again_from = {"resumed_from_step": 2 * resume_at} if resume_at else {}
        for i, value in enumerate(again, start=resume_at):
            report(resumed, i, value, "b", **again_from)

        # The reference: the adapter's own history, its best step the newest of its best values.
        history = {2 * (i + 1): v for i, v in enumerate(first[:resume_at] + again)}
        best = min(history.values())
        best_step = max(step for step, v in history.items() if v == best)
        attempt = "a" if best_step <= 2 * resume_at else "b"
        trial = record.trials["t000"]
        assert trial.curve == {str(step): v for step, v in history.items()}
        assert trial.value == best and trial.last_value == history[max(history)]
        assert trial.adapter_path == f"{tmp_path / attempt / f'checkpoint_s{best_step:07d}'}/adapter"
        assert trial.steps == max(history)
        assert trial.resumed_from_step == (2 * resume_at or None)


def test_a_trial_driver_lost_to_its_node_is_not_failed(tmp_path):
    import optuna

    searcher, study, record = _searcher(tmp_path)
    searcher.suggest("tune-a")
    searcher.on_trial_complete("tune-a", None, error=True)  # Tune lost the trial's actor
    assert record.trials["t000"].state == TrialState.RUNNING
    assert study.trials[0].state == optuna.trial.TrialState.RUNNING
    assert searcher.fault and "died" in searcher.fault


def test_a_checkpoint_that_matches_its_manifest_but_does_not_load_is_passed_over(tmp_path):
    from raylora.study import manifest

    checkpoints = _checkpoints(str(tmp_path / "runs"))
    _save(checkpoints, 2, tmp_path, loss=0.5)
    newest = Path(_save(checkpoints, 4, tmp_path, loss=0.9))
    (newest / "adapter" / "adapter_model.safetensors").write_bytes(b"not safetensors at all")
    manifest.write(newest)  # written that way, and vouched for: the bytes match, they do not load
    resume, passed_over = checkpoints.trusted(discard=True)
    assert resume.name == "checkpoint_s0000002"
    assert passed_over[0].startswith("checkpoint_s0000004 (does not load: "), passed_over
