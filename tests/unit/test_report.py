"""The per-run report: data from a run record and its plan, Markdown, HTML and the PNG timeline."""

from __future__ import annotations

import copy
import re
import struct
from typing import Any

import pytest
from cryopilot.core.formatting import fmt_duration
from cryopilot.core.queues import GPU_QUEUES
from cryopilot.domain.billing import cost_text, node_bill
from cryopilot.domain.report.data import ReportData, report_data_from_run
from cryopilot.domain.report.html import render_html
from cryopilot.domain.report.markdown import render_markdown
from cryopilot.domain.report.png import render_gantt_png
from cryopilot.domain.report.render import render_all
from cryopilot.domain.report.rows import GPUS_PER_NODE

T0 = 1767225600  # 2026-01-01T00:00:00Z
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PRICES = {"p4d.24xlarge": 32.0, "g6e.2xlarge": 2.0}


def _planned(stage_id: str, title: str, lane: str | None, gpus: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": stage_id,
        "title": title,
        "job_type": "x",
        "lane": lane,
        "gpus": gpus,
        "params": {},
        "inputs": [],
        "decision": None,
        "time_limit_seconds": 86400,
        **extra,
    }


PLAN = [
    _planned("import", "Import movies", None, 0),
    _planned("motion", "Patch motion correction", "gpu8", 8),
    _planned("class2d", "2D classification", "gpu8", 4),
    _planned("select2d", "Select 2D classes (automatic)", None, 0),
    _planned("abinit", "Ab-initio reconstruction", "gpu1", 1),
    _planned("nurefine", "Non-uniform refinement", "gpu1", 1),
]


def _stage(lane: str | None, gpus: int, title: str, start: int | None, end: int | None, **extra: Any) -> dict:
    rec: dict[str, Any] = {"title": title, "lane": lane, "gpus": gpus, "state": "completed", "progress": 1}
    if start is not None:
        rec.update(started_at=T0 + start, submitted_at=T0 + start, jobs=["J1"], job_types=["x"])
    if end is not None:
        rec["completed_at"] = T0 + end
    rec.update(extra)
    return rec


SELECT_2D = {
    "stage_id": "select2d",
    "kind": "select_2d_classes",
    "summary": "2D selection: kept 44 of 100 classes, 6,519,770 of 9,928,752 particles (66%)",
    "numbers": {
        "rule": {"max_res_A": 12, "min_particle_fraction": 0.002},
        "classes_total": 100,
        "classes_selected": 44,
        "particles_total": 9928752,
        "particles_selected": 6519770,
        "fallback": False,
        "selected": [2, 4, 5],
    },
}
CHOOSE_HETERO = {
    "stage_id": "abinit",
    "kind": "choose_hetero_class",
    "summary": "carried class 1 forward (3.57 Å, 2,033,874 of 2,805,951 particles)",
    "numbers": {"chosen_class": 1, "particles_total": 2805951, "classes": [{"class": 1}]},
}


def _run() -> dict[str, Any]:
    """A succeeded run, shaped like ``runs.get_run`` returns it (stage times in epoch seconds)."""
    return {
        "pk": "run#CGRP-2026-11-97ef56fb36ee",
        "kind": "run",
        "run_id": "CGRP-2026-11-97ef56fb36ee",
        "status": "SUCCEEDED",
        "created_at": "2026-01-01T00:00:00Z",
        "started_at": "2026-01-01T00:00:00Z",
        "started_epoch": T0,
        "dataset": "CGRP-2026-11",
        "preset": "movies",
        "cluster_name": "cryopilot-cgrp-2026-11-97ef56fb36ee-34079103",
        "cluster_state": "DELETED",
        "placement": "p4d.24xlarge in subnet-0aaaaaaaaaaaaaaa1",
        "cluster_ready_at": "2026-01-01T00:15:00Z",
        "resolution_A": 2.791,
        "stages": {
            "import": _stage(None, 0, "Import movies", 900, 1140, num_micrographs=5600),
            "motion": _stage("gpu8", 8, "Patch motion correction", 1140, 7140, num_micrographs=5600),
            "class2d": _stage("gpu8", 4, "2D classification", 7200, 14400, num_particles=9928800),
            "select2d": _stage(None, 0, "Select 2D classes (automatic)", 14400, 14400),
            "abinit": _stage("gpu1", 1, "Ab-initio reconstruction", 14400, 25200),
            "nurefine": _stage("gpu1", 1, "Non-uniform refinement", 25200, 39600, resolution_A=2.791),
        },
        "decisions": [SELECT_2D, CHOOSE_HETERO],
        "mails": [],
        "results": {
            "uri": "s3://results-bucket/runs/CGRP-2026-11-97ef56fb36ee/results/",
            "files": [
                {"kind": "map", "key": "runs/CGRP-2026-11-97ef56fb36ee/results/J15_map.mrc", "size": 17408},
                {"kind": "half_map_a", "key": "runs/CGRP-2026-11-97ef56fb36ee/results/J15_a.mrc", "size": 9},
            ],
        },
        "export_finished_at": T0 + 39900,
        "finished_at": "2026-01-01T11:05:00Z",
        "finished_epoch": T0 + 39900,
    }


