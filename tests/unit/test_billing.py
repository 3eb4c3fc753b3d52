"""One billing model: the estimate before a run, the cost so far during it and the bill after it
agree on the same job intervals."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from cryopilot.adapters.pricing import queue_nodes
from cryopilot.adapters.settings import get_settings
from cryopilot.domain import limits
from cryopilot.domain.billing import (
    Job,
    NodeType,
    Span,
    bill_queue,
    node_bill,
    node_spans,
    node_up,
    run_time_cost,
)
from cryopilot.domain.catalogue import Catalogue
from cryopilot.domain.estimate import (
    HEAD_QUEUE,
    WHITEPAPER_QUEUE,
    Estimate,
    Layout,
    estimate,
    plan_from_stages,
)
from cryopilot.domain.manifest import manifest_from_dict
from cryopilot.domain.placement import compare, place, plan
from cryopilot.domain.record import RunContext
from cryopilot.domain.report.data import report_data_from_run
from cryopilot.domain.report.rows import StageRow
from cryopilot.protocol.stage import PlannedStage
from cryopilot.steps import stage as stage_step

T0 = 1767225600.0  # 2026-01-01T00:00:00Z
IDLE = 300.0
NODE = NodeType("g6e.2xlarge", 1, 2.0)


@pytest.fixture
def cat() -> Catalogue:
    return Catalogue.load()


# --- the rules ------------------------------------------------------------------------------------


def test_a_node_stays_up_for_jobs_within_the_idle_time_and_is_paid_until_idle_after_the_last() -> None:
    jobs = [
        Job(went=0, start=420, end=1000),
        Job(went=1300, start=1300, end=2000),  # 300 s after the last end: the node is still up
        Job(went=2301, start=2721, end=3000),  # 301 s: a new node, paid from the submission
    ]
    assert node_up(1000, 1300, IDLE)
    assert not node_up(2000, 2301, IDLE)
    assert not node_up(None, 0, IDLE)
    assert node_spans(jobs, idle_seconds=IDLE) == [Span(0, 2300), Span(2301, 3300)]
    # the run's end cuts the idle tail, never a job
    assert node_spans(jobs, idle_seconds=IDLE, until=3100) == [Span(0, 2300), Span(2301, 3100)]
    assert node_spans(jobs, idle_seconds=IDLE, until=2900) == [Span(0, 2300), Span(2301, 3000)]

    bill = bill_queue(NODE, jobs, idle_seconds=IDLE)
    assert bill.launches == 2
    assert bill.node_hours == pytest.approx((2300 + 999) / 3600)
    assert bill.cost_usd == pytest.approx(bill.node_hours * 2.0)
    assert bill.busy_gpu_seconds == 0  # the jobs above name no GPUs


def test_a_held_node_is_paid_for_its_span_with_the_most_nodes_a_job_needs() -> None:
    jobs = [Job(went=100, start=100, end=200, nodes=2, gpus=2), Job(went=5000, start=5000, end=6000, gpus=1)]
    bill = bill_queue(NODE, jobs, idle_seconds=IDLE, held=(0.0, 7200.0))
    assert bill.spans == (Span(0.0, 7200.0, 2),)
    assert bill.node_hours == 4.0
    assert bill.busy_gpu_hours == pytest.approx((2 * 100 + 1000) / 3600)


def test_run_time_cost_counts_whole_nodes_and_the_run_only() -> None:
    gpu8 = NodeType("p4d.24xlarge", 8, 32.0)
    assert gpu8.nodes_for(4) == 1
    assert gpu8.nodes_for(12) == 2
    assert gpu8.nodes_for(0) == 1
    assert run_time_cost(gpu8, Job(went=0, start=600, end=4200, nodes=2)) == 64.0


# --- the three figures on the same intervals ----------------------------------------------------------


def _when(seconds: float) -> datetime:
    return datetime.fromtimestamp(T0 + seconds, tz=UTC)


def _record(est: Estimate, *, layout: str, until: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The run record the estimate's timeline would leave: each stage went to Slurm when the one
    before ended, started after its node's launch and ended after its wall time."""
    plan = [{"id": r.stage, "title": r.stage, "lane": r.queue, "gpus": r.gpus} for r in est.rows]
    for p in plan:
        # the white paper's one node is the cluster's gpu8 queue held for the run
        p["lane"] = {HEAD_QUEUE: None, WHITEPAPER_QUEUE: "gpu8"}.get(p["lane"], p["lane"])
    stages = {
        r.stage: {
            "state": "completed",
            "submitted_at": T0 + r.start_seconds - r.wait_seconds,
            "started_at": T0 + r.start_seconds,
            "completed_at": T0 + r.end_seconds,
        }
        for r in est.rows
    }
    run = {
        "run_id": "r",
        "status": "SUCCEEDED",
        "layout": layout,
        "started_epoch": T0,
        "cluster_ready_at": T0,
        "export_finished_at": T0 + until,
        "stages": stages,
    }
    return run, plan


