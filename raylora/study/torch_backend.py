"""Ray Train's PyTorch backend for the runners' worker groups, with torch imported on the workers alone.

A runner's Train controller runs in the pool actor (:func:`raylora.study.pool.run_controller_here`).
``ray.train.torch`` imports torch in whatever process builds a ``TorchTrainer``, so the pool actor imported
torch (1.5-3 s, and ~470 MB resident it never used) between its start and the first worker group's
placement: on the path to every study's first step. :class:`WorkerTorchConfig` does what ``TorchConfig``
does for a group, with the same Ray Train functions, but runs each of them on the workers, which import
torch anyway.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ray.train.backend import Backend, BackendConfig
from ray.train.v2._internal.util import TrainingFramework


@dataclass
class WorkerTorchConfig(BackendConfig):
    """``ray.train.torch.TorchConfig`` with ``init_method="env"``: ``backend`` is ``gloo`` or ``nccl``."""

    backend: str = "gloo"
    timeout_s: int = 1800

    @property
    def backend_cls(self):
        return WorkerTorchBackend

    @property
    def train_func_context(self):
        return _DeviceContext

    @property
    def framework(self):
        return TrainingFramework.TORCH

    def to_dict(self) -> dict:
        return {"backend": self.backend, "init_method": "env", "timeout_s": self.timeout_s}


class WorkerTorchBackend(Backend):
    """Ray Train's ``_TorchBackend`` for a V2 worker group: rank 0's address as ``MASTER_ADDR``/``PORT``,
    torchrun's rank variables, then one ``init_process_group`` per worker."""

    # As Ray's: the workers of a node see all of its group's GPUs, each taking ``cuda:<local rank>`` (with
    # only its own GPU visible, rank 1 of a node would ask for a device it cannot see).
    share_cuda_visible_devices = True

    def on_start(self, worker_group, backend_config: WorkerTorchConfig) -> None:
        import ray
        from ray.train._internal.utils import get_address_and_port

        addr, port = worker_group.execute_single(0, get_address_and_port)
        worker_group.execute(_set_env, addr=addr, port=port)
        world = len(worker_group)
        ray.get(
            [
                worker_group.execute_single_async(
                    rank, _init_process_group, backend_config.backend, rank, world, backend_config.timeout_s
                )
                for rank in range(world)
            ]
        )

    def on_shutdown(self, worker_group, backend_config: WorkerTorchConfig) -> None:
        import ray
        from ray._private import ray_constants
        from ray.exceptions import GetTimeoutError
        from ray.train.constants import (
            DEFAULT_TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S,
            TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S,
        )

        futures = worker_group.execute_async(_shutdown, destroy_process_group=len(worker_group) > 1)
        timeout_s = ray_constants.env_integer(
            TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S, DEFAULT_TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S
        )
        try:
            ray.get(futures, timeout=timeout_s)
        except GetTimeoutError:
            pass  # the workers are being torn down anyway; Ray Train only logs this too


# -- run on the workers -------------------------------------------------------------------------------


def _set_env(addr: str, port: int) -> None:
    from ray.train.torch.config import _set_torch_distributed_env_vars

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = addr, str(port)
    _set_torch_distributed_env_vars()


def _init_process_group(backend: str, rank: int, world: int, timeout_s: int) -> None:
    from ray.train.torch.config import _setup_torch_process_group

    _setup_torch_process_group(backend, rank, world, "env://", timeout_s)


def _shutdown(destroy_process_group: bool) -> None:
    from ray.train.torch.config import _shutdown_torch

    _shutdown_torch(destroy_process_group)


class _DeviceContext:
    """Ray Train's per-worker context for the train function (it selects the worker's CUDA device)."""

    def __enter__(self):
        from ray.train.torch.config import TorchConfigContextManager

        self._inner = TorchConfigContextManager()
        return self._inner.__enter__()

    def __exit__(self, *exc):
        return self._inner.__exit__(*exc)