def _failed_run() -> dict[str, Any]:
    """Failed in 2D classification: that stage started and has no end; later stages never ran."""
    run = _run()
    run.update(
        status="FAILED",
        error={
            "type": "JobFailedError",
            "message": "stage '2D classification': job J3 failed",
            "step": "stage:class2d",
        },
        decisions=[],
        finished_at="2026-01-01T03:00:00Z",
        finished_epoch=T0 + 10800,
        placements_tried=[
            {"label": "p4d.24xlarge in subnet-0bbbbbbbbbbbbbbb2", "cluster": "c", "reason": "x"}
        ],
    )
    for key in ("resolution_A", "results", "export_finished_at"):
        run.pop(key)
    stages = run["stages"]
    stages["class2d"] = _stage("gpu8", 4, "2D classification", 7200, None, state="failed")
    for sid in ("select2d", "abinit", "nurefine"):
        stages[sid] = {
            "title": stages[sid]["title"],
            "lane": stages[sid]["lane"],
            "gpus": 0,
            "state": "pending",
        }
    return run


def _data(run: dict[str, Any] | None = None, **kwargs: Any) -> ReportData:
    kwargs.setdefault("prices", PRICES.get)
    kwargs.setdefault("instance_types", {"gpu1": "g6e.2xlarge"})
    return report_data_from_run(run or _run(), copy.deepcopy(PLAN), **kwargs)


def _section(markdown: str, heading: str) -> list[str]:
    lines = markdown.splitlines()
    start = lines.index(f"## {heading}") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    return [line for line in lines[start:end] if line.strip()]


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == PNG_SIGNATURE
    assert png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    return width, height


# --- data ------------------------------------------------------------------------------------------


def test_rows_follow_the_plan_with_queue_instance_and_times() -> None:
    data = _data()
    assert [r.stage_id for r in data.rows] == [p["id"] for p in PLAN]
    by_id = {r.stage_id: r for r in data.rows}
    assert by_id["import"].queue == "master"
    assert by_id["import"].instance_type is None
    assert by_id["motion"].queue == "gpu8"
    assert by_id["motion"].instance_type == "p4d.24xlarge"  # from the record's placement
    assert by_id["abinit"].instance_type == "g6e.2xlarge"  # from instance_types
    assert by_id["motion"].wall_seconds == 6000
    assert by_id["select2d"].wall_seconds == 0
    assert by_id["motion"].num_micrographs == 5600
    assert by_id["class2d"].num_particles == 9928800
    assert by_id["nurefine"].resolution_A == pytest.approx(2.791)
    assert data.subnet_id == "subnet-0aaaaaaaaaaaaaaa1"
    assert data.instance_types == {"gpu8": "p4d.24xlarge", "gpu1": "g6e.2xlarge"}
    assert data.time_to_structure_seconds == 39900  # run start to the end of the export
    assert not data.lower_bounds
    assert data.elapsed_seconds == 39900
    assert data.resolution_A == pytest.approx(2.791)


