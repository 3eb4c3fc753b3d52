"""The compute nodes behind a cluster's Slurm queues, on the simulated clock: launch, idle, bill.

ParallelCluster's Slurm integration starts a dynamic node when a job arrives and no node of its
queue is free (the job waits the node's launch time), keeps it while jobs follow within
``ScaledownIdletime`` and terminates it after that much idle time; a queue's ``MinCount`` nodes are
static and run from the cluster's creation to its deletion. :class:`SlurmNodes` replays exactly that
for one cluster, from the cluster configuration the controller sent, so the cryoSPARC stand-in can
start each job when its node is ready, scale its duration by the node's GPU speed, and the benchmark
can bill every node for the time it was up (as EC2 does, per second).

A queue may list several compute resources (one instance type each, in order of preference). A
capacity fault (:meth:`SlurmNodes.set_capacity`) makes node launches of one instance type fail as
ParallelCluster reports them (user guide, "Slurm cluster fast insufficient capacity fail-over", 3.2+):

* an insufficient-capacity code (``InsufficientInstanceCapacity``, ``InsufficientHostCapacity``,
  ``InsufficientReservedInstanceCapacity``, ``MaxSpotInstanceCountExceeded``, ``SpotMaxPriceTooLow``,
  ``Unsupported``): the failed node goes ``idle%`` (POWER_DOWN_FORCE) with the reason
  ``(Code:<code>)Failure when resuming nodes``; the compute resource is disabled (its powered-down
  nodes ``down~``, reason ``(Code:<code>)Temporarily disabling node due to insufficient capacity``)
  for ``insufficient_capacity_timeout``; the job is requeued on the queue's next compute resource one
  clustermgtd loop later, or stays PENDING until a resource is enabled again;
* any other code (``VcpuLimitExceeded``, ...): the node is set down with the code in its reason and
  nothing fails over: the job stays PENDING.

Cluster creation never depends on it: the queues scale from zero.

A queue with ``CapacityType: SPOT`` buys Spot nodes. A Spot interruption
(:meth:`SlurmNodes.interrupt_spot`) follows the EC2 user guide ("Spot Instance interruption
notices"): EC2 gives the notice two minutes (:data:`SPOT_NOTICE_SECONDS`) before it reclaims the
instance; from then the node is gone (no longer listed by describeClusterInstances, billed up to
that moment) and the job that ran on it is lost.

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


#: Launch errors ParallelCluster fails over (user guide, "Slurm cluster fast insufficient capacity
#: fail-over"); any other code leaves the node down and the job pending.
FAST_FAILOVER_CODES = frozenset(
    {
        "InsufficientInstanceCapacity",
        "InsufficientHostCapacity",
        "InsufficientReservedInstanceCapacity",
        "MaxSpotInstanceCountExceeded",
        "SpotMaxPriceTooLow",
        "Unsupported",
    }
)
#: ParallelCluster's default ``insufficient_capacity_timeout`` (seconds).
DEFAULT_CAPACITY_TIMEOUT = 600.0
#: clustermgtd's loop (``loop_time``, 60 s by default): a failed launch is handled, and the job
#: requeued, one loop after it.
CLUSTERMGTD_LOOP_SECONDS = 60.0
#: EC2's Spot interruption notice comes two minutes before the instance is reclaimed (EC2 user
#: guide, "Spot Instance interruption notices").
SPOT_NOTICE_SECONDS = 120.0


@dataclass
class ResourceSpec:
    """One compute resource of a queue: one instance type."""

    name: str
    instance_type: str
    gpus: int
    usd_per_hour: float
    speed: float
    min_count: int = 0
    max_count: int = 10


@dataclass
class QueueSpec:
    name: str
    instance_type: str
    gpus: int
    min_count: int
    usd_per_hour: float
    speed: float  # cryoSPARC throughput of one GPU relative to the reference GPU (A100)
    #: The queue's compute resources in order of preference (default: one, of ``instance_type``).
    resources: list[ResourceSpec] = field(default_factory=list)
    #: ``CapacityType`` of the queue: ``ONDEMAND`` or ``SPOT``.
    capacity_type: str = "ONDEMAND"

    def __post_init__(self) -> None:
        if not self.resources:
            name = self.instance_type.replace(".", "-")
            self.resources = [
                ResourceSpec(
                    name, self.instance_type, self.gpus, self.usd_per_hour, self.speed, self.min_count
                )
            ]


@dataclass
class CapacityFault:
    """Node launches of one instance type fail with ``code`` from ``start`` to ``end``."""

    code: str
    start: float = float("-inf")
    end: float = float("inf")

    def active(self, t: float) -> bool:
        return self.start <= t < self.end


@dataclass
class LaunchFailure:
    """A node launch that failed: the node, its compute resource and the error."""

    queue: str
    resource: str
    instance_type: str
    node: str
    at: float
    code: str
    #: End of the compute resource's disabled period (fast fail-over), or inf (node left down).
    until: float


@dataclass
class JobWait:
    """How a job got (or did not get) its node: queued at ``since``, started at ``start`` (None:
    never, as far as the simulation knows), on ``resource``."""

    job: str
    queue: str
    since: float
    start: float | None
    resource: str | None = None
    node_launched_at: float | None = None
    end: float | None = None
    name: str = ""
    job_id: int = 0


@dataclass
class Node:
    queue: str
    instance_type: str
    gpus: int
    usd_per_hour: float
    static: bool
    launched_at: float
    ready_at: float
    resource: str = ""
    name: str = ""
    speed: float = 1.0
    busy: int = 0  # jobs running on it
    idle_from: float = 0.0
    terminated_at: float | None = None
    jobs: list[str] = field(default_factory=list)
    spot: bool = False
    #: A Spot interruption: its notice, and when EC2 reclaims the node (notice + two minutes).
    notice_at: float | None = None
    interrupted_at: float | None = None

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
        capacity_timeout: float = DEFAULT_CAPACITY_TIMEOUT,
    ) -> None:
        self.queues = {q.name: q for q in queues}
        self.idle = float(scaledown_idle_seconds)
        self.launch = float(launch_seconds)
        self.gpu_bound = gpu_bound_stages
        #: clustermgtd's ``insufficient_capacity_timeout`` (seconds).
        self.capacity_timeout = float(capacity_timeout)
        self.nodes: list[Node] = []
        self.shut_down_at: float | None = None
        #: Capacity faults by instance type (:meth:`set_capacity`).
        self.capacity: dict[str, CapacityFault] = {}
        #: Every failed node launch, in order.
        self.failures: list[LaunchFailure] = []
        #: Every job's wait for its node, by job key.
        self.waits: dict[str, JobWait] = {}
        self._serial: dict[tuple[str, str], int] = {}
        #: Spot interruptions still to come: seconds into its next job that a Spot node's notice comes.
        self._spot_interruptions: list[float] = []
        self._lock = threading.Lock()
        for q in queues:
            for r in q.resources:
                for _ in range(r.min_count):  # static nodes start with the cluster
                    self._launch(q, r, ready_at, static=True)

    def _launch(self, q: QueueSpec, r: ResourceSpec, t: float, *, static: bool) -> Node:
        """A node of ``q``'s compute resource ``r`` launched at ``t`` (ready one launch time later)."""
        node = Node(
            q.name,
            r.instance_type,
            r.gpus,
            r.usd_per_hour,
            static=static,
            launched_at=t,
            ready_at=t + self.launch,
            idle_from=t,
            resource=r.name,
            name=self._node_name(q.name, r.name, static=static),
            speed=r.speed,
            spot=q.capacity_type == "SPOT",
        )
        self.nodes.append(node)
        return node

    def _node_name(self, queue: str, resource: str, *, static: bool) -> str:
        """ParallelCluster's Slurm node name: ``<queue>-<st|dy>-<compute resource>-<n>``."""
        kind = "st" if static else "dy"
        n = self._serial.get((queue, resource + kind), 0) + 1
        self._serial[(queue, resource + kind)] = n
        return f"{queue}-{kind}-{resource}-{n}"

    # -- building from a cluster configuration ----------------------------------------------------

    @classmethod
    def from_cluster_config(
        cls,
        config_text: str,
        *,
        ready_at: float,
        region: str = "us-east-1",
        capacity_timeout: float = DEFAULT_CAPACITY_TIMEOUT,
    ) -> SlurmNodes:
        """Nodes of the cluster ``config_text`` (the YAML sent to createCluster) describes."""
        from cryopilot.domain.catalogue import PRICE_OVERRIDES_ENV, Catalogue

        catalogue = Catalogue.for_deployment(os.environ.get(PRICE_OVERRIDES_ENV))
        doc = yaml.safe_load(config_text)
        scheduling = doc.get("Scheduling") or {}
        settings = scheduling.get("SlurmSettings") or {}
        idle_minutes = float(settings.get("ScaledownIdletime", 10))

        def resource(item: dict[str, Any]) -> ResourceSpec:
            itype = str(item.get("InstanceType"))
            spec = catalogue.instance(itype)
            return ResourceSpec(
                name=str(item.get("Name") or itype.replace(".", "-")),
                instance_type=itype,
                gpus=spec.gpus,
                usd_per_hour=catalogue.price(itype, region),
                speed=catalogue.speed(itype) / catalogue.speed("p4d.24xlarge") if spec.gpus else 1.0,
                min_count=int(item.get("MinCount", 0)),
                max_count=int(item.get("MaxCount", 10)),
            )

        queues = []
        for queue in scheduling.get("SlurmQueues") or []:
            items = queue.get("ComputeResources") or [{}]
            # Slurm allocates the lowest node weight (DynamicNodePriority) first; ties keep the list order.
            ordered = sorted(
                enumerate(items), key=lambda e: (int(e[1].get("DynamicNodePriority", 1000)), e[0])
            )
            resources = [resource(item) for _, item in ordered]
            first = resources[0]
            queues.append(
                QueueSpec(
                    capacity_type=str(queue.get("CapacityType") or "ONDEMAND"),
                    name=str(queue["Name"]),
                    instance_type=first.instance_type,
                    gpus=first.gpus,
                    min_count=first.min_count,
                    usd_per_hour=first.usd_per_hour,
                    speed=first.speed,
                    resources=resources,
                )
            )
        return cls(
            queues,
            ready_at=ready_at,
            scaledown_idle_seconds=idle_minutes * 60.0,
            launch_seconds=catalogue.timings.node_launch_seconds.value,
            gpu_bound_stages=catalogue.speed_table.gpu_bound_stages,
            capacity_timeout=capacity_timeout,
        )

    # -- capacity ---------------------------------------------------------------------------------

    def set_capacity(
        self, instance_type: str, code: str, *, start: float = float("-inf"), end: float = float("inf")
    ) -> None:
        """Node launches of ``instance_type`` fail with the EC2 error ``code`` from ``start`` to ``end``."""
        with self._lock:
            self.capacity[instance_type] = CapacityFault(code, start, end)

    def _disabled_until(self, queue: str, resource: str, t: float) -> float | None:
        """End of the fast fail-over period of a compute resource that is disabled at ``t``."""
        ends = [
            f.until
            for f in self.failures
            if f.queue == queue
            and f.resource == resource
            and f.code in FAST_FAILOVER_CODES
            and f.at + CLUSTERMGTD_LOOP_SECONDS <= t < f.until
        ]
        return max(ends) if ends else None

    def _place(self, q: QueueSpec, t: float, job: str) -> tuple[Node | None, float | None]:
        """Launch a node for ``job`` of ``q`` at ``t``, failing over as ParallelCluster does: the
        node, and the time it was launched (None, None when no launch can succeed)."""
        for _ in range(64):  # bounded: a capacity fault that never ends leaves the job pending
            usable = [r for r in q.resources if self._disabled_until(q.name, r.name, t) is None]
            if not usable:
                ends = [self._disabled_until(q.name, r.name, t) or t for r in q.resources]
                t = min(ends)  # PENDING until a compute resource is enabled again
                continue
            r = usable[0]
            fault = self.capacity.get(r.instance_type)
            if fault is None or not fault.active(t):
                return self._launch(q, r, t, static=False), t
            fast = fault.code in FAST_FAILOVER_CODES
            node = self._node_name(q.name, r.name, static=False)
            self.failures.append(
                LaunchFailure(
                    q.name,
                    r.name,
                    r.instance_type,
                    node,
                    t,
                    fault.code,
                    t + CLUSTERMGTD_LOOP_SECONDS + self.capacity_timeout if fast else float("inf"),
                )
            )
            if not fast:
                return None, None  # the node stays down with its code; nothing fails over
            t += CLUSTERMGTD_LOOP_SECONDS  # the job is requeued one clustermgtd loop later
        return None, None

    def interrupt_spot(self, after_seconds: float, count: int = 1) -> None:
        """The next ``count`` Spot nodes to be given a job get EC2's interruption notice
        ``after_seconds`` after the job starts, and are reclaimed :data:`SPOT_NOTICE_SECONDS` later."""
        with self._lock:
            self._spot_interruptions += [float(after_seconds)] * count

    def interruption(self, job: str) -> tuple[float, float] | None:
        """(notice, reclaimed) of the Spot node ``job`` runs on, if EC2 interrupts it."""
        with self._lock:
            node = next((n for n in reversed(self.nodes) if job in n.jobs), None)  # its latest node
        if node is None or node.interrupted_at is None or node.notice_at is None:
            return None
        return node.notice_at, node.interrupted_at

    # -- jobs -------------------------------------------------------------------------------------

    def speed(self, queue: str, stage_kind: str) -> float:
        """Divisor of a stage's Table 1 wall time on ``queue``'s preferred type (1.0 for stages not
        GPU-bound)."""
        q = self.queues.get(queue)
        if q is None or stage_kind not in self.gpu_bound:
            return 1.0
        return q.speed

    def job_speed(self, job: str, stage_kind: str) -> float:
        """Divisor of a stage's wall time on the node ``job`` got (1.0 for stages not GPU-bound)."""
        with self._lock:
            wait = self.waits.get(job)
            node = next((n for n in reversed(self.nodes) if job in n.jobs), None)  # its latest node
        if node is None or stage_kind not in self.gpu_bound:
            return self.speed(wait.queue, stage_kind) if wait else 1.0
        return node.speed

    def _retire_idle(self, t: float) -> None:
        for node in self.nodes:
            if node.terminated_at is None and node.interrupted_at is not None and node.interrupted_at <= t:
                node.terminated_at = node.interrupted_at  # reclaimed by EC2 (Spot interruption)
                continue
            idle_out = node.terminated_at is None and not node.static and not node.busy
            if idle_out and t > node.idle_from + self.idle:
                node.terminated_at = node.idle_from + self.idle

    def acquire(self, queue: str, t: float, job: str = "", name: str = "") -> float | None:
        """A job of ``queue`` is ready to run at ``t``: the time it starts (a free node's ready time,
        or the ready time of a new node, after any fail-over), or None if no node can be launched."""
        with self._lock:
            if queue not in self.queues:
                raise KeyError(f"no queue {queue!r} in this cluster")
            self._retire_idle(t)
            free = [
                n
                for n in self.nodes
                if n.queue == queue
                and n.terminated_at is None
                and not n.busy
                and (n.notice_at is None or n.notice_at > t)  # no job goes to a node under notice
            ]
            launched: float | None = None
            if free:
                node: Node | None = min(free, key=lambda n: n.ready_at)
            else:
                node, launched = self._place(self.queues[queue], t, job)
            if job:
                self.waits[job] = JobWait(
                    job,
                    queue,
                    since=t,
                    start=None if node is None else max(t, node.ready_at),
                    resource=None if node is None else node.resource,
                    node_launched_at=launched,
                    name=name or job,
                    job_id=len(self.waits) + 1,
                )
            if node is None:
                return None
            node.busy += 1
            node.jobs.append(job)
            if node.spot and node.interrupted_at is None and self._spot_interruptions:
                node.notice_at = max(t, node.ready_at) + self._spot_interruptions.pop(0)
                node.interrupted_at = node.notice_at + SPOT_NOTICE_SECONDS
            return max(t, node.ready_at)

    def release(self, queue: str, t: float, job: str = "") -> None:
        """The job ``job`` of ``queue`` ended at ``t``: its node starts idling."""
        with self._lock:
            for node in self.nodes:
                if node.queue == queue and node.busy and node.terminated_at is None and job in node.jobs:
                    node.busy -= 1
                    node.idle_from = max(node.idle_from, t)
                    if job in self.waits:
                        self.waits[job].end = t
                    return
            if job in self.waits and self.waits[job].end is None:  # cancelled while pending
                self.waits[job].end = t

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

    # -- what Slurm and EC2 show at a time ---------------------------------------------------------

    def _node_rows(self, now: float) -> list[tuple[str, str, str, str]]:
        """(partition, node, compact state, reason) of every node, as ``sinfo --Node`` lists them."""
        rows: list[tuple[str, str, str, str]] = []
        for q in self.queues.values():
            for r in q.resources:
                shown: set[str] = set()
                for n in self.nodes:
                    if n.queue != q.name or n.resource != r.name or n.launched_at > now:
                        continue
                    if n.terminated_at is not None and n.terminated_at <= now:
                        continue
                    if n.interrupted_at is not None and n.interrupted_at <= now:
                        continue
                    state = "alloc#" if now < n.ready_at else ("alloc" if n.busy else "idle")
                    rows.append((q.name, n.name, state, ""))
                    shown.add(n.name)
                disabled = self._disabled_until(q.name, r.name, now)
                for f in self.failures:
                    if f.queue != q.name or f.resource != r.name or f.at > now:
                        continue
                    if f.code not in FAST_FAILOVER_CODES:
                        rows.append((q.name, f.node, "down#", f"(Code:{f.code})Failure when resuming nodes"))
                        shown.add(f.node)
                    elif now < f.at + CLUSTERMGTD_LOOP_SECONDS:  # POWER_DOWN_FORCE of the failed node
                        rows.append((q.name, f.node, "idle%", f"(Code:{f.code})Failure when resuming nodes"))
                        shown.add(f.node)
                code = next(
                    (f.code for f in reversed(self.failures) if f.resource == r.name and f.queue == q.name),
                    "",
                )
                for i in range(1, r.max_count + 1):
                    name = f"{q.name}-dy-{r.name}-{i}"
                    if name in shown or len(shown) >= r.max_count:
                        continue
                    shown.add(name)
                    if disabled is not None:
                        reason = f"(Code:{code})Temporarily disabling node due to insufficient capacity"
                        rows.append((q.name, name, "down~", reason))
                    else:
                        rows.append((q.name, name, "idle~", ""))
        return rows

    def _job_rows(self, now: float) -> list[tuple[int, str, str, str, str]]:
        """(job id, name, partition, state, reason) of the jobs Slurm holds at ``now``."""
        rows = []
        for w in self.waits.values():
            if w.since > now or (w.end is not None and w.end <= now):
                continue
            if w.start is not None and w.start <= now:
                rows.append((w.job_id, w.name, w.queue, "RUNNING", "None"))
            elif w.node_launched_at is not None and w.node_launched_at <= now:
                rows.append((w.job_id, w.name, w.queue, "CONFIGURING", "None"))
            else:
                down = [n for p, n, st, _ in self._node_rows(now) if p == w.queue and st.startswith("down")]
                reason = f"ReqNodeNotAvail, UnavailableNodes:{','.join(down)}" if down else "Resources"
                rows.append((w.job_id, w.name, w.queue, "PENDING", reason))
        return rows

    def command(self, argv: list[str], now: float) -> str:
        """The output of the Slurm commands the head-node agent runs, at ``now``:
        ``sinfo --noheader --Node --format=%R|%N|%t|%E`` and ``squeue --noheader
        --format=%i|%j|%P|%T|%r`` (sinfo prints ``none`` for an empty reason)."""
        with self._lock:
            if argv and argv[0] == "sinfo":
                lines = [f"{p}|{n}|{st}|{reason or 'none'}" for p, n, st, reason in self._node_rows(now)]
            elif argv and argv[0] == "squeue":
                lines = [f"{i}|{name}|{p}|{st}|{reason}" for i, name, p, st, reason in self._job_rows(now)]
            else:
                raise FileNotFoundError(argv[0] if argv else "")
        return "".join(line + "\n" for line in lines)

    def instances(self, now: float) -> list[dict[str, Any]]:
        """The compute instances EC2 lists at ``now`` (pending or running; a terminated one is not
        listed, as ParallelCluster's describeClusterInstances filters on those states)."""
        with self._lock:
            listed = []
            for i, n in enumerate(self.nodes):
                if n.launched_at > now or (n.terminated_at is not None and n.terminated_at <= now):
                    continue
                if not n.static and not n.busy and now > n.idle_from + self.idle:
                    continue  # Slurm powered it down (ScaledownIdletime), whether or not a job came since
                if n.interrupted_at is not None and n.interrupted_at <= now:
                    continue  # reclaimed by EC2 after its Spot interruption notice
                listed.append(
                    {
                        "index": i,
                        "queue": n.queue,
                        "instance_type": n.instance_type,
                        "launched_at": n.launched_at,
                        "state": "running" if now >= n.launched_at + CLUSTERMGTD_LOOP_SECONDS else "pending",
                    }
                )
            return listed

    # -- the bill ---------------------------------------------------------------------------------

    def bill(self) -> list[dict[str, Any]]:
        """One line per node that ran: queue, type, GPUs, launch/termination times, hours, cost."""
        with self._lock:
            for n in self.nodes:  # a reclaimed Spot node is billed up to the moment EC2 took it
                if n.interrupted_at is not None and (
                    n.terminated_at is None or n.terminated_at > n.interrupted_at
                ):
                    n.terminated_at = n.interrupted_at
            return [
                {
                    "queue": n.queue,
                    "instance_type": n.instance_type,
                    "compute_resource": n.resource,
                    "gpus": n.gpus,
                    "static": n.static,
                    "spot": n.spot,
                    "interrupted_at": n.interrupted_at,
                    "launched_at": n.launched_at,
                    "terminated_at": n.terminated_at,
                    "hours": n.hours(),
                    "gpu_hours": n.hours() * n.gpus,
                    "cost_usd": n.hours() * n.usd_per_hour,
                    "jobs": [j for j in n.jobs if j],
                }
                for n in self.nodes
            ]
