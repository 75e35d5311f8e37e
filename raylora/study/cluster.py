"""Ray start-up for a study: attach to a cluster or start a local one, and check shared storage.

Nothing else in raylora calls ``ray.init``.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from .. import environment
from ..errors import EnvironmentFault, UserError
from . import reaper, signals
from .placement import Node


def configure(address: str | None) -> None:
    """Set Ray's environment for this driver. Call it before anything imports ray: Ray reads some of
    these variables (the auth mode among them) once, when it is imported."""
    environment.set_defaults(environment.RAY_TRAIN)
    os.environ.update(environment.RAY_DRIVER)
    attaching = named_address(address) is not None
    if attaching and environment.RAY_AUTH_MODE not in os.environ and _has_ray_token():
        os.environ[environment.RAY_AUTH_MODE] = "token"
    if not attaching:
        environment.set_defaults({environment.RAY_LOCAL_STARTUP: str(max(8, os.cpu_count() or 1))})


def init_ray(address: str | None) -> tuple[str | None, bool]:
    """Attach to the Ray cluster at ``address`` (or what ``ray start`` recorded), or start a local one;
    return the Ray dashboard's URL when there is one, and whether this process started the Ray (a Ray
    started here has no autoscaler: no node can be added to it)."""
    configure(address)
    import ray

    if ray.is_initialized():
        return None, False
    local = named_address(address) is None
    target, fresh = _target(address)
    try:
        with signals.held_from_children():  # Ray's own SIGTERM handler replaced after it
            context = ray.init(
                address=target,
                # Users watch a local study's processes there (the progress lines name its URL).
                include_dashboard=True if local else None,
                log_to_driver=False,
                logging_level=logging.ERROR,
                configure_logging=True,
                # A Ray started here hands this process's environment to every worker it starts. A job
                # runtime environment would also make each actor a new process: Ray's pre-started
                # workers are not used for it (about 1 s per actor, measured).
                runtime_env=None if fresh else {"env_vars": _for_workers()},
            )
    except ConnectionError as e:
        source = "--address" if address is not None else environment.RAY_ADDRESS
        raise UserError(source, f"cannot connect to a Ray cluster at {named_address(address)}: {e}") from None
    except Exception as e:
        if local and "timed out during startup" in str(e):
            raise local_start_timeout() from None
        raise
    reaper.start()  # a driver killed outright leaves no Ray process of its own behind
    url = getattr(context, "dashboard_url", None)
    return (f"http://{url}" if url and not url.startswith("http") else url), fresh


def _for_workers() -> dict[str, str]:
    """The variables an attached cluster's workers get from this driver: raylora's, and those Ray Train
    itself passes from a driver to its workers (the runners' controllers run inside the pool actor, so
    Ray Train's own hand-over does not happen)."""
    from ray.train.v2._internal.constants import get_env_vars_to_propagate

    return {**get_env_vars_to_propagate(), **environment.for_workers()}


def named_address(address: str | None) -> str | None:
    """The cluster named by ``--address``, else by ``RAY_ADDRESS``; None when neither names one (a
    ``ray start`` record may still)."""
    return address if address is not None else (os.environ.get(environment.RAY_ADDRESS) or None)


def local_start_timeout() -> EnvironmentFault:
    """Ray's local node did not come up in time (Ray waits 30 s for its raylet): say what to do."""
    return EnvironmentFault(
        "ray",
        "the local Ray node did not start within Ray's 30 s (the machine is overloaded, or short of "
        "memory); retry when it is less busy, or start Ray yourself (`ray start --head`) and pass --address",
    )


def _target(address: str | None) -> tuple[str | None, bool]:
    """What ``ray.init`` gets, and whether it starts a fresh local Ray. Without ``--address``: None lets
    Ray pick ``RAY_ADDRESS`` or the cluster a ``ray start`` on this machine recorded; "local" starts a
    fresh local Ray when that record is stale (its cluster was killed without ``ray stop``), where Ray
    would wait for the dead cluster forever."""
    import socket

    if address is not None:
        return address, address == "local"
    if os.environ.get(environment.RAY_ADDRESS):
        return None, False
    recorded = _recorded_address()
    if not recorded:
        return None, True
    host, _, port = recorded.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except (OSError, ValueError):
        return "local", True
    return None, False


def _recorded_address() -> str | None:
    """The head address the last ``ray start`` on this machine recorded, if any.

    Ray has no public function for this: ``ray.init`` reads the record itself and then waits on it. The
    record's place is documented behaviour (Ray's temp root, ``/tmp/ray`` unless ``RAY_TMPDIR`` or, on
    Linux, ``TMPDIR`` moves it; file ``ray_current_cluster``); the private helpers that read it moved
    between Ray releases, so raylora reads the file itself.
    """
    linux_tmp = os.environ.get(environment.TMPDIR) if sys.platform.startswith("linux") else None
    root = os.environ.get(environment.RAY_TMPDIR) or linux_tmp or "/tmp"
    try:
        return (Path(root) / "ray" / "ray_current_cluster").read_text().strip() or None
    except OSError:
        return None


def check_shared(directory: Path, nodes: list[Node]) -> None:
    """Refuse a storage path that not every node sees (Ray would only fail at the first checkpoint)."""
    import uuid

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    directory.mkdir(parents=True, exist_ok=True)
    marker = directory / f".raylora-shared-{uuid.uuid4().hex}"
    marker.write_text("raylora storage check\n")

    @ray.remote(num_cpus=0)
    def sees(path: str) -> bool:
        return os.path.exists(path)

    try:
        checks = {
            node.address: sees.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False)
            ).remote(str(marker))
            for node in nodes
        }
        blind = [address for address, ref in checks.items() if not ray.get(ref, timeout=120)]
    finally:
        marker.unlink(missing_ok=True)
    if blind:
        raise UserError(
            "--storage",
            f"{directory.parent} is not shared: node(s) {', '.join(blind)} cannot see it; on a cluster with "
            "more than one node give an NFS/EFS path mounted on every node",
        )