def test_cost_and_gpu_hour_arithmetic() -> None:
    by_id = {r.stage_id: r for r in _data().rows}
    assert by_id["motion"].nodes == 1
    assert by_id["motion"].cost_usd == pytest.approx(6000 / 3600 * 1 * 32.0)
    # 4 GPUs of a gpu8 node: the whole node is paid for, 4 GPUs are busy
    assert by_id["class2d"].cost_usd == pytest.approx(2 * 32.0)
    assert by_id["class2d"].gpu_hours == pytest.approx(2 * 4)
    assert by_id["abinit"].cost_usd == pytest.approx(3 * 2.0)
    assert by_id["nurefine"].cost_usd == pytest.approx(4 * 2.0)
    assert by_id["import"].cost_usd is None  # the head node is not charged per stage
    assert by_id["select2d"].cost_usd is None

    data = _data()
    assert data.cost_usd == pytest.approx(6000 / 3600 * 32 + 64 + 6 + 8)
    assert data.gpu_hours_busy == pytest.approx(8 * 6000 / 3600 + 8 + 3 + 4)
    assert data.gpu_hours_paid == pytest.approx(8 * 6000 / 3600 + 16 + 3 + 4)


IDLE = 600  # Slurm's ScaledownIdletime in these tests (10 min)


def test_node_bill_keeps_a_queues_node_up_between_close_jobs_and_stops_it_at_the_runs_end() -> None:
    data = _data(idle_seconds=IDLE)
    # gpu8: motion (1140-7140) and class2d (7200-14400) share one node, up until 14400 + idle
    gpu8_s = 14400 + IDLE - 1140
    # gpu1: ab-initio and NU-refine share one node; its idle time is cut by the export's end
    gpu1_s = 39900 - 14400
    assert data.billed_usd == pytest.approx(gpu8_s / 3600 * 32.0 + gpu1_s / 3600 * 2.0)
    assert data.billed_gpu_hours == pytest.approx(gpu8_s / 3600 * 8 + gpu1_s / 3600 * 1)
    assert data.billed_usd > data.cost_usd  # the stages' own time leaves launch and idle out


def test_node_bill_launches_again_after_the_idle_time_and_counts_the_launch_wait() -> None:
    run = _run()
    # class2d goes to Slurm 601 s after motion's end: motion's node is gone, a new one launches
    run["stages"]["class2d"] = _stage("gpu8", 4, "2D classification", 7741, 14400)
    # ab-initio waits 420 s for its node: the node is paid from the job's submission
    run["stages"]["abinit"] = _stage("gpu1", 1, "Ab-initio", 14400, 25200, submitted_at=T0 + 13980)
    data = _data(run, idle_seconds=IDLE)
    gpu8_s = (7140 + IDLE - 1140) + (14400 + IDLE - 7741)
    gpu1_s = 39900 - 13980
    assert data.billed_usd == pytest.approx(gpu8_s / 3600 * 32.0 + gpu1_s / 3600 * 2.0)


def test_node_bill_of_the_white_paper_layout_holds_the_gpu8_node_from_cluster_ready() -> None:
    run = {**_run(), "layout": "whitepaper"}
    data = _data(run, idle_seconds=IDLE)
    gpu8_s = 39900 - 900  # cluster ready (00:15) to the export's end
    gpu1_s = 39900 - 14400
    assert data.billed_usd == pytest.approx(gpu8_s / 3600 * 32.0 + gpu1_s / 3600 * 2.0)


def test_no_node_bill_without_an_end_a_price_or_the_idle_time() -> None:
    assert _data(_failed_run(), idle_seconds=IDLE).billed_usd is None  # 2D classification never ended
    assert _data(idle_seconds=IDLE, instance_types={"gpu1": "x9.unknown"}).billed_usd is None
    assert _data().billed_usd is None  # no idle time given: no estimate
    assert node_bill([], prices=PRICES.get, idle_seconds=IDLE) == (0.0, 0.0)


def test_the_summary_and_the_cost_text_say_what_the_cost_counts() -> None:
    md = render_markdown(_data(idle_seconds=IDLE))
    summary = _section(md, "Summary")
    # one cost, the run's (the nodes' estimated bill), and how the table's stage costs differ
    assert [ln for ln in summary if "$" in ln] == [
        "- **Cost:** about $137.37 (GPU nodes on demand, launch and idle included, estimated from"
        " stage times); head node not included. The stages' own run time, in the table below,"
        " comes to $131.33; the rest is node launch and Slurm's idle time"
    ]
    # one set of GPU-hours, those of that bill
    assert [ln for ln in summary if "GPU-hours" in ln] == [
        "- **GPU-hours:** 37.9 paid for, 28.3 of them busy"
    ]
    assert cost_text(273.384, "nodes billed") == (
        "about $273.38 (GPU nodes on demand, launch and idle included, estimated from stage times)"
    )
    assert (
        cost_text(244.2, "stage time", digits=0)
        == "at least $244 (GPU nodes on demand: the stages' run time only)"
    )
    assert cost_text(244.2, None).startswith("at least $244.20")


