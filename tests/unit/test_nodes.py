"""The GPU nodes a run saw through describeClusterInstances (``cryopilot.domain.nodes``)."""

from __future__ import annotations

from cryopilot.domain import nodes


def _listed(node_id: str, itype: str, queue: str, launched: float) -> dict[str, object]:
    return {"id": node_id, "instance_type": itype, "queue": queue, "launched_at": launched}


def test_a_node_no_longer_listed_ends_by_that_listing_and_stays_ended() -> None:
    first = nodes.merge({}, [_listed("i-1", "p4de.24xlarge", "gpu8", 100.0)], 400.0)
    assert first == {
        "i-1": {
            "instance_type": "p4de.24xlarge",
            "queue": "gpu8",
            "launched_at": 100.0,
            "ended_by": None,
            "last_seen": 400.0,
        }
    }
    second = nodes.merge(first, [_listed("i-2", "p5.4xlarge", "gpu1", 500.0)], 700.0)
    assert second["i-1"]["ended_by"] == 700.0
    assert second["i-1"]["last_seen"] == 400.0
    assert second["i-2"]["ended_by"] is None
    third = nodes.merge(second, [], 1000.0)
    assert third["i-1"]["ended_by"] == 700.0  # not moved by later listings
    assert third["i-2"]["ended_by"] == 1000.0
    assert first["i-1"]["ended_by"] is None  # the input is not changed


def test_closing_ends_the_open_nodes_only() -> None:
    seen = nodes.merge({}, [_listed("i-1", "p4d.24xlarge", "gpu8", 0.0)], 300.0)
    seen = nodes.merge(seen, [_listed("i-2", "p4de.24xlarge", "gpu8", 600.0)], 900.0)
    closed = nodes.close(seen, 2000.0)
    assert (closed["i-1"]["ended_by"], closed["i-2"]["ended_by"]) == (900.0, 2000.0)


def test_a_queues_type_is_its_latest_nodes() -> None:
    seen = {
        "i-1": {"instance_type": "p4d.24xlarge", "queue": "gpu8", "launched_at": 10.0},
        "i-2": {"instance_type": "p4de.24xlarge", "queue": "gpu8", "launched_at": 20.0},
        "i-3": {"instance_type": "p5.4xlarge", "queue": "gpu1", "launched_at": 5.0},
        "i-4": {"instance_type": "m6i.2xlarge", "queue": None, "launched_at": 1.0},
    }
    assert nodes.queue_types(seen) == {"gpu8": "p4de.24xlarge", "gpu1": "p5.4xlarge"}
