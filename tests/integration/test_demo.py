"""The local end-to-end run (`cryopilot demo`), on a fast simulated clock: what a person who
clones the project sees first, checked the way the README describes it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryopilot_sim.demo import DemoOptions, run_demo

pytestmark = pytest.mark.slow

PACE = 1e9  # simulated seconds per wall-clock second: no waiting


def test_local_run_end_to_end_succeeds_mails_reports_and_deletes_the_cluster(tmp_path: Path) -> None:
    summary = run_demo(DemoOptions(profile="cgrp", pace=PACE, quiet=True, state_dir=tmp_path))

    last = json.loads((tmp_path / "last-run.json").read_text())
    assert last == summary
    assert last["status"] == "SUCCEEDED"
    assert last["cluster_deleted"] is True
    assert last["clusters_left"] == []
    assert last["resolution_A"] == pytest.approx(2.8, abs=0.3)
    # cryopilot's placement: the 1-GPU stages on an H100, 2D classification on four L40S (the
    # catalogue's speed factors), node launches, the cluster's creation: about 26 h (Table 1: 36 h 02)
    assert 24.0 < last["time_to_structure_h"] < 28.0

    assert last["cost_usd"] > 0
    assert 0 < last["gpu_hours_busy"] <= last["gpu_hours_paid"]
    outbox = sorted((tmp_path / "outbox").glob("*.txt"))
    assert len(outbox) >= 2
    assert len(last["mails"]) == len(outbox)
    done = outbox[-1].read_text()
    assert done.startswith("Subject: [cryopilot] CGRP-2026-11 done: 2.")
    assert f"${last['cost_usd']:,.0f}" in done.splitlines()[0]  # the subject says what it cost
    assert "report.html" in done

    report_dir = tmp_path / "reports" / last["run_id"]
    png = (report_dir / "timeline.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(png) > 10_000
    html = (report_dir / "report.html").read_text()
    assert "CGRP-2026-11" in html
    assert "SUCCEEDED" in html
    assert "RUNNING" not in html
    assert '<img src="timeline.png"' in html
    assert last["report"].endswith("report.html")
    assert Path(last["report"]).name == "report.html"


def test_local_run_with_a_failing_job_ends_in_a_failure_mail_and_no_cluster(tmp_path: Path) -> None:
    summary = run_demo(DemoOptions(profile="cgrp", pace=PACE, quiet=True, state_dir=tmp_path, fail="job"))

    assert summary["status"] == "FAILED"
    assert summary["cluster_deleted"] is True
    assert summary["clusters_left"] == []
    assert summary["error"]["type"] == "JobFailedError"
    outbox = sorted((tmp_path / "outbox").glob("*.txt"))
    failed = outbox[-1].read_text()
    assert failed.startswith("Subject: [cryopilot] CGRP-2026-11 failed at")
    assert "has been deleted" in failed
    # the failure path writes a report too (what ran, until where)
    assert (tmp_path / "reports" / summary["run_id"] / "timeline.png").exists()
