"""What the GPU nodes cost: one model for the estimate before a run, the cost so far during it and
the bill after it.

Every figure takes the same inputs:

* per queue, a :class:`NodeType`: instance type, GPUs per node, On-Demand USD per hour;
* the queue's :class:`Job` s: when each went to Slurm, started and ended, and the nodes it used;
* Slurm's ``ScaledownIdletime``; optionally the run's end (no node outlives it) or a node held for
  the whole run.

and follows the same rules, those of ParallelCluster's Slurm power saving and EC2's per-second
billing:

* a queue's node is still up when a job arrives at most ``idle_seconds`` after the end of its last
  job (:func:`node_up`); otherwise a node launches for the job, and is paid from the job's
  submission (the launch the job waits for is paid too);
* a node is paid until ``idle_seconds`` after its last job, or the run's end if that comes first
  (:func:`node_spans`); a held queue's node is paid for the span it is held (:func:`bill_queue`);
* a job's own run time costs its nodes × its run time × the price (:func:`run_time_cost`): what the
  stages' times alone cost, a lower bound of the bill.

:func:`cryopilot.domain.estimate.estimate` replays a plan on these rules, the Stage step's cost so
far uses :func:`run_time_cost`, and the report's :func:`node_bill` bills the recorded stage times.
Once the run has listed its nodes (ParallelCluster's ``describeClusterInstances``, kept on the record
as ``compute_nodes``), :func:`node_lives` and :func:`lifetime_bill` bill those nodes instead: each
from its launch time to its end, at its own type's price. A listing says a node's launch exactly
but its end only within two listings (seen at one, gone at the next); the end is placed inside that
bracket by the same rules (:func:`node_end`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from cryopilot.core.queues import NOMINAL_QUEUE_GPUS

if TYPE_CHECKING:  # only a type here: a function that formats costs need not load the catalogue
    from cryopilot.domain.catalogue import Catalogue

__all__ = [
    "NODES_BILLED",
    "NODE_LIFETIMES",
    "STAGE_TIME",
    "Job",
    "NodeLife",
    "NodeType",
    "QueueBill",
    "Span",
    "bill_queue",
    "cost_text",
    "lifetime_bill",
    "node_bill",
    "node_end",
    "node_lives",
    "node_spans",
    "node_type",
    "node_up",
    "run_time_cost",
    "storage_cost",
]

#: Hours in the month that storage prices per GB-month are prorated over (AWS bills by the second).
HOURS_PER_MONTH = 730

#: ``cost_basis`` of a run record whose ``cost_usd`` is :func:`node_bill`'s estimate
NODES_BILLED = "nodes billed"
#: ``cost_basis`` of a run record whose ``cost_usd`` bills the nodes that ran (:func:`lifetime_bill`)
NODE_LIFETIMES = "node lifetimes"
#: ``cost_basis`` of a run record whose ``cost_usd`` counts the stages' own run time only
STAGE_TIME = "stage time"


@dataclass(frozen=True)
class NodeType:
    """One node of a queue: its instance type, GPUs and On-Demand price."""

    instance_type: str
    gpus: int
    usd_per_hour: float

    def nodes_for(self, gpus: int) -> int:
        """Whole nodes a job with ``gpus`` GPUs needs (at least one)."""
        return max(1, math.ceil(gpus / max(1, self.gpus)))


def node_type(catalogue: Catalogue, instance_type: str, region: str) -> NodeType:
    """The catalogue's node of ``instance_type`` at its ``region`` price."""
    return NodeType(instance_type, catalogue.gpus(instance_type), catalogue.price(instance_type, region))


@dataclass(frozen=True)
class Job:
    """One job on a queue, in seconds on any common clock.

    ``went``: when it went to Slurm (a node launched for it, if none was up, is paid from here);
    ``start`` and ``end``: its run; ``nodes``: whole nodes it held; ``gpus``: GPUs it kept busy.
    """

    went: float
    start: float
    end: float
    nodes: int = 1
    gpus: int = 0

    @property
    def run_seconds(self) -> float:
        return max(0.0, self.end - self.start)


@dataclass(frozen=True)
class Span:
    """``nodes`` nodes up (and paid) from ``start`` to ``end``."""

    start: float
    end: float
    nodes: int = 1


def node_up(last_end: float | None, t: float, idle_seconds: float) -> bool:
    """Whether a queue whose last job ended at ``last_end`` (None: no job yet) still has its node up
    at ``t``: Slurm stops a node ``idle_seconds`` after its last job."""
    return last_end is not None and t - last_end <= idle_seconds