def test_nodes_are_whole_nodes_of_the_queue() -> None:
    plan = [_planned("big", "Big", "gpu8", 12), _planned("many", "Many", "gpu1", 3)]
    run = _run()
    run["stages"] = {
        "big": _stage("gpu8", 12, "Big", 0, 3600),
        "many": _stage("gpu1", 3, "Many", 0, 1800),
    }
    data = report_data_from_run(run, plan, prices=PRICES.get, instance_types={"gpu1": "g6e.2xlarge"})
    big, many = data.rows
    assert (big.nodes, many.nodes) == (2, 3)
    assert big.cost_usd == pytest.approx(1 * 2 * 32.0)
    assert many.cost_usd == pytest.approx(0.5 * 3 * 2.0)
    assert data.gpu_hours_paid == pytest.approx(16 + 1.5)


def test_no_total_cost_without_prices_or_with_an_unknown_price() -> None:
    without = _data(prices=None)
    assert without.cost_usd is None
    assert all(r.cost_usd is None for r in without.rows)
    assert without.gpu_hours_busy is not None  # GPU-hours need no price

    # the gpu1 type is not in the record: its stages have no cost, so neither has the run
    unknown_gpu1 = _data(instance_types=None)
    by_id = {r.stage_id: r for r in unknown_gpu1.rows}
    assert by_id["abinit"].instance_type is None
    assert by_id["abinit"].cost_usd is None
    assert by_id["motion"].cost_usd is not None
    assert unknown_gpu1.cost_usd is None

    unpriced = _data(prices=lambda instance_type: None)
    assert unpriced.cost_usd is None


def test_the_recorded_placement_wins_over_the_configured_type() -> None:
    run = _run()
    run["placement"] = "g6e.48xlarge in subnet-0aaaaaaaaaaaaaaa1"  # a capacity fallback type
    data = _data(run, instance_types={"gpu8": "p4d.24xlarge", "gpu1": "g6e.2xlarge"})
    assert data.instance_types["gpu8"] == "g6e.48xlarge"
    assert {r.instance_type for r in data.rows if r.queue == "gpu8"} == {"g6e.48xlarge"}
    assert all(r.cost_usd is None for r in data.rows if r.queue == "gpu8")  # no price for it


def test_iso_stage_times_are_read_like_epoch_seconds() -> None:
    run = _run()
    run["stages"]["motion"]["started_at"] = "2026-01-01T00:19:00Z"
    run["stages"]["motion"]["completed_at"] = "2026-01-01T01:59:00+00:00"
    assert {r.stage_id: r.wall_seconds for r in _data(run).rows}["motion"] == 6000


def test_gpus_per_node_names_the_cluster_queues() -> None:
    from cryopilot.core.queues import LANES

    assert set(GPUS_PER_NODE) == set(LANES)  # the GPU queues and their Spot twins
    assert {q for q in GPUS_PER_NODE if not q.endswith("-spot")} == set(GPU_QUEUES)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (131246, "36 h 27 min"),
        (39900, "11 h 05 min"),
        (7200, "2 h"),
        (840, "14 min"),
        (10, "< 1 min"),
        (0, "0 min"),
        (None, ""),
    ],
)
def test_durations(seconds: float | None, text: str) -> None:
    assert fmt_duration(seconds) == text


# --- Markdown --------------------------------------------------------------------------------------


def test_markdown_title_and_summary() -> None:
    md = render_markdown(_data())
    assert md.splitlines()[0] == "# CGRP-2026-11: SUCCEEDED, 2.79 Å"
    summary = "\n".join(_section(md, "Summary"))
    assert "**Time to structure:** 11 h 05 min" in summary
    assert "**Cost:** at least $131.33 (GPU nodes on demand: the stages' run time only)" in summary
    assert "**GPU-hours:** 36.3 paid for, 28.3 of them busy" in summary
    assert "**Finished:** 2026-01-01 11:05 UTC" in summary
    assert "p4d.24xlarge in subnet-0aaaaaaaaaaaaaaa1" in summary
    assert "![Stage timeline](timeline.png)" in md