def _has_ray_token() -> bool:
    """A Ray auth token is at hand: $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token."""
    if os.environ.get(environment.RAY_AUTH_TOKEN):
        return True
    path = os.environ.get(environment.RAY_AUTH_TOKEN_PATH) or Path.home() / ".ray" / "auth_token"
    return Path(path).is_file()


def stop_ray() -> None:
    """End this driver's Ray. A local Ray it started is ended in three steps of at most a second each: the
    raylet (it ends its workers), then the GCS, the dashboard and the monitors together, then the reaper.
    Ray's own shutdown ends them one after another with a second each, about 4 s of a short study's end.
    Attached to a cluster, Ray's shutdown only disconnects; so does this."""
    import ray

    if not ray.is_initialized():
        return
    node = getattr(ray._private.worker, "_global_node", None)  # private: where it is missing, Ray's way
    if node is not None and isinstance(getattr(node, "all_processes", None), dict):
        node.kill_all_processes = lambda **_: _end_together(node.all_processes)
    ray.shutdown()


def _end_together(processes: dict) -> None:
    import signal
    import subprocess
    import time

    from ray import ray_constants

    def end(kinds, grace_s: float) -> None:
        running = [i.process for k in kinds for i in processes.pop(k, ()) if i.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while any(p.poll() is None for p in running) and time.monotonic() < deadline:
            time.sleep(0.02)
        for process in running:
            if process.poll() is None:
                process.kill()
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:  # unkillable (uninterruptible I/O): not ours to wait on
                    pass

    end([ray_constants.PROCESS_TYPE_RAYLET], 1.0)
    end([k for k in processes if k != ray_constants.PROCESS_TYPE_REAPER], 1.0)
    end(list(processes), 1.0)