def node_spans(jobs: Iterable[Job], *, idle_seconds: float, until: float | None = None) -> list[Span]:
    """The spans a queue's nodes are up for ``jobs``: a node launches when a job goes to Slurm and
    none is up, serves the jobs that come while it is up, and stops ``idle_seconds`` after its last
    job, or at ``until`` (the run's end) if that is earlier but not before that job's end.

    Nodes are counted per span as the most any of its jobs needs: a run's jobs go one after another.
    """
    open_spans: list[tuple[float, float, int]] = []  # (up from, last job's end, nodes)
    for job in sorted(jobs, key=lambda j: (j.went, j.end, j.nodes)):
        if open_spans and node_up(open_spans[-1][1], job.went, idle_seconds):
            up_from, last_end, most = open_spans[-1]
            open_spans[-1] = (up_from, max(last_end, job.end), max(most, job.nodes))
        else:
            open_spans.append((job.went, job.end, job.nodes))
    return [
        Span(a, b + idle_seconds if until is None else min(b + idle_seconds, max(b, until)), n)
        for a, b, n in open_spans
    ]


@dataclass(frozen=True)
class QueueBill:
    """What one queue's nodes cost for its jobs."""

    node: NodeType
    spans: tuple[Span, ...]
    busy_gpu_seconds: float

    @property
    def launches(self) -> int:
        return len(self.spans)

    @property
    def node_hours(self) -> float:
        return sum(s.nodes * max(0.0, s.end - s.start) for s in self.spans) / 3600

    @property
    def gpu_hours(self) -> float:
        return self.node_hours * self.node.gpus

    @property
    def busy_gpu_hours(self) -> float:
        return self.busy_gpu_seconds / 3600

    @property
    def cost_usd(self) -> float:
        return self.node_hours * self.node.usd_per_hour


def bill_queue(
    node: NodeType,
    jobs: Sequence[Job],
    *,
    idle_seconds: float,
    until: float | None = None,
    held: tuple[float, float] | None = None,
) -> QueueBill:
    """The bill of one queue's ``jobs``: its nodes' :func:`node_spans`, or with ``held`` (from, to)
    one span of the most nodes a job needs, held from ``from`` to ``to`` (a static node)."""
    if held is not None:
        spans = [Span(held[0], held[1], max((j.nodes for j in jobs), default=1))]
    else:
        spans = node_spans(jobs, idle_seconds=idle_seconds, until=until)
    busy = sum(j.gpus * j.run_seconds for j in jobs)
    return QueueBill(node=node, spans=tuple(spans), busy_gpu_seconds=busy)


def run_time_cost(node: NodeType, job: Job) -> float:
    """What the job's own run time costs: its nodes × run hours × the price (no launch, no idle)."""
    return job.nodes * (job.run_seconds / 3600) * node.usd_per_hour


def storage_cost(gb: float, usd_per_gb_month: float, hours: float) -> float:
    """What ``gb`` of provisioned storage costs for ``hours`` at ``usd_per_gb_month`` (prorated over
    :data:`HOURS_PER_MONTH`): the FSx for Lustre file system's share of a run's cost."""
    return gb * usd_per_gb_month * max(0.0, hours) / HOURS_PER_MONTH


# --- the bill of a run's recorded stage times -------------------------------------------------------


class StageTimes(Protocol):
    """A recorded stage as :func:`node_bill` reads it (``domain.report.StageRow`` is one)."""

    @property
    def queue(self) -> str: ...
    @property
    def instance_type(self) -> str | None: ...
    @property
    def nodes(self) -> int | None: ...
    @property
    def gpus(self) -> int: ...
    @property
    def submitted_at(self) -> datetime | None: ...
    @property
    def started_at(self) -> datetime | None: ...
    @property
    def completed_at(self) -> datetime | None: ...


def _recorded_job(row: StageTimes, end: datetime, nodes: int) -> Job:
    went = row.submitted_at or row.started_at or end
    start = row.started_at or went
    return Job(
        went=went.timestamp(), start=start.timestamp(), end=end.timestamp(), nodes=nodes, gpus=row.gpus
    )


def node_bill(
    rows: Sequence[StageTimes],
    *,
    prices: Callable[[str], float | None],
    idle_seconds: float,
    held: frozenset[str] = frozenset(),
    held_from: datetime | None = None,
    until: datetime | None = None,
    node_gpus: Mapping[str, int] = NOMINAL_QUEUE_GPUS,
) -> tuple[float, float] | None:
    """(USD, GPU-hours) the compute stages' nodes are billed, from the recorded stage times: per
    queue, the jobs go to Slurm at their ``submitted_at`` and :func:`bill_queue` bills them, nodes
    stopping at ``until`` (the run's end) at the latest. A ``held`` queue's node is up from
    ``held_from`` (the cluster ready) to ``until``. ``node_gpus`` are each queue's GPUs per node.
    None when a stage has no end, no instance type or no price.
    """
    end = until.timestamp() if until else None
    cost = gpu_hours = 0.0
    for queue in sorted({r.queue for r in rows}):
        on_queue = [r for r in rows if r.queue == queue]
        instance = on_queue[0].instance_type
        price = prices(instance) if instance else None
        if instance is None or price is None:
            return None
        jobs = []
        for r in on_queue:
            if r.completed_at is None or r.nodes is None:
                return None
            jobs.append(_recorded_job(r, r.completed_at, r.nodes))
        span = (
            (held_from.timestamp(), end)
            if queue in held and held_from is not None and end is not None
            else None
        )
        bill = bill_queue(
            NodeType(instance, node_gpus.get(queue, 0), price),
            jobs,
            idle_seconds=idle_seconds,
            until=end,
            held=span,
        )
        cost += bill.cost_usd
        gpu_hours += bill.gpu_hours
    return cost, gpu_hours


