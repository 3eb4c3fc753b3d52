"""`cryopilot status`: the cost line, from the nodes the run listed while it runs, then the bill."""

from __future__ import annotations

from cryopilot_ops.ops import RunView, render_status


def _view(**fields: object) -> RunView:
    return RunView.model_validate({"run_id": "R-1", "status": "RUNNING", "plan": [], **fields})


def test_status_shows_the_listed_nodes_bill_so_far_then_the_runs_bill() -> None:
    nodes = {"i-1": {"instance_type": "p4d.24xlarge", "queue": "gpu8", "launched_at": 0.0}}
    running = render_status(_view(compute_nodes=nodes, nodes_cost_usd=12.5, nodes_gpu_hours=4.0), None)
    assert "cost so far about $12.50 (compute nodes that ran: 1 listed, 4.0 GPU-hours)" in running
    done = render_status(
        _view(
            status="SUCCEEDED",
            compute_nodes=nodes,
            nodes_cost_usd=12.5,
            cost_usd=30.0,
            cost_basis="node lifetimes",
            gpu_hours_paid=9.5,
        ),
        None,
    )
    assert "cost about $30.00 (GPU nodes on demand, billed from the nodes that ran: launch to end)" in done
    assert "GPU-hours 9.5 paid for" in done
    assert "cost so far" not in done
