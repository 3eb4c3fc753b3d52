"""The functions' CloudWatch metrics: each one is published as an EMF line on stdout (what
CloudWatch Logs turns into metrics), and no function warns about having none to publish."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from cryopilot_sim.clock import VirtualClock
from cryopilot_sim.harness import LocalCloud

from tests.conftest import EVENTS

pytestmark = pytest.mark.slow

DATA = {"movies/m0001.tif": b"\x00" * 64, "gain/gain_ref.mrc": b"g" * 32}


def _emf(out: str) -> list[dict[str, Any]]:
    """Every EMF blob in ``out``, one per line."""
    blobs = []
    for line in out.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            doc = json.loads(line)
            if "CloudWatchMetrics" in doc["_aws"]:
                blobs.append(doc)
    return blobs


def _metrics(blobs: list[dict[str, Any]]) -> dict[str, list[tuple[float, dict[str, str], str]]]:
    """{metric name: [(value, dimensions, unit), ...]} over the blobs."""
    out: dict[str, list[tuple[float, dict[str, str], str]]] = {}
    for blob in blobs:
        (directive,) = blob["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == "cryopilot"
        (dims,) = directive["Dimensions"]
        dimensions = {d: blob[d] for d in dims}
        for metric in directive["Metrics"]:
            values = blob[metric["Name"]]
            for value in values if isinstance(values, list) else [values]:
                out.setdefault(metric["Name"], []).append((value, dimensions, metric["Unit"]))
    return out


@pytest.fixture
def cloud() -> Iterator[LocalCloud]:
    with LocalCloud(clock=VirtualClock(), profile="cgrp") as c:
        yield c


def _run(cloud: LocalCloud, capsys: pytest.CaptureFixture[str]) -> tuple[dict[str, Any], list[str], str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cloud.drop_dataset("CGRP-2026-11", (EVENTS / "manifests" / "cgrp.yaml").read_text(), DATA)
        cloud.drain_events()
        (execution,) = cloud.executions()
        desc = cloud.wait_for_execution(execution["executionArn"], timeout=240)
        cloud.drain_events()
        cloud.run_schedule("CleanupFunction")
    return desc, [str(w.message) for w in caught], capsys.readouterr().out


def test_a_successful_run_publishes_its_metrics(
    cloud: LocalCloud, capsys: pytest.CaptureFixture[str]
) -> None:
    desc, caught, out = _run(cloud, capsys)
    assert desc["status"] == "SUCCEEDED"
    assert not [w for w in caught if "No application metrics" in w]
    metrics = _metrics(_emf(out))
    service = {"service": "cryopilot"}
    assert metrics["RunsStarted"] == [(1, service, "Count")]
    assert metrics["RunsSucceeded"] == [(1, service, "Count")]
    assert "RunsFailed" not in metrics
    ((seconds, dims, unit),) = metrics["TimeToStructure"]
    assert seconds > 3600
    assert (dims, unit) == (service, "Seconds")
    ((cost, _, _),) = metrics["RunCost"]
    assert cost > 0
    record = cloud.run_record(desc["name"]) or {}
    assert cost == pytest.approx(record["cost_usd"])
    stages = {d["stage"]: v for v, d, u in metrics["StageDuration"] if u == "Seconds"}
    assert set(stages) == set(record["stages"])
    for stage_id, seconds in stages.items():
        rec = record["stages"][stage_id]
        assert seconds == pytest.approx(float(rec["completed_at"]) - float(rec["started_at"]))
    # the janitor's pass after the run: the run's cluster is gone
    assert metrics["ClustersAlive"] == [(0, service, "Count")]


def test_a_failed_run_counts_as_failed(cloud: LocalCloud, capsys: pytest.CaptureFixture[str]) -> None:
    cloud.cryosparc_setup.append(lambda cs: cs.inject("fail", "class_2D_new"))
    desc, caught, out = _run(cloud, capsys)
    assert desc["status"] == "FAILED"
    assert not [w for w in caught if "No application metrics" in w]
    metrics = _metrics(_emf(out))
    assert metrics["RunsFailed"] == [(1, {"service": "cryopilot"}, "Count")]
    assert "RunsSucceeded" not in metrics
    assert "TimeToStructure" not in metrics
