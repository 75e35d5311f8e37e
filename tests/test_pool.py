"""The trial pool's bookkeeping and checkpoint policy, without Ray (the Ray paths run in test_search,
test_cluster and test_storage)."""

from __future__ import annotations

import importlib
import json
import os
import sys
import time

import pyarrow.fs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from raylora.record.states import EXIT
from raylora.study.checkpoints import Checkpoints
from raylora.study.pool import TrialPool, _Runner

SETTINGS = {"max_failures": 1}


def _pool(max_failures: int = 1) -> TrialPool:
    # max_runners=0: nothing starts a Train run here; runner 0 is registered by hand.
    pool = TrialPool({"max_failures": max_failures}, max_runners=0)
    pool.runners[0] = _Runner()
    return pool


def test_a_trial_goes_from_queue_to_runner_to_done_with_its_reports():
    pool = _pool()
    pool.submit("t000", {"spec": 1})
    assert pool.poll("t000", 0, timeout=0) == ([], "queued", None)
    assert pool.next_job(0, fresh=True, timeout=0) == {"trial_id": "t000", "spec": {"spec": 1}}
    pool.report("t000", {"step": 2})
    pool.report("t000", {"step": 4})
    assert pool.poll("t000", 1, timeout=0) == ([{"step": 4}], "running", None)
    pool.finished(0, "t000")
    assert pool.poll("t000", 2, timeout=0) == ([], "done", None)
    assert pool.next_job(0, fresh=False, timeout=0) is None  # nothing queued
    pool.closing = True
    assert pool.next_job(0, fresh=False, timeout=0) == EXIT


def test_a_restarted_group_gets_its_trial_back_until_out_of_restarts():
    pool = _pool(max_failures=1)
    pool.submit("t000", {})
    pool.submit("t001", {})
    assert pool.next_job(0, fresh=True, timeout=0)["trial_id"] == "t000"
    # A worker died: the new group's first call resumes t000 once ...
    assert pool.next_job(0, fresh=True, timeout=0)["trial_id"] == "t000"
    # ... and after a second death t000 fails and the group moves on.
    assert pool.next_job(0, fresh=True, timeout=0)["trial_id"] == "t001"
    _, state, error = pool.poll("t000", 0, timeout=0)
    assert state == "failed" and error[0] == "FAILED" and "worker died" in error[1]


def test_a_trial_that_raised_is_failed_once_with_the_first_reason():
    pool = _pool()
    pool.submit("t000", {})
    pool.next_job(0, fresh=True, timeout=0)
    pool.failed(0, "t000", "INFEASIBLE", "out of memory: rank 1")
    pool.failed(0, "t000", "FAILED", "a later rank's error")  # ignored: the trial already ended
    assert pool.poll("t000", 0, timeout=0) == ([], "failed", ("INFEASIBLE", "out of memory: rank 1"))
    # Its group restarts (fresh) with nothing in flight: no attempt is charged to anything.
    assert pool.next_job(0, fresh=True, timeout=0) is None


def test_a_stopped_trial_drops_its_reports_and_a_stopped_queued_trial_never_starts():
    pool = _pool()
    pool.submit("t000", {})
    pool.submit("t001", {})
    pool.next_job(0, fresh=True, timeout=0)
    pool.stop("t000")
    pool.report("t000", {"step": 6})
    assert pool.poll("t000", 0, timeout=0) == ([], "stopped", None)
    assert pool.is_stopped("t000")
    pool.finished(0, "t000")
    pool.stop("t001")
    assert pool.next_job(0, fresh=False, timeout=0) is None


def test_a_group_that_never_reaches_a_trial_fails_the_waiting_trials_instead_of_looping():
    class Broken(TrialPool):
        def _trainer(self, rid, handle):
            raise RuntimeError("no GPU driver on this node")

    pool = Broken(SETTINGS, max_runners=0)
    pool.submit("t000", {})
    pool.submit("t001", {})
    pool.runners[0] = _Runner()
    pool._run(0, handle=None)
    for slot in ("t000", "t001"):
        assert pool.poll(slot, 0, timeout=0) == (
            [],
            "failed",
            ("FAILED", "RuntimeError: no GPU driver on this node"),
        )
    pool.submit("t002", {})  # later trials fail at once with the same reason
    assert pool.poll("t002", 0, timeout=0)[1:] == (
        "failed",
        ("FAILED", "RuntimeError: no GPU driver on this node"),
    )