# --- the bill of the nodes that ran ------------------------------------------------------------------


def node_end(
    node: Mapping[str, Any],
    *,
    spans: Sequence[Span],
    until: float,
    held: bool = False,
    reclaimed: Sequence[float] = (),
) -> float:
    """When one listed node (``domain.nodes``: ``launched_at``, ``last_seen``, ``ended_by``) stopped
    being paid. It was up at ``last_seen`` and gone by ``ended_by`` (``until``, the run's end or now,
    while it is still listed); inside that bracket its end is Slurm's (:func:`node_spans` of its
    queue's jobs: the span that started closest to its launch), since listings come minutes apart.
    A ``held`` (static) node is paid until the bracket's end; a Spot node EC2 reclaimed
    (``reclaimed``: when the jobs of its queue died with their node) until that moment, if it lies
    in the bracket: EC2 takes it then, with no idle time."""
    launched = float(node["launched_at"])
    ended_by = node.get("ended_by")
    upper = min(float(ended_by), until) if ended_by is not None else until
    lower = min(upper, max(launched, float(node.get("last_seen") or launched)))
    taken = [t for t in reclaimed if lower <= t <= upper]
    if taken:
        return max(launched, min(taken))
    if held or not spans:
        return max(launched, upper)
    span = min(spans, key=lambda s: abs(s.start - launched))
    return max(launched, min(upper, max(lower, span.end)))


@dataclass(frozen=True)
class NodeLife:
    """One listed node as billed: its queue and type, launch and end (epoch seconds), cost, GPUs."""

    queue: str
    instance_type: str
    launched_at: float
    ended_at: float
    cost_usd: float
    gpus: int

    @property
    def gpu_hours(self) -> float:
        return max(0.0, self.ended_at - self.launched_at) / 3600 * self.gpus


def node_lives(
    nodes: Mapping[str, Mapping[str, Any]],
    *,
    prices: Callable[[str], float | None],
    jobs: Mapping[str, Sequence[Job]],
    idle_seconds: float,
    until: float,
    held: frozenset[str] = frozenset(),
    node_gpus: Mapping[str, int] = NOMINAL_QUEUE_GPUS,
    reclaimed: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, NodeLife] | None:
    """The nodes that ran (``compute_nodes`` of the run record, by instance id), each from its launch
    to :func:`node_end` at its own type's price. ``jobs`` are each queue's jobs (for the ends),
    ``until`` the run's end (or now), ``node_gpus`` each queue's GPUs per node (a queue's compute
    resources all have the same). None without nodes, or for a type without a price."""
    if not nodes:
        return None
    spans = {q: node_spans(js, idle_seconds=idle_seconds, until=until) for q, js in jobs.items()}
    lives: dict[str, NodeLife] = {}
    for node_id, node in nodes.items():
        instance = str(node["instance_type"])
        price = prices(instance)
        if price is None:
            return None
        queue = str(node.get("queue") or "")
        launched = float(node["launched_at"])
        end = node_end(
            node,
            spans=spans.get(queue, ()),
            until=until,
            held=queue in held,
            reclaimed=(reclaimed or {}).get(queue, ()),
        )
        cost = max(0.0, end - launched) / 3600 * price
        lives[node_id] = NodeLife(queue, instance, launched, end, cost, node_gpus.get(queue, 0))
    return lives


def lifetime_bill(lives: Mapping[str, NodeLife]) -> tuple[float, float]:
    """(USD, GPU-hours) of :func:`node_lives`: what EC2 bills for the nodes that ran."""
    return sum(n.cost_usd for n in lives.values()), sum(n.gpu_hours for n in lives.values())


def cost_text(cost: float, basis: str | None, digits: int = 2) -> str:
    """A run's cost with what it counts (the run record's ``cost_usd`` and ``cost_basis``)."""
    money = f"${cost:,.{digits}f}"
    if basis == NODE_LIFETIMES:
        return f"about {money} (GPU nodes on demand, billed from the nodes that ran: launch to end)"
    if basis == NODES_BILLED:
        return f"about {money} (GPU nodes on demand, launch and idle included, estimated from stage times)"
    return f"at least {money} (GPU nodes on demand: the stages' run time only)"
