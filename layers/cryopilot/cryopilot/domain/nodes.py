"""The GPU nodes a run's cluster launched, as ParallelCluster's ``describeClusterInstances`` lists them.

The API lists a cluster's instances that EC2 reports pending, running, stopping or stopped, so a node
that is gone is simply no longer listed (ParallelCluster 3.16, ``Cluster.describe_instances``). The
controller lists them at most every :data:`CHECK_SECONDS` while a stage runs and keeps each node it
saw: type, queue, launch time, when it was last seen and, once it is no longer listed, the time of the
first listing without it (``ended_by``: an upper bound of its end, within one check).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

#: Least time between two listings of a run's nodes (each is one API call).
CHECK_SECONDS = 300.0


def merge(known: Mapping[str, Mapping[str, Any]], listed: Iterable[Mapping[str, Any]], now: float) -> dict:
    """The run's nodes after one listing: ``known`` (instance id → node), updated with ``listed``
    (each ``{"id", "instance_type", "queue", "launched_at"}``); a known node not listed ends by ``now``."""
    nodes = {k: dict(v) for k, v in known.items()}
    seen = set()
    for item in listed:
        node_id = str(item["id"])
        seen.add(node_id)
        node = nodes.setdefault(
            node_id,
            {
                "instance_type": str(item["instance_type"]),
                "queue": item.get("queue"),
                "launched_at": float(item["launched_at"]),
                "ended_by": None,
            },
        )
        node["last_seen"] = now
    for node_id, node in nodes.items():
        if node_id not in seen and node.get("ended_by") is None:
            node["ended_by"] = now
    return nodes


def close(known: Mapping[str, Mapping[str, Any]], at: float) -> dict:
    """Every node still open ends by ``at`` (the cluster is gone)."""
    return {
        k: {**v, "ended_by": v.get("ended_by") if v.get("ended_by") is not None else at}
        for k, v in known.items()
    }


def queue_types(known: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Each queue's instance type, as its most recently launched node had it."""
    latest: dict[str, tuple[float, str]] = {}
    for node in known.values():
        queue = node.get("queue")
        if not queue:
            continue
        launched = float(node.get("launched_at") or 0.0)
        if queue not in latest or launched >= latest[queue][0]:
            latest[str(queue)] = (launched, str(node["instance_type"]))
    return {q: t for q, (_, t) in latest.items()}