def test_the_summary_lists_the_runs_capacity_events() -> None:
    run = _run()
    note = "gpu8: p4d.24xlarge InsufficientInstanceCapacity; ParallelCluster failed over to p4de.24xlarge"
    run["capacity_events"] = [{"stage": "motion", "at": 1767229200.0, "note": note}]
    summary = "\n".join(_section(render_markdown(_data(run)), "Summary"))
    assert f"**Capacity:** motion: {note}" in summary
    assert "Capacity" not in "\n".join(_section(render_markdown(_data()), "Summary"))


def test_the_nodes_seen_give_the_queues_types_and_prices() -> None:
    run = _run()
    before = _data(run)
    run["compute_nodes"] = {
        "i-1": {
            "instance_type": "p5.48xlarge",
            "queue": "gpu8",
            "launched_at": 1767229200.0,
            "ended_by": None,
        }
    }
    after = _data(run, prices={**PRICES, "p5.48xlarge": 2 * PRICES["p4d.24xlarge"]}.get)
    assert before.instance_types["gpu8"] == "p4d.24xlarge"
    assert after.instance_types["gpu8"] == "p5.48xlarge"  # a fail-over's type wins over the placement's
    gpu8_rows = [
        (b, a) for b, a in zip(before.rows, after.rows, strict=True) if a.queue == "gpu8" and b.cost_usd
    ]
    assert gpu8_rows
    assert all(a.cost_usd == pytest.approx(2 * b.cost_usd) for b, a in gpu8_rows)


def test_the_success_paths_report_says_when_the_run_finished() -> None:
    # written between the export and the final mail: the record is not closed yet (no finish
    # time), and the report step reads it as succeeded
    run = _run()
    for key in ("finished_at", "finished_epoch"):
        run.pop(key)
    data = _data(run)
    assert data.finished_at is not None
    assert data.finished_at.timestamp() == T0 + 39900  # the export's end
    assert "- **Finished:** 2026-01-01 11:05 UTC" in _section(render_markdown(data), "Summary")


def test_markdown_table_has_one_row_per_planned_stage_and_a_total() -> None:
    table = _section(render_markdown(_data()), "Stages")
    assert table[0] == "| Stage | Queue | Instance | GPUs | Wall time | Cost |"
    rows = table[2:]
    assert len(rows) == len(PLAN) + 1
    assert rows[1] == "| Patch motion correction | gpu8 | p4d.24xlarge | 8 | 1 h 40 min | $53.33 |"
    assert rows[2] == "| 2D classification | gpu8 | p4d.24xlarge | 4 | 2 h | $64.00 |"
    assert rows[0] == "| Import movies | master | head node | 0 | 4 min | — |"
    # stage walls: 4 min + 1 h 40 + 2 h + 0 + 3 h + 4 h = 10 h 44 min
    assert rows[-1] == "| **Total** | | | | **10 h 44 min** | **$131.33** |"


def test_markdown_lists_each_decision_with_its_numbers() -> None:
    decisions = _section(render_markdown(_data()), "Automatic decisions")
    assert len(decisions) == 2
    assert all(line.startswith("- **") for line in decisions)
    select, choose = decisions
    assert "select2d" in select
    assert "kept 44 of 100 classes" in select
    assert "classes selected: 44" in select
    assert "particles selected: 6,519,770" in select
    assert "fallback: no" in select
    assert "abinit" in choose
    assert "chosen class: 1" in choose
    assert "3.57 Å" in choose


def test_markdown_results_come_from_the_record_or_the_caller() -> None:
    links = _section(render_markdown(_data()), "Results")
    assert links[0] == "- Results folder: `s3://results-bucket/runs/CGRP-2026-11-97ef56fb36ee/results/`"
    assert (
        "- map (17,408 bytes): `s3://results-bucket/runs/CGRP-2026-11-97ef56fb36ee/results/J15_map.mrc`"
        in links
    )

    given = _data(results=[("Map viewer", "https://viewer.example.org/run/1")])
    assert _section(render_markdown(given), "Results") == ["- [Map viewer](https://viewer.example.org/run/1)"]