def test_a_runner_out_of_restarts_requeues_its_trial_while_it_has_restarts_left():
    class OutOfRestarts(TrialPool):
        def _trainer(self, rid, handle):
            raise RuntimeError("worker group failed 4 times")

        def _start_runner(self):  # registers its runner as the real one does; starts no Train run
            self.started = getattr(self, "started", 0) + 1
            self.runners[len(self.runners)] = _Runner()

    pool = OutOfRestarts(SETTINGS, max_runners=1)
    pool.runners[0] = _Runner()
    pool.submit("t000", {})
    pool.next_job(0, fresh=True, timeout=0)
    pool._run(0, handle=None)
    assert pool.poll("t000", 0, timeout=0)[1] == "queued" and pool.started == 1


class _Counting(TrialPool):
    def _start_runner(self):  # registers its runner as the real one does; starts no Train run
        self.first_started = self.first_started or time.monotonic()
        self.runners[len(self.runners)] = _Runner()


def test_the_first_group_starts_alone_and_the_others_once_a_trial_trains():
    pool = _Counting(SETTINGS, max_runners=3)
    pool.warm()
    for slot in ("t000", "t001", "t002"):
        pool.submit(slot, {})
    assert len(pool.runners) == 1, "only the first group starts while none has trained"
    assert pool.next_job(0, fresh=True, timeout=0)["trial_id"] == "t000"
    assert not pool.first_step(timeout=0)
    pool.progress("t000", {"step": 1})
    assert len(pool.runners) == 3 and pool.first_step(timeout=0)  # one group per queued trial


def test_the_other_groups_start_when_the_first_trial_fails_before_its_first_step():
    pool = _Counting(SETTINGS, max_runners=2)
    pool.submit("t000", {})
    pool.submit("t001", {})
    pool.next_job(0, fresh=True, timeout=0)
    assert len(pool.runners) == 1
    pool.failed(0, "t000", "FAILED", "ValueError: a bad record")
    assert len(pool.runners) == 2


@pytest.mark.parametrize("remote", [False, True], ids=["local", "pyarrow"])
def test_checkpoints_keep_the_latest_and_the_best_the_newer_on_a_tie(tmp_path, remote):
    root = tmp_path / "runs"
    filesystem = pyarrow.fs.LocalFileSystem() if remote else None
    checkpoints = Checkpoints(str(root), filesystem, "eval/loss", "min").for_trial("t000")
    assert checkpoints.latest() is None

    def save(step: int, loss: float | None) -> str:
        local = tmp_path / f"ckpt{step}"
        (local / "adapter").mkdir(parents=True)
        (local / "adapter" / "weights").write_text(str(step))
        return checkpoints.save(local, step, {} if loss is None else {"eval/loss": loss})

    first = save(2, 5.0)
    assert first == f"{root}/t000/checkpoint_s0000002"
    save(4, 4.0)
    save(6, 4.5)
    assert checkpoints.names() == ["checkpoint_s0000004", "checkpoint_s0000006"]  # best, latest
    save(8, 4.0)  # ties the best: the newer one is kept
    assert checkpoints.names() == ["checkpoint_s0000008"]
    save(10, None)  # no objective in this report: latest only
    assert checkpoints.names() == ["checkpoint_s0000008", "checkpoint_s0000010"]

    latest = checkpoints.latest()
    assert (latest / "adapter" / "weights").read_text() == "10"
    assert json.loads((latest / "report.json").read_text()) == {"step": 10, "eval/loss": None}
    assert (latest == root / "t000" / "checkpoint_s0000010") is not remote  # remote ones are downloaded


@pytest.mark.parametrize("remote", [False, True], ids=["local", "pyarrow"])
def test_a_torn_checkpoint_is_never_resumed_from_and_is_cleared(tmp_path, remote):
    # A writer killed mid-write (the driver killed during an upload, a full disk) leaves a folder without
    # its report.json: the previous checkpoint stays the latest, and the next save clears the torn one.
    root = tmp_path / "runs"
    filesystem = pyarrow.fs.LocalFileSystem() if remote else None
    checkpoints = Checkpoints(str(root), filesystem, "eval/loss", "min").for_trial("t000")
    local = tmp_path / "ckpt"
    (local / "adapter").mkdir(parents=True)
    import numpy
    from safetensors.numpy import save_file

    # real weights: a resume reads the safetensors header before it trusts a checkpoint
    save_file(
        {"w": numpy.full(2, 2.0, dtype=numpy.float32)}, str(local / "adapter" / "adapter_model.safetensors")
    )
    written = (local / "adapter" / "adapter_model.safetensors").read_bytes()
    checkpoints.save(local, 2, {"eval/loss": 5.0})
    torn = root / "t000" / "checkpoint_s0000004"
    (torn / "adapter").mkdir(parents=True)
    (torn / "adapter" / "adapter_model.safetensors").write_text("")  # 0 bytes, no report.json
    assert checkpoints.names() == ["checkpoint_s0000002"]
    assert (checkpoints.latest() / "adapter" / "adapter_model.safetensors").read_bytes() == written
    checkpoints.save(local, 6, {"eval/loss": 6.0})
    assert not torn.exists()
    assert sorted(p.name for p in (root / "t000").iterdir()) == ["checkpoint_s0000002", "checkpoint_s0000006"]


