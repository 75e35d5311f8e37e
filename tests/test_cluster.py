"""A two-node Ray cluster on loopback (head 127.0.0.1, second node 127.0.0.2): SPREAD trials and a worker
killed mid-trial. Each node starts in a session of its own, and the kill and teardown reach only the
processes of those sessions: other Ray work on the machine is left alone."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml
from mlflow_server import free_port

pytestmark = pytest.mark.slow  # every test here starts Ray, an MLflow or S3 server, or trains

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


@pytest.fixture(scope="module")
def cluster(ray_tmpdir):
    port = free_port()
    # Ray 2.59+ clusters use token auth, and `ray start` does not make a token: on a fresh machine none
    # exists yet. This cluster's own token goes in RAY_AUTH_TOKEN_PATH, where the nodes and raylora's
    # driver (a child of this process) find it.
    token = ray_tmpdir / "auth_token"
    token.write_text(secrets.token_hex(32))
    saved = os.environ.get("RAY_AUTH_TOKEN_PATH")
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(token)
    # Its own temp root: the cluster's sessions and the address `ray start` records stay out of /tmp/ray,
    # where a plain ray.init() elsewhere would find them after teardown.
    env = {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_TMPDIR": str(ray_tmpdir),
    }
    common = ["--num-cpus", "1", "--disable-usage-stats"]
    head = [
        RAY,
        "start",
        "--head",
        "--node-ip-address",
        "127.0.0.1",
        "--port",
        str(port),
        "--include-dashboard",
        "false",
        *common,
    ]
    node = [RAY, "start", "--address", f"127.0.0.1:{port}", "--node-ip-address", "127.0.0.2", *common]
    sessions = set()
    try:
        for command in (head, node):
            # Every process a node starts (GCS, raylet, workers) stays in the session of its `ray start`.
            start = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
            sessions.add(start.pid)
            out, _ = start.communicate(timeout=120)
            assert start.returncode == 0, out.decode()[-3000:]
        yield Cluster(f"127.0.0.1:{port}", frozenset(sessions))
    finally:
        _stop(sessions)
        if saved is None:
            os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
        else:
            os.environ["RAY_AUTH_TOKEN_PATH"] = saved


class Cluster(NamedTuple):
    address: str
    sessions: frozenset[int]

    def processes(self, name: str) -> list[int]:
        """The pids of this cluster's processes whose command line contains ``name``."""
        return [pid for pid, command in _processes(self.sessions) if name in command]


def _processes(sessions) -> list[tuple[int, str]]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue  # it exited meanwhile
            if int(stat[stat.rindex(")") + 2 :].split()[3]) in sessions:  # field 6: the session id
                found.append((int(entry.name), command))
    return found


def _stop(sessions) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid, _ in _processes(sessions):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 10
        while _processes(sessions) and time.monotonic() < deadline:
            time.sleep(0.2)


def _study(tmp_path: Path, name: str, resources: dict, training: dict) -> Path:
    spec = {
        "study": {
            "name": name,
            "num_trials": 1,
            "max_concurrent_trials": 1,
            "scheduler": {"type": "fifo"},
            "sampler": {"type": "random", "seed": 0},
        },
        "data": {"image": {"min_pixels": 4096, "max_pixels": 65536}, "max_length": 512, "eval_samples": 4},
        "resources": {"cpus_per_worker": 0.5, **resources},
        "training": {
            "per_device_train_batch_size": 2,
            "click_eval_samples": 0,
            "lora": {"scope": ["llm"]},
            **training,
        },
        "search": {"training.learning_rate.llm": {"loguniform": [1.0e-3, 1.0e-2]}},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _cmd(spec: Path, tmp_path: Path, address: str | None) -> list[str]:
    """``raylora search`` on the cluster at ``address`` (None: the one ``RAY_ADDRESS`` names)."""
    return [
        sys.executable,
        "-m",
        "raylora",
        "search",
        str(spec),
        *(["--address", address] if address is not None else []),
        "--storage",
        str(tmp_path / "st"),
        "--tracking-uri",
        f"sqlite:///{tmp_path}/mlflow.db",
    ]


def test_spread_trial_runs_on_both_nodes_and_a_killed_worker_restarts_it_from_its_latest_checkpoint(
    cluster, tmp_path
):
    spec = _study(
        tmp_path,
        "spread",
        {"workers_per_trial": 2, "placement_strategy": "SPREAD", "max_failures": 1},
        {"max_steps": 40, "eval_every": 2},
    )  # 40 steps: warm workers train a few steps per second, and the kill must land mid-trial
    summary = tmp_path / "st" / "spread" / "summary.json"
    log = open(tmp_path / "driver.log", "w")
    driver = subprocess.Popen(
        _cmd(spec, tmp_path, cluster.address), cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            time.sleep(0.1)
            if summary.is_file() and json.loads(summary.read_text())["trials"][0]["steps"] >= 4:
                break
        else:
            pytest.fail("trial never reached step 4:\n" + (tmp_path / "driver.log").read_text()[-3000:])
        # Ray may report the head by the machine's own address rather than 127.0.0.1; the point is two nodes.
        nodes = json.loads(summary.read_text())["trials"][0]["nodes"]
        assert len(nodes) == 2 and "127.0.0.2" in nodes, nodes
        pids = cluster.processes("ray::RayTrainWorker")
        assert len(pids) == 2, pids
        os.kill(pids[0], signal.SIGKILL)
        assert driver.wait(timeout=400) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    finally:
        if driver.poll() is None:
            driver.kill()
    assert "on 2 node(s)" in (tmp_path / "driver.log").read_text()
    (trial,) = json.loads(summary.read_text())["trials"]
    assert trial["state"] == "COMPLETE" and trial["steps"] == 40, trial
    assert trial["resumed_from_step"] >= 4, trial  # (SPREAD is a preference: the restart may use one node)


def test_strict_spread_beyond_the_cluster_is_refused_before_launch(cluster, tmp_path):
    spec = _study(
        tmp_path,
        "toowide",
        {"workers_per_trial": 3, "placement_strategy": "STRICT_SPREAD"},
        {"max_steps": 2, "eval_every": 2},
    )
    # named by RAY_ADDRESS, as `ray job submit` and users' shells do: attached to as --address is (token too)
    env = {**os.environ, "RAY_ADDRESS": cluster.address}
    proc = subprocess.run(
        _cmd(spec, tmp_path, None), capture_output=True, text=True, cwd=tmp_path, timeout=300, env=env
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "STRICT_SPREAD" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout.startswith(f"study toowide: attaching to Ray at {cluster.address}\n"), proc.stdout


@pytest.fixture(autouse=True, scope="module")
def _needs_ray_cli():
    if not Path(RAY).exists() and not shutil.which("ray"):
        pytest.fail("the ray CLI is not installed next to this Python")
