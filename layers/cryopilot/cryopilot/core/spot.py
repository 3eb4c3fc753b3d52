"""Spot capacity: which queue a stage uses when it may run on Spot.

ParallelCluster sets ``CapacityType`` per Slurm queue (``ONDEMAND``, ``SPOT`` or ``CAPACITY_BLOCK``;
user guide, Scheduling section, ``SlurmQueues`` / ``CapacityType``), so a GPU queue that may buy Spot
gets a twin queue of the same compute resources with ``CapacityType: SPOT``: ``<queue>-spot``.
"""

from __future__ import annotations

from cryopilot.core.queues import GPU_QUEUES, SPOT_SUFFIX


def spot_queue(queue: str) -> str:
    """The Spot twin of the On-Demand GPU queue ``queue`` (``gpu8`` → ``gpu8-spot``)."""
    if queue not in GPU_QUEUES:
        raise ValueError(f"{queue!r} is not a GPU queue")
    return queue + SPOT_SUFFIX


def on_demand_queue(queue: str) -> str:
    """The On-Demand queue of ``queue`` (itself, or the queue a Spot twin doubles)."""
    return queue.removesuffix(SPOT_SUFFIX)


def is_spot_queue(queue: str | None) -> bool:
    return bool(queue) and str(queue).endswith(SPOT_SUFFIX) and on_demand_queue(str(queue)) in GPU_QUEUES