def test_the_same_step_saved_again_replaces_it_whole(tmp_path):
    checkpoints = Checkpoints(str(tmp_path / "runs"), None, "eval/loss", "min").for_trial("t000")
    for text in ("first", "second"):
        local = tmp_path / text
        (local / "adapter").mkdir(parents=True)
        (local / "adapter" / "weights").write_text(text)
        checkpoints.save(local, 4, {"eval/loss": 1.0})
    assert (checkpoints.latest() / "adapter" / "weights").read_text() == "second"
    assert [p.name for p in (tmp_path / "runs" / "t000").iterdir()] == ["checkpoint_s0000004"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the peak is reset through /proc")
def test_each_trial_on_a_worker_reports_its_own_cpu_peak_memory():
    import torch

    from raylora.study.pool_worker import _release_memory
    from raylora.train.recipe import _peak_memory_mb

    cpu = torch.device("cpu")
    _release_memory()
    before = _peak_memory_mb(cpu)
    big = torch.ones(512 * 2**20 // 4)  # an earlier trial's 512 MiB
    assert _peak_memory_mb(cpu) >= before + 400
    del big
    _release_memory()  # between trials
    assert _peak_memory_mb(cpu) < before + 100


# Ray Data's DataContext, built by Train's callbacks here, warns about its own deprecated fields.
@pytest.mark.filterwarnings("ignore:`use_:DeprecationWarning:ray.data.context")
def test_a_runners_trainer_has_ray_trains_default_callbacks_but_two_helper_actors(tmp_path):
    """Each runner's TorchTrainer starts no dataset-manager actor (it passes no Ray Datasets) and no
    placement-group cleaner (the pool frees a dead controller's group); every other callback Ray Train sets
    up (the backend's process group, ...) stays. If Ray renames a callback or the method, the first assert
    fails instead of the saving vanishing."""
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from raylora.study import pool as pool_module
    from raylora.study.torch_backend import WorkerTorchConfig

    settings = {
        "max_failures": 1,
        "workers": 1,
        "cpus_per_worker": 0.5,
        "gpus_per_worker": 0,
        "placement_strategy": "PACK",
        "checkpoints": str(tmp_path / "runs"),
        "may_quantize": False,
        "pools_dir": str(tmp_path / "pools"),
        "filesystem": pyarrow.fs.LocalFileSystem(),
    }
    trainer = TrialPool(settings, max_runners=0)._trainer(0, handle=None)
    assert isinstance(trainer, DataParallelTrainer)
    assert isinstance(trainer.backend_config, WorkerTorchConfig)  # torch on the workers alone
    # Every setting a Ray Train backend declares is what Ray's own Torch backend sets (one GPU per worker
    # process, the node's GPUs shared, no replica groups, and whatever a later Ray adds).
    from ray.train.backend import Backend
    from ray.train.torch.config import _TorchBackend

    flags = [name for name, value in vars(Backend).items() if isinstance(value, bool)]
    assert "share_cuda_visible_devices" in flags
    backend = trainer.backend_config.backend_cls
    assert {name: getattr(backend, name) for name in flags} == {
        name: getattr(_TorchBackend, name) for name in flags
    }
    ray_default = [type(c).__name__ for c in DataParallelTrainer._create_default_callbacks(trainer)]
    ours = [type(c).__name__ for c in trainer._create_default_callbacks()]
    assert pool_module.UNUSED_CALLBACKS <= set(ray_default)
    assert ours == [name for name in ray_default if name not in pool_module.UNUSED_CALLBACKS]
    assert "BackendSetupCallback" in ours and "PlacementGroupCleanerCallback" not in ours


@pytest.mark.slow
def test_the_placement_groups_of_dead_actors_are_freed_and_no_other():
    """What Ray Train's cleaner did, with no actor of its own: a group whose creator actor died is removed;
    the driver's group (Tune's kind) and a live actor's group stay."""
    import ray
    from ray.util.placement_group import placement_group, placement_group_table

    from raylora.study.pool import free_orphaned_groups

    @ray.remote(num_cpus=0)
    class Controller:
        def make(self) -> str:
            group = placement_group([{"CPU": 0.25}])
            ray.get(group.ready())
            return group.id.hex()

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        drivers = placement_group([{"CPU": 0.25}])
        ray.get(drivers.ready())
        dead, live = Controller.remote(), Controller.remote()
        orphan, kept = ray.get([dead.make.remote(), live.make.remote()])
        ray.kill(dead)
        deadline = time.monotonic() + 30
        freed = []
        while not freed and time.monotonic() < deadline:  # the GCS learns of the death asynchronously
            freed = free_orphaned_groups()
            time.sleep(0.2)
        assert freed == [orphan]
        states = {pid: t["state"] for pid, t in placement_group_table().items()}
        assert states[orphan] == "REMOVED"
        assert states[kept] == states[drivers.id.hex()] == "CREATED"
        assert free_orphaned_groups() == []
    finally:
        ray.shutdown()


STATES = ("PENDING", "PREPARED", "CREATED", "REMOVED", "RESCHEDULING")


@given(
    state=st.sampled_from(STATES),
    ours=st.booleans(),
    made_by=st.sampled_from(["driver", "unset", "actor"]),
    creator_dead=st.booleans(),
    detached=st.booleans(),
    actor_id=st.binary(min_size=16, max_size=16).filter(lambda b: b != b"\xff" * 16),
)
def test_a_group_is_orphaned_only_when_this_jobs_live_group_lost_its_creator_actor(
    state, ours, made_by, creator_dead, detached, actor_id
):
    """Generated GCS records against the rule as the scenarios say it: the pool frees a group only if it
    still holds resources, this study's job made it, an actor (not the driver: Tune's groups) made it and
    that actor died, and it is not detached (a detached group is meant to outlive its creator)."""
    from ray.core.generated import gcs_pb2

    from raylora.study.pool import orphaned

    job, other = bytes.fromhex("01000000"), bytes.fromhex("02000000")
    creator = {"driver": b"\xff" * 16, "unset": b"", "actor": actor_id}[made_by]
    group = gcs_pb2.PlacementGroupTableData(
        placement_group_id=b"\x01" * 18,
        state=getattr(gcs_pb2.PlacementGroupTableData, state),
        creator_job_id=job if ours else other,
        creator_actor_id=creator,
        creator_actor_dead=creator_dead,
        is_detached=detached,
    )
    holds_resources = state != "REMOVED"
    lost_its_actor = made_by == "actor" and creator_dead
    assert orphaned(group, job) == (holds_resources and ours and lost_its_actor and not detached)


def test_on_a_ray_without_autoscaler_a_runner_asks_no_coordinator_for_resources():
    """The fixed-size policy still sizes the group, but neither its start nor its decisions reach Ray Data's
    autoscaling coordinator (an actor, so Ray would be started here if they did)."""
    import ray
    from ray.train.v2._internal.execution.scaling_policy import ResizeDecision, create_scaling_policy

    from raylora.study.pool import without_autoscaler

    config = ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5})
    policy = without_autoscaler(create_scaling_policy(config))
    policy.after_controller_start(train_run_context=None)
    decision = policy.make_decision_for_non_running_worker_group()
    assert decision == ResizeDecision(num_workers=2, resources_per_worker={"CPU": 0.5})
    assert policy.make_decision_for_running_worker_group(None, None).__class__.__name__ == "NoopDecision"
    policy._cancel_resource_request()
    assert not ray.is_initialized()


