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
#: GPUs per node each queue is meant for (its default type's); ``clusterconfig.queue_gpus`` has
#: the GPUs of the types a deployment chose.
NOMINAL_QUEUE_GPUS = {GPU8_QUEUE: 8, GPU4_QUEUE: 4, GPU1_QUEUE: 1}
