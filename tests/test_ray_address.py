"""A cluster named by ``RAY_ADDRESS`` is attached to exactly as one named by ``--address`` is: the driver
says so, sends a token the user has, and gives no local-start settings (no Ray started here)."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ray.train.v2._internal.constants import ENV_VARS_TO_PROPAGATE

from raylora.study import cluster


@pytest.fixture
def environ(monkeypatch, tmp_path) -> dict:
    """A private copy of the environment, with a Ray token at hand and no auth mode chosen."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    (tmp_path / "token").write_text("0" * 64)
    env["RAY_AUTH_TOKEN_PATH"] = str(tmp_path / "token")
    monkeypatch.setattr(os, "environ", env)
    return env


@pytest.mark.parametrize("via", ["RAY_ADDRESS", "--address"])
def test_a_named_cluster_is_attached_to_with_the_token(environ, via):
    address = "10.1.2.3:6379"
    if via == "RAY_ADDRESS":
        environ["RAY_ADDRESS"] = address
    cluster.configure(address if via == "--address" else None)
    assert cluster.named_address(address if via == "--address" else None) == address
    assert environ["RAY_AUTH_MODE"] == "token"
    assert "RAY_worker_maximum_startup_concurrency" not in environ  # a setting for a local node only


def test_without_a_name_ray_starts_locally_and_a_chosen_auth_mode_is_left_alone(environ):
    environ["RAY_AUTH_MODE"] = "disabled"
    cluster.configure(None)
    assert cluster.named_address(None) is None
    assert environ["RAY_AUTH_MODE"] == "disabled"
    assert int(environ["RAY_worker_maximum_startup_concurrency"]) >= 8
    environ["RAY_ADDRESS"] = ""  # set but empty names no cluster, as for Ray
    assert cluster.named_address(None) is None


def test_only_a_ray_started_here_goes_without_a_job_runtime_environment(environ, tmp_path):
    """ray.init gets the workers' variables as a job runtime environment only when it attaches: a Ray
    started here hands them down itself, and with a job runtime environment its pre-started workers go
    unused. A ``ray start`` record counts as a cluster only while something listens at it."""
    import socket

    environ["RAY_TMPDIR"] = str(tmp_path)
    assert cluster._target(None) == (None, True)  # no record: Ray starts here
    assert cluster._target("local") == ("local", True)
    assert cluster._target("10.1.2.3:6379") == ("10.1.2.3:6379", False)
    assert cluster._target("auto") == ("auto", False)
    record = tmp_path / "ray" / "ray_current_cluster"
    record.parent.mkdir()
    with socket.socket() as head:
        head.bind(("127.0.0.1", 0))
        head.listen()
        record.write_text(f"127.0.0.1:{head.getsockname()[1]}")
        assert cluster._target(None) == (None, False)  # a live `ray start` cluster: Ray attaches
    assert cluster._target(None) == ("local", True)  # the same record once nobody listens: stale
    environ["RAY_ADDRESS"] = "10.1.2.3:6379"
    assert cluster._target(None) == (None, False)


_TRAIN_PASSES = sorted(ENV_VARS_TO_PROPAGATE)  # Ray Train's own list of what it hands to workers


@given(
    chosen=st.dictionaries(
        st.sampled_from(
            _TRAIN_PASSES
            + ["RAYLORA_HOME", "RAYLORA_INJECT_OOM", "RAYLORA_INJECT_ERROR", "RAY_TRAIN_METRICS_ENABLED"]
            + ["PATH_NOT_PASSED", "RAY_ADDRESS", "MLFLOW_TRACKING_URI"]
        ),
        st.text(alphabet="abc019=,/", max_size=8),
        max_size=8,
    )
)
def test_an_attached_clusters_workers_get_raylora_s_variables_and_those_ray_train_passes(chosen):
    """The runners' controllers run inside the pool actor, so Ray Train's own hand-over of the driver's
    variables to its workers never runs: the job environment of an attached cluster carries them, beside
    raylora's; nothing else of the driver's environment goes."""
    from unittest import mock

    passed = set(_TRAIN_PASSES) | {
        "RAYLORA_HOME", "RAYLORA_INJECT_OOM", "RAYLORA_INJECT_ERROR",
        "TUNE_FUNCTION_THREAD_TIMEOUT_S", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER",
        "RAY_TRAIN_ENABLE_PRINT_PATCH", "RAY_TRAIN_METRICS_ENABLED",
    }  # fmt: skip
    with mock.patch.object(os, "environ", dict(chosen)):
        got = cluster._for_workers()
    assert got == {k: v for k, v in chosen.items() if k in passed}
