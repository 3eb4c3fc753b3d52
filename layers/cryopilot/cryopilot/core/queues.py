"""The cluster's GPU queues: one Slurm queue and one cryoSPARC lane of the same name each.

This is the one registry of queue names and their nominal GPUs per node; the lane type the agent
speaks (``protocol.stage.Lane``) lists the same names, which a unit test holds.
"""

from __future__ import annotations

GPU8_QUEUE = "gpu8"
GPU4_QUEUE = "gpu4"
GPU1_QUEUE = "gpu1"
#: Every GPU queue, in the order the cluster lists them.
GPU_QUEUES = (GPU8_QUEUE, GPU4_QUEUE, GPU1_QUEUE)
#: Suffix of a GPU queue's Spot twin (``CapacityType: SPOT``, the same compute resources), which a
#: run with ``capacity: spot-where-safe`` adds for the queues of its Spot stages (core.spot).
SPOT_SUFFIX = "-spot"
#: The Spot twins, in the same order.
SPOT_QUEUES = tuple(q + SPOT_SUFFIX for q in GPU_QUEUES)
#: Every queue a stage may run on: one cryoSPARC lane of the same name each.
LANES = GPU_QUEUES + SPOT_QUEUES
#: GPUs per node each queue is meant for (its default type's); ``clusterconfig.queue_gpus`` has
#: the GPUs of the types a deployment chose. A Spot twin has its queue's.
NOMINAL_QUEUE_GPUS = {GPU8_QUEUE: 8, GPU4_QUEUE: 4, GPU1_QUEUE: 1}
NOMINAL_QUEUE_GPUS.update({q + SPOT_SUFFIX: n for q, n in list(NOMINAL_QUEUE_GPUS.items())})
