"""The GPU nodes' bill of a run, estimated from its stage times, and how a run's cost is written."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from cryopilot.domain.report.rows import GPUS_PER_NODE, StageRow


def node_bill(
    rows: Sequence[StageRow],
    *,
    prices: Callable[[str], float | None],
    idle_seconds: float,
    held: frozenset[str] = frozenset(),
    held_from: datetime | None = None,
    until: datetime | None = None,
) -> tuple[float, float] | None:
    """(USD, GPU-hours) the compute stages' nodes are billed, estimated from the stage times the
    way Slurm's power saving runs them: a queue's nodes launch when a job goes to Slurm and no
    node is up (from ``submitted_at``), serve the jobs that come while they are up, and stop
    ``idle_seconds`` after their last job (or at ``until``, the run's end). A ``held`` queue's
    node is up from ``held_from`` (the cluster ready) to ``until``. None when a stage has no end,
    no instance type or no price.

    Nodes are counted per queue as the most any of its stages needs: the stages of a run go one
    after the other.
    """
    end = until.timestamp() if until else None
    cost = gpu_hours = 0.0
    for queue in sorted({r.queue for r in rows}):
        on_queue = [r for r in rows if r.queue == queue]
        instance = on_queue[0].instance_type
        price = prices(instance) if instance else None
        if price is None or any(r.completed_at is None or r.nodes is None for r in on_queue):
            return None
        node_gpus = GPUS_PER_NODE.get(queue, 0)
        spans: list[tuple[float, float, int]] = []  # (up from, up to, nodes)
        if queue in held and held_from is not None and end is not None:
            spans.append((held_from.timestamp(), end, max(r.nodes or 1 for r in on_queue)))
        else:
            # every stage here has an end and nodes (checked above); its nodes went up at its submission
            jobs = sorted(
                (
                    (r.submitted_at or r.started_at or r.completed_at).timestamp(),
                    r.completed_at.timestamp(),
                    r.nodes,
                )
                for r in on_queue
                if r.completed_at is not None and r.nodes is not None
            )
            for went, done, nodes in jobs:
                if spans and went <= spans[-1][1] + idle_seconds:
                    up_from, last_end, most = spans[-1]
                    spans[-1] = (up_from, max(last_end, done), max(most, nodes))
                else:
                    spans.append((went, done, nodes))
            spans = [
                (a, b + idle_seconds if end is None else min(b + idle_seconds, max(b, end)), n)
                for a, b, n in spans
            ]
        node_hours = sum(n * max(0.0, b - a) for a, b, n in spans) / 3600
        cost += node_hours * price
        gpu_hours += node_hours * node_gpus
    return cost, gpu_hours


#: ``cost_basis`` of a run record whose ``cost_usd`` is :func:`node_bill`'s estimate
NODES_BILLED = "nodes billed"


def cost_text(cost: float, basis: str | None, digits: int = 2) -> str:
    """A run's cost with what it counts (the run record's ``cost_usd`` and ``cost_basis``)."""
    money = f"${cost:,.{digits}f}"
    if basis == NODES_BILLED:
        return f"about {money} (GPU nodes on demand, launch and idle included, estimated from stage times)"
    return f"at least {money} (GPU nodes on demand: the stages' run time only)"