def test_failed_run_without_an_end_time_renders_and_shows_the_error() -> None:
    data = _data(_failed_run())
    by_id = {r.stage_id: r for r in data.rows}
    assert by_id["class2d"].state == "failed"
    assert by_id["class2d"].started_at is not None
    assert by_id["class2d"].completed_at is None
    assert by_id["class2d"].wall_seconds is None
    assert by_id["class2d"].cost_usd is None
    assert by_id["nurefine"].state == "pending"
    assert data.time_to_structure_seconds is None
    assert data.elapsed_seconds == 10800
    assert data.resolution_A is None
    assert data.failed_at == "2D classification"
    assert data.placements_tried == ["p4d.24xlarge in subnet-0bbbbbbbbbbbbbbb2"]

    md = render_markdown(data)
    assert md.splitlines()[0] == "# CGRP-2026-11: FAILED, resolution unknown"
    failure = "\n".join(_section(md, "Failure"))
    assert "Failed at **2D classification**" in failure
    assert "JobFailedError: stage '2D classification': job J3 failed" in failure
    assert "**Elapsed:** 3 h" in md
    # class2d ran an hour before failing: the totals count the finished stages only
    assert data.lower_bounds
    assert data.cost_usd == pytest.approx(6000 / 3600 * 32)
    assert "**Cost:** at least $53.33 (GPU nodes on demand: the stages' run time only)" in md
    assert "**GPU-hours:** at least 13.3 paid for, at least 13.3 of them busy" in md
    rows = _section(md, "Stages")[2:]
    assert len(rows) == len(PLAN) + 1
    assert "| 2D classification | gpu8 | p4d.24xlarge | 4 | failed | — |" in rows
    assert "| Non-uniform refinement | gpu1 | g6e.2xlarge | 0 | pending | — |" not in rows  # plan's GPUs
    assert "| Non-uniform refinement | gpu1 | g6e.2xlarge | 1 | pending | — |" in rows

    html_page = render_html(data)
    assert "JobFailedError" in html_page
    png = render_gantt_png(data)
    assert _png_size(png)[0] == 1000


def test_validation_failure_has_no_stages_and_still_renders() -> None:
    run = {
        "run_id": "BAD-VOLTAGE-1",
        "status": "FAILED",
        "created_at": "2026-01-01T00:00:00Z",
        "stages": {},
        "decisions": [],
        "error": {"type": "ManifestError", "message": "acquisition.voltage_kV: too high", "step": "validate"},
    }
    data = report_data_from_run(run, [])
    assert data.rows == []
    assert data.dataset == "BAD-VOLTAGE-1"
    md = render_markdown(data)
    assert _section(md, "Stages")[2:] == ["| **Total** | | | | **—** | **—** |"]
    assert "Failed at **validate**" in md
    assert "ManifestError: acquisition.voltage\\_kV: too high" in md
    files = render_all(data)
    assert _png_size(files["timeline.png"]) == (1000, 200)


# --- HTML ------------------------------------------------------------------------------------------


def test_html_escapes_every_text() -> None:
    run = _failed_run()
    run["dataset"] = "<script>alert(1)</script>"
    run["error"]["message"] = 'bad "<b>" & worse'
    run["decisions"] = [{**SELECT_2D, "summary": "<img src=x onerror=alert(2)>"}]
    data = _data(run, results=[("<i>label</i>", "javascript:alert(3)")])
    page = render_html(data)
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>" not in page
    assert "bad &quot;&lt;b&gt;&quot; &amp; worse" in page
    assert "<img src=x" not in page
    assert "<i>" not in page
    assert 'href="javascript' not in page

    md = render_markdown(data)
    assert re.search(r"(?<!\\)[<>]", md) is None  # every angle bracket is escaped
    assert "\\<script\\>alert(1)\\</script\\>" in md
    assert "](javascript" not in md


def test_html_is_self_contained_with_the_same_content() -> None:
    data = _data()
    page = render_html(data)
    assert page.startswith("<!DOCTYPE html>")
    assert "<style>" in page
    assert '<img src="timeline.png"' in page
    assert "<link" not in page
    assert "<script" not in page
    for external in ('src="http', 'href="http', "url("):
        assert external not in page
    assert "CGRP-2026-11" in page
    assert page.count("<tr>") == len(PLAN) + 1  # header + one per stage; the total row has a class
    assert '<tr class="total">' in page
    assert "$131.33" in page
    assert "11 h 05 min" in page
    assert "kept 44 of 100 classes" in page
    assert '<img src="other.png"' in render_html(data, png_name="other.png")