def _final_bill(est: Estimate, cat: Catalogue, *, layout: str, until: float) -> tuple[float, float]:
    run, plan = _record(est, layout=layout, until=until)
    types = {"gpu8": est.queues[0].instance_type} if layout == "whitepaper" else None
    data = report_data_from_run(
        run,
        plan,
        prices=cat.price,
        instance_types=types or {u.queue: u.instance_type for u in est.queues},
        idle_seconds=est.scaledown_idle_seconds,
    )
    assert data.billed_usd is not None
    assert data.billed_gpu_hours is not None
    return data.billed_usd, data.billed_gpu_hours


@pytest.mark.parametrize("profile", ["cgrp", "glp1r", "spike"])
def test_the_final_bill_of_the_estimated_timeline_is_the_estimate(cat: Catalogue, profile: str) -> None:
    """Scaled to zero: the report bills the stage times the estimate replays to the estimate's figure."""
    _, cp = compare(profile, cat)
    assert {u.queue for u in cp.queues} <= {"gpu8", "gpu4", "gpu1"}
    assert sum(u.node_launches for u in cp.queues) > len(cp.queues)  # some nodes stop and launch again
    # a run that ends long after the last job: no idle tail is cut
    billed, gpu_hours = _final_bill(cp, cat, layout="cryopilot", until=cp.run_seconds + 3600)
    assert billed == pytest.approx(cp.compute_cost_usd, rel=1e-9)
    assert gpu_hours == pytest.approx(cp.gpu_hours_paid, rel=1e-9)


@pytest.mark.parametrize("profile", ["cgrp", "spike"])
def test_the_final_bill_of_the_white_paper_layout_is_its_estimate(cat: Catalogue, profile: str) -> None:
    wp, _ = compare(profile, cat)
    billed, gpu_hours = _final_bill(wp, cat, layout="whitepaper", until=wp.run_seconds)
    assert billed == pytest.approx(wp.compute_cost_usd, rel=1e-9)
    assert gpu_hours == pytest.approx(wp.gpu_hours_paid, rel=1e-9)


def test_the_estimates_queue_bills_are_billings_on_its_own_jobs(cat: Catalogue) -> None:
    est = place("cgrp", Layout.cryopilot(), cat)
    for usage in est.queues:
        rows = [r for r in est.rows if r.queue == usage.queue]
        jobs = [
            Job(T0 + r.start_seconds - r.wait_seconds, T0 + r.start_seconds, T0 + r.end_seconds) for r in rows
        ]
        node = NodeType(usage.instance_type, usage.node_gpus, usage.usd_per_hour)
        bill = bill_queue(node, jobs, idle_seconds=est.scaledown_idle_seconds)
        assert bill.launches == usage.node_launches
        assert bill.cost_usd == pytest.approx(usage.cost_usd, rel=1e-9)
        # every job's row charges the node time it caused: launch wait and wall
        assert sum(r.cost_usd for r in rows) == pytest.approx(
            sum(r.wait_seconds + r.wall_seconds for r in rows) / 3600 * usage.usd_per_hour
        )


