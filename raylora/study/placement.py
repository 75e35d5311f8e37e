"""How many trials a cluster holds at once, and whether a trial shape can ever fit.

Ray Tune does not reserve the Train workers' resources, and a ScalingConfig that can never be placed makes
Ray Train retry forever; so raylora checks the shape against the cluster's nodes before launching.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import SpecError
from ..spec.schema import Resources

# The Tune function trainable of a trial only waits on the trial pool; it needs almost no CPU.
TRIAL_DRIVER_CPU = 0.01
# A custom resource that cluster configs put on CPU-only nodes, so trial drivers stay off GPU workers.
TRIAL_DRIVER_RESOURCE = "trial_driver"


@dataclass(frozen=True)
class Node:
    """What one alive Ray node offers."""

    node_id: str
    address: str
    cpus: float
    gpus: float
    trial_drivers: float = 0.0


def nodes_from_ray(ray_nodes: list[dict]) -> list[Node]:
    """``ray.nodes()`` → alive nodes with their total CPUs and GPUs."""
    return [
        Node(
            n["NodeID"],
            n.get("NodeManagerAddress", ""),
            n["Resources"].get("CPU", 0.0),
            n["Resources"].get("GPU", 0.0),
            n["Resources"].get(TRIAL_DRIVER_RESOURCE, 0.0),
        )
        for n in ray_nodes
        if n.get("Alive")
    ]


def trial_driver_resources(nodes: list[Node]) -> dict[str, float]:
    """What a trial's Tune driver asks for: pinned to ``trial_driver`` nodes when the cluster has them."""
    if any(n.trial_drivers > 0 for n in nodes):
        return {"CPU": TRIAL_DRIVER_CPU, TRIAL_DRIVER_RESOURCE: 0.01}
    return {"CPU": TRIAL_DRIVER_CPU}


def spare_cpus(resources: Resources, nodes: list[Node], trials: int) -> float:
    """The CPUs left free on the cluster when ``trials`` trials run at once (their workers and Tune
    drivers), or 0 when a GPU a trial worker has is not left free too (what the base model's task needs)."""
    workers = trials * resources.workers_per_trial
    gpus = sum(n.gpus for n in nodes) - workers * resources.gpus_per_worker
    if gpus < resources.gpus_per_worker:
        return 0.0
    cpus = sum(n.cpus for n in nodes) - workers * resources.cpus_per_worker - trials * TRIAL_DRIVER_CPU
    return max(0.0, cpus)


def check_fits(resources: Resources, nodes: list[Node]) -> None:
    """Raise a SpecError when a trial of this shape can never be placed on these nodes."""
    workers, cpu, gpu = resources.workers_per_trial, resources.cpus_per_worker, resources.gpus_per_worker
    shape = f"a trial needs {workers} worker(s) × ({cpu:g} CPU, {gpu:g} GPU)"
    hosts = [n for n in nodes if n.cpus >= cpu and n.gpus >= gpu]
    if not hosts:
        largest = max(nodes, key=lambda n: (n.gpus, n.cpus), default=None)
        have = f"the largest node has {largest.cpus:g} CPU, {largest.gpus:g} GPU" if largest else "no nodes"
        raise SpecError("resources", f"{shape}; no node can host one worker ({have})")
    strategy = resources.placement_strategy
    if strategy == "STRICT_SPREAD" and len(hosts) < workers:
        raise SpecError(
            "resources.placement_strategy",
            f"STRICT_SPREAD puts each of {workers} workers on its own node, but only {len(hosts)} node(s) "
            "can host one; use SPREAD or fewer workers",
        )
    if strategy == "STRICT_PACK" and not any(per_node(resources, n) >= workers for n in nodes):
        raise SpecError(
            "resources.placement_strategy",
            f"STRICT_PACK puts all {workers} workers on one node, but no node holds them; use PACK",
        )
    if sum(per_node(resources, n) for n in nodes) < workers:
        total_cpu, total_gpu = sum(n.cpus for n in nodes), sum(n.gpus for n in nodes)
        raise SpecError("resources", f"{shape}, but the cluster has {total_cpu:g} CPU and {total_gpu:g} GPU")


def per_node(resources: Resources, node: Node) -> int:
    """How many workers of this shape one node holds."""
    fits = [math.floor(node.cpus / resources.cpus_per_worker + 1e-9)]
    if resources.gpus_per_worker:
        fits.append(math.floor(node.gpus / resources.gpus_per_worker + 1e-9))
    return max(0, min(fits))


def max_concurrent(resources: Resources, nodes: list[Node], num_trials: int) -> int:
    """How many trials run at once when ``study.max_concurrent_trials`` is ``auto``."""
    slots = sum(per_node(resources, n) for n in nodes) // resources.workers_per_trial
    spare_cpu = sum(n.cpus for n in nodes) - slots * resources.workers_per_trial * resources.cpus_per_worker
    if spare_cpu < slots * TRIAL_DRIVER_CPU:
        slots = max(1, slots - 1)
    return max(1, min(slots, num_trials))