# --- timeline --------------------------------------------------------------------------------------


def test_gantt_is_a_png_that_follows_the_timeline() -> None:
    png = render_gantt_png(_data())
    width, height = _png_size(png)
    assert width == 1000  # 10 in at 100 dpi
    assert height > 200
    assert len(png) > 5000

    later = _run()
    for rec in later["stages"].values():
        rec["completed_at"] += 7200  # every stage two hours longer
    other = render_gantt_png(_data(later))
    assert other[:8] == PNG_SIGNATURE
    assert other != png
    assert render_gantt_png(_data()) == png  # same timeline, same picture


def test_gantt_without_any_stage_started_notes_it() -> None:
    run = _run()
    for rec in run["stages"].values():
        for key in ("started_at", "completed_at"):
            rec.pop(key)
        rec["state"] = "pending"
    run["dataset"] = "costs $5 and $6"  # no math-text parsing of names
    png = render_gantt_png(_data(run))
    assert _png_size(png) == (1000, 200)
    assert png != render_gantt_png(_data())


def test_render_all_names_the_three_files() -> None:
    files = render_all(_data())
    assert set(files) == {"report.md", "report.html", "timeline.png"}
    assert files["timeline.png"].startswith(PNG_SIGNATURE)
    assert b"timeline.png" in files["report.md"]
    assert b'<img src="timeline.png"' in files["report.html"]
    assert files["report.md"].decode("utf-8").startswith("# CGRP-2026-11")


# --- the bill from the nodes that ran ---------------------------------------------------------------


def _with_nodes(run: dict[str, Any]) -> dict[str, Any]:
    """The nodes the run listed: gpu8's from motion correction until its listing after 2D
    classification's end; gpu1's from ab-initio, still listed at the last poll."""
    run["compute_nodes"] = {
        "i-8": {
            "instance_type": "p4d.24xlarge",
            "queue": "gpu8",
            "launched_at": T0 + 1140,
            "last_seen": T0 + 14000,
            "ended_by": T0 + 16000,
        },
        "i-1": {
            "instance_type": "g6e.2xlarge",
            "queue": "gpu1",
            "launched_at": T0 + 14400,
            "last_seen": T0 + 39000,
            "ended_by": None,
        },
    }
    return run


def test_the_bill_is_the_nodes_that_ran_each_ending_as_slurm_stops_it() -> None:
    data = _data(_with_nodes(_run()), idle_seconds=300)
    assert data.billed_from_nodes
    # gpu8: launch to 2D classification's end + ScaledownIdletime (inside its two listings);
    # gpu1: launch to the refinement's end + idle, the export's end
    gpu8 = (14400 + 300 - 1140) / 3600
    gpu1 = (39600 + 300 - 14400) / 3600
    assert data.billed_usd == pytest.approx(gpu8 * 32.0 + gpu1 * 2.0)
    assert data.billed_gpu_hours == pytest.approx(gpu8 * 8 + gpu1 * 1)
    assert [(n.node_id, n.instance_type) for n in data.nodes] == [
        ("i-8", "p4d.24xlarge"),
        ("i-1", "g6e.2xlarge"),
    ]
    assert cost_text(data.billed_usd, "node lifetimes") in render_markdown(data)
    assert "## GPU nodes" in render_markdown(data)
    assert "<h2>GPU nodes</h2>" in render_html(data)
    assert render_gantt_png(data) != render_gantt_png(_data(_run(), idle_seconds=300))  # the nodes drawn


def test_a_node_gone_before_slurm_would_stop_it_is_billed_to_its_listings() -> None:
    run = _with_nodes(_run())
    run["compute_nodes"]["i-8"].update(last_seen=T0 + 6000, ended_by=T0 + 7000)  # gone mid-stage
    data = _data(run, idle_seconds=300)
    (gpu8,) = [n for n in data.nodes if n.queue == "gpu8"]
    assert (gpu8.ended_at.timestamp() - T0) == 7000
    assert gpu8.cost_usd == pytest.approx((7000 - 1140) / 3600 * 32.0)
