"""The compute nodes behind a cluster's Slurm queues, on the simulated clock: launch, idle, bill.

ParallelCluster's Slurm integration starts a dynamic node when a job arrives and no node of its
queue is free (the job waits the node's launch time), keeps it while jobs follow within
``ScaledownIdletime`` and terminates it after that much idle time; a queue's ``MinCount`` nodes are
static and run from the cluster's creation to its deletion. :class:`SlurmNodes` replays exactly that
for one cluster, from the cluster configuration the controller sent, so the cryoSPARC stand-in can
start each job when its node is ready, scale its duration by the node's GPU speed, and the benchmark
can bill every node for the time it was up (as EC2 does, per second).

Prices and GPU speeds come from the controller's own instance catalogue (``cryopilot.domain.catalogue``), so a
figure the benchmark prints is the figure an estimate would print for the same timeline.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any

import yaml

#: Node launch time when none is given (the catalogue's assumption is used when built from a config).
_DEFAULT_LAUNCH_SECONDS = 420.0


@dataclass
class QueueSpec:
    name: str
    instance_type: str
    gpus: int
    min_count: int
    usd_per_hour: float
    speed: float  # cryoSPARC throughput of one GPU relative to the reference GPU (A100)


@dataclass
class Node:
    queue: str
    instance_type: str
    gpus: int
    usd_per_hour: float
    static: bool
    launched_at: float
    ready_at: float
    busy: int = 0  # jobs running on it
    idle_from: float = 0.0
    terminated_at: float | None = None
    jobs: list[str] = field(default_factory=list)

    def hours(self) -> float:
        end = self.terminated_at if self.terminated_at is not None else self.launched_at
        return max(0.0, end - self.launched_at) / 3600.0


class SlurmNodes:
    """Nodes of one cluster. Times are simulated epoch seconds."""

    def __init__(
        self,
        queues: list[QueueSpec],
        *,
        ready_at: float,
        scaledown_idle_seconds: float,
        launch_seconds: float = _DEFAULT_LAUNCH_SECONDS,
        gpu_bound_stages: frozenset[str] = frozenset(),
    ) -> None:
        self.queues = {q.name: q for q in queues}
        self.idle = float(scaledown_idle_seconds)
        self.launch = float(launch_seconds)
        self.gpu_bound = gpu_bound_stages
        self.nodes: list[Node] = []
        self.shut_down_at: float | None = None
        self._lock = threading.Lock()
        for q in queues:
            for _ in range(q.min_count):  # static nodes start with the cluster
                self._launch(q, ready_at, static=True)

    def _launch(self, q: QueueSpec, t: float, *, static: bool) -> Node:
        """A node of ``q`` launched at ``t`` (ready one launch time later)."""
        node = Node(
            q.name,
            q.instance_type,
            q.gpus,
            q.usd_per_hour,
            static=static,
            launched_at=t,
            ready_at=t + self.launch,
            idle_from=t,
        )
        self.nodes.append(node)
        return node

    # -- building from a cluster configuration ----------------------------------------------------

    @classmethod
    def from_cluster_config(
        cls, config_text: str, *, ready_at: float, region: str = "us-east-1"
    ) -> SlurmNodes:
        """Nodes of the cluster ``config_text`` (the YAML sent to createCluster) describes."""
        from cryopilot.domain.catalogue import PRICE_OVERRIDES_ENV, Catalogue

        catalogue = Catalogue.for_deployment(os.environ.get(PRICE_OVERRIDES_ENV))
        doc = yaml.safe_load(config_text)
        scheduling = doc.get("Scheduling") or {}
        settings = scheduling.get("SlurmSettings") or {}
        idle_minutes = float(settings.get("ScaledownIdletime", 10))
        queues = []
        for queue in scheduling.get("SlurmQueues") or []:
            resource = (queue.get("ComputeResources") or [{}])[0]
            itype = str(resource.get("InstanceType"))
            spec = catalogue.instance(itype)
            queues.append(
                QueueSpec(
                    name=str(queue["Name"]),
                    instance_type=itype,
                    gpus=spec.gpus,
                    min_count=int(resource.get("MinCount", 0)),
                    usd_per_hour=catalogue.price(itype, region),
                    speed=catalogue.speed(itype) / catalogue.speed("p4d.24xlarge") if spec.gpus else 1.0,
                )
            )
        return cls(
            queues,
            ready_at=ready_at,
            scaledown_idle_seconds=idle_minutes * 60.0,
            launch_seconds=catalogue.timings.node_launch_seconds.value,
            gpu_bound_stages=catalogue.speed_table.gpu_bound_stages,
        )

    # -- jobs -------------------------------------------------------------------------------------

    def speed(self, queue: str, stage_kind: str) -> float:
        """Divisor of a stage's Table 1 wall time on ``queue`` (1.0 for stages not GPU-bound)."""
        q = self.queues.get(queue)
        if q is None or stage_kind not in self.gpu_bound:
            return 1.0
        return q.speed

    def _retire_idle(self, t: float) -> None:
        for node in self.nodes:
            idle_out = node.terminated_at is None and not node.static and not node.busy
            if idle_out and t > node.idle_from + self.idle:
                node.terminated_at = node.idle_from + self.idle

    def acquire(self, queue: str, t: float, job: str = "") -> float:
        """A job of ``queue`` is ready to run at ``t``: the time it starts (a free node's ready time,
        or ``t`` plus the launch time of a new node)."""
        with self._lock:
            if queue not in self.queues:
                raise KeyError(f"no queue {queue!r} in this cluster")
            self._retire_idle(t)
            free = [n for n in self.nodes if n.queue == queue and n.terminated_at is None and not n.busy]
            if free:
                node = min(free, key=lambda n: n.ready_at)
            else:
                node = self._launch(self.queues[queue], t, static=False)
            node.busy += 1
            node.jobs.append(job)
            return max(t, node.ready_at)

    def release(self, queue: str, t: float, job: str = "") -> None:
        """The job ``job`` of ``queue`` ended at ``t``: its node starts idling."""
        with self._lock:
            for node in self.nodes:
                if node.queue == queue and node.busy and node.terminated_at is None and job in node.jobs:
                    node.busy -= 1
                    node.idle_from = max(node.idle_from, t)
                    return

    def shutdown(self, t: float) -> None:
        """The cluster's deletion was requested at ``t``: every node still up is terminated."""
        with self._lock:
            if self.shut_down_at is not None:
                return
            self._retire_idle(t)
            for node in self.nodes:
                if node.terminated_at is None:
                    node.terminated_at = t
            self.shut_down_at = t

    # -- the bill ---------------------------------------------------------------------------------

    def bill(self) -> list[dict[str, Any]]:
        """One line per node that ran: queue, type, GPUs, launch/termination times, hours, cost."""
        with self._lock:
            return [
                {
                    "queue": n.queue,
                    "instance_type": n.instance_type,
                    "gpus": n.gpus,
                    "static": n.static,
                    "launched_at": n.launched_at,
                    "terminated_at": n.terminated_at,
                    "hours": n.hours(),
                    "gpu_hours": n.hours() * n.gpus,
                    "cost_usd": n.hours() * n.usd_per_hour,
                    "jobs": [j for j in n.jobs if j],
                }
                for n in self.nodes
            ]