@pytest.mark.slow
def test_a_runners_controller_runs_in_the_pools_process_and_its_group_trains(tmp_path):
    """A runner's Ray Train controller runs in the thread that calls ``fit`` (the pool actor's runner
    thread): its worker group trains and returns, and no controller actor (a Python process importing torch
    on the path to every group's first step) is ever started. The process that runs the controller never
    imports torch (the backend runs Ray Train's torch set-up on the workers), and the workers' process
    group is the one Ray Train's ``TorchConfig`` makes: torchrun's variables, and a collective across them."""
    import ray
    import ray.train
    from ray._private.state import actors
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from raylora.study.pool import _lean
    from raylora.study.torch_backend import WorkerTorchConfig

    def per_worker():
        # Not `import torch`: cloudpickle ships a nested function with the submodules of its modules that
        # its names match and this process has loaded, so `torch` among its names would make the host
        # import `ray.train.torch` (and torch) whenever an earlier test here had imported it.
        torch = importlib.import_module("torch")
        dist = importlib.import_module("torch.distributed")

        context = ray.train.get_context()
        total = torch.tensor([float(context.get_world_rank() + 1)])
        dist.all_reduce(total)
        names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK", "MASTER_ADDR")
        env = {name: os.environ.get(name) for name in names}
        return {"worker_pid": os.getpid(), "sum": total.item(), "env": env, "backend": dist.get_backend()}

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:

        @ray.remote(num_cpus=0, max_concurrency=4)
        class Host:
            def fit(self, storage: str) -> dict:
                trainer = _lean(DataParallelTrainer, autoscaler=False)(
                    per_worker,
                    backend_config=WorkerTorchConfig(backend="gloo"),
                    scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
                    run_config=ray.train.RunConfig(name="runner", storage_path=storage),
                )
                result = trainer.fit()
                import sys

                torch_here = "torch" in sys.modules
                return {
                    "host_pid": os.getpid(),
                    "error": result.error,
                    "torch": torch_here,
                    **result.return_value,
                }

        out = ray.get(Host.remote().fit.remote(str(tmp_path / "pools")))
        assert out["error"] is None and out["worker_pid"] != out["host_pid"], out
        assert out["torch"] is False, "the controller's process imported torch"
        # Rank 0's return value: 1 + 2 summed over the two ranks' gloo group.
        assert out["sum"] == 3.0 and out["backend"] == "gloo", out
        assert out["env"]["RANK"] == "0" and out["env"]["WORLD_SIZE"] == "2" and out["env"]["MASTER_ADDR"], (
            out
        )
        assert out["env"]["LOCAL_WORLD_SIZE"] == "2" and out["env"]["NODE_RANK"] == "0", out
        classes = sorted(a["ActorClassName"].rsplit(".", 1)[-1] for a in actors().values())
        assert "TrainController" not in classes and {"Host", "RayTrainWorker"} <= set(classes), classes
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_runners_controllers_started_together_in_one_process_configure_its_logging_once(tmp_path):
    """Two runners' controllers starting at once in one process both train, and Ray Train's controller
    logging is configured once there. Each configuration (``dictConfig``) closes every handler under
    logging's module lock while a running controller opens its log file under its handler's lock and
    then takes the module lock: a second configuration could deadlock the first controller's start (a
    quickstart study with three trials at once hung that way). Fails on a pool that lets every
    controller configure logging (two configurations, or a hang)."""
    import ray
    import ray.train
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from raylora.study.pool import _lean
    from raylora.study.torch_backend import WorkerTorchConfig

    def per_worker():
        return {"rank": ray.train.get_context().get_world_rank()}

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:

        @ray.remote(num_cpus=0, max_concurrency=4)
        class Host:
            def __init__(self):
                import logging.config

                self.configured: list[list[str]] = []
                real = logging.config.dictConfig

                def counting(config):  # passes through; remembers which loggers each call configured
                    self.configured.append(sorted(config.get("loggers", {})))
                    return real(config)

                logging.config.dictConfig = counting

            def fit(self, storage: str, name: str) -> dict:
                trainer = _lean(DataParallelTrainer, autoscaler=False)(
                    per_worker,
                    backend_config=WorkerTorchConfig(backend="gloo"),
                    scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 0.5}),
                    run_config=ray.train.RunConfig(name=name, storage_path=storage),
                )
                result = trainer.fit()
                return {"error": result.error, **(result.return_value or {})}

            def configurations(self) -> list[list[str]]:
                return self.configured

        host = Host.remote()
        fits = [host.fit.remote(str(tmp_path / "pools"), f"runner-{i}") for i in range(2)]
        done, _ = ray.wait(fits, num_returns=2, timeout=180)
        assert len(done) == 2, "the two controllers did not both finish: a deadlock at start"
        for out in ray.get(fits):
            assert out["error"] is None and out["rank"] == 0, out
        assert ray.get(host.configurations.remote()) == [["ray.train"]]
    finally:
        ray.shutdown()