def test_node_bill_reads_rows_as_the_estimate_reads_jobs() -> None:
    rows = [
        StageRow(
            stage_id="a",
            title="a",
            queue="gpu1",
            instance_type="g6e.2xlarge",
            gpus=1,
            nodes=1,
            submitted_at=_when(0),
            started_at=_when(420),
            completed_at=_when(1000),
        ),
        StageRow(
            stage_id="b",
            title="b",
            queue="gpu1",
            instance_type="g6e.2xlarge",
            gpus=1,
            nodes=1,
            submitted_at=_when(2301),
            started_at=_when(2721),
            completed_at=_when(3000),
        ),
    ]
    jobs = [Job(T0 + 0, T0 + 420, T0 + 1000), Job(T0 + 2301, T0 + 2721, T0 + 3000)]
    expected = bill_queue(NODE, jobs, idle_seconds=IDLE)
    assert node_bill(rows, prices={"g6e.2xlarge": 2.0}.get, idle_seconds=IDLE) == pytest.approx(
        (expected.cost_usd, expected.gpu_hours)
    )


# --- during the run ------------------------------------------------------------------------------------


CGRP_MANIFEST = {
    "dataset": "CGRP-2026-11",
    "input": {"kind": "movies", "glob": "movies/*.tif"},
    "acquisition": {"pixel_size_A": 0.83, "voltage_kV": 300, "cs_mm": 2.7, "total_dose_e_per_A2": 60},
    "particle": {"diameter_A": 120},
}


def test_the_limit_checks_estimate_of_the_stages_left_is_the_estimates_run_time(cat: Catalogue) -> None:
    """The Stage step's estimate of what the stages left cost (``limits.max_cost_usd``) is the
    run-time part of the estimate of the same stages on the same queues: no launch, no idle."""
    planned = plan(manifest_from_dict(CGRP_MANIFEST), data_dir="/fsx/data/")
    lanes = {s.id: s.lane for s in planned if s.gpus > 0}
    timed = plan_from_stages(planned, "cgrp")
    pins: dict[str, tuple[str, ...]] = {}
    for p in timed.stages:
        if p.id in lanes:
            pins.setdefault(p.kind, (str(lanes[p.id]),))
    est = estimate(timed, Layout.cryopilot(by_stage=pins), cat)
    gpu_rows = [r for r in est.rows if r.queue != HEAD_QUEUE]
    assert {r.stage: r.queue for r in gpu_rows} == lanes
    run_time = sum(r.wall_seconds / 3600 * cat.price(r.instance_type) for r in gpu_rows)
    left = limits.remaining_cost(
        planned, preset="movies", nodes=queue_nodes(get_settings()), catalogue=Catalogue.for_deployment(None)
    )
    assert left == pytest.approx(run_time, rel=1e-9)
    # and what a stage has cost so far is the same arithmetic on its recorded times
    first = next(r for r in gpu_rows)
    rec = {"started_at": T0 + first.start_seconds, "completed_at": T0 + first.end_seconds}
    stage = next(s for s in planned if s.id == first.stage)
    assert stage_step.stage_cost(RunContext(run_id="r"), stage, rec) == pytest.approx(
        first.wall_seconds / 3600 * cat.price(first.instance_type), abs=1e-4
    )


def test_the_cost_so_far_uses_the_deployments_price_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Lambdas get ``PriceOverrides`` as ``CRYOPILOT_PRICE_OVERRIDES`` (Settings.price_overrides)."""
    stage = PlannedStage(
        id="pick",
        title="Blob picker",
        job_type="blob_picker_gpu",
        lane="gpu1",
        gpus=1,
        params={},
        inputs=[],
        time_limit_seconds=3600,
    )
    rec = {"started_at": T0, "completed_at": T0 + 1800}
    shipped = stage_step.stage_cost(RunContext(run_id="r"), stage, rec)
    monkeypatch.setenv("CRYOPILOT_PRICE_OVERRIDES", '{"p5.4xlarge": 4.0}')
    get_settings.cache_clear()
    assert get_settings().price_overrides == '{"p5.4xlarge": 4.0}'
    assert stage_step.stage_cost(RunContext(run_id="r"), stage, rec) == 2.0
    assert shipped is not None
    assert shipped != 2.0
