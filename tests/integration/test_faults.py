"""Faults between the Lambdas and the cluster, each through the real state machine: a config
error, an SSM command that keeps timing out, an export that fails. (Throttling, capacity,
failed/killed/stuck jobs: test_state_machine.py; DELETE_FAILED and executions stopped by hand:
test_cleanup.py; an SSM command that times out once and a head node that disappears: the demo's
rehearsals of them, in test_demo_faults.py, whose verdicts check the retry and the stage named.)"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
import yaml
from cryopilot_sim.clock import VirtualClock
from cryopilot_sim.harness import LocalCloud

from tests.conftest import EVENTS

pytestmark = pytest.mark.slow

DATASET = "CGRP-2026-11"
DATA = {"movies/m0001.tif": b"\x00" * 64, "gain/gain_ref.mrc": b"g" * 32}


@pytest.fixture
def cloud() -> Iterator[LocalCloud]:
    with LocalCloud(clock=VirtualClock()) as c:
        yield c


def _start(cloud: LocalCloud, name: str = "faulty", limits: dict | None = None) -> str:
    """A manual start polling stages at most every 30 min (the faults here are not about timing)."""
    s3 = cloud.client("s3")
    for rel, body in DATA.items():
        s3.put_object(Bucket=cloud.input_bucket, Key=f"datasets/{DATASET}/{rel}", Body=body)
    manifest = yaml.safe_load((EVENTS / "manifests" / "cgrp.yaml").read_text())
    if limits:
        manifest["limits"] = limits
    doc = {
        "manifest_inline": manifest,
        "data_s3_uri": f"s3://{cloud.input_bucket}/datasets/{DATASET}/",
        "settings": {"min_poll_seconds": 1800, "max_poll_seconds": 14400},
    }
    sfn = cloud.client("stepfunctions")
    arn: str = sfn.start_execution(stateMachineArn=cloud.state_machine_arn, name=name, input=json.dumps(doc))[
        "executionArn"
    ]
    return arn


def _failed_tasks(cloud: LocalCloud, arn: str) -> list[str]:
    return [
        json.loads(e["taskFailedEventDetails"]["cause"])["errorType"]
        for e in cloud.history(arn)
        if e["type"] == "TaskFailed"
    ]


def _assert_failed_cleanly(
    cloud: LocalCloud, arn: str, error_type: str, *, created: bool = True
) -> tuple[dict, dict]:
    """(``created``: whether ParallelCluster made a cluster, which had to be deleted.)"""
    desc = cloud.wait_for_execution(arn, timeout=240)
    assert desc["status"] == "FAILED"
    record = cloud.run_record(desc["name"])
    assert record is not None
    assert record["error"]["type"] == error_type
    if created:
        assert record["cluster_deleted"] is True
    else:  # ParallelCluster refused the create: the record knows no cluster exists, without a delete
        assert record["cluster_state"] == "NOT_CREATED"
    assert cloud.pcluster.clusters() == {}
    mails = cloud.mails()
    assert len(mails) == 2, [m["subject"] for m in mails]  # started, then failed: one mail each
    assert mails[0]["subject"].startswith(f"[cryopilot] {DATASET} started: ")
    failure = mails[-1]
    assert failure["subject"].startswith(f"[cryopilot] {DATASET} failed at")
    assert failure["subject"].endswith(f": {error_type}")
    assert f"Reason: {error_type}: " in failure["message"]
    cluster_line = "has been deleted; nothing is left running" if created else "No cluster was created."
    assert cluster_line in failure["message"]
    return record, failure


def test_config_error_fails_fast_without_retries_and_mails_the_validator_message(cloud: LocalCloud) -> None:
    cloud.pcluster.inject("config_error", operation="create_cluster")
    arn = _start(cloud)
    record, failure = _assert_failed_cleanly(cloud, arn, "ClusterConfigError", created=False)
    assert _failed_tasks(cloud, arn) == ["ClusterConfigError"]  # one attempt: never retried
    assert len(list(cloud.pcluster.requests_for("create_cluster"))) == 1
    assert "is not supported in the Availability Zone" in failure["message"]
    # ParallelCluster refused the create (400): there never was a cluster, and the mail says so
    assert record["cluster_state"] == "NOT_CREATED"
    assert "No cluster was created." in failure["message"]
    assert "deleted" not in failure["message"]


def test_ssm_command_that_keeps_timing_out_fails_the_run_cleanly(cloud: LocalCloud) -> None:
    cloud.ssm_faults.append(["timeout", "status", 100])
    arn = _start(cloud)
    record, _ = _assert_failed_cleanly(cloud, arn, "AgentTimeoutError")
    assert _failed_tasks(cloud, arn).count("AgentTimeoutError") == 4  # the first try and 3 retries
    assert record["error"]["step"].startswith("stage:")


def test_export_that_keeps_failing_is_retried_then_fails_and_says_where_the_data_is(
    cloud: LocalCloud,
) -> None:
    deny = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:PutObject",
                "Resource": f"arn:aws:s3:::{cloud.results_bucket}/runs/*/results/*",
            }
        ],
    }
    cloud.client("s3").put_bucket_policy(Bucket=cloud.results_bucket, Policy=json.dumps(deny))
    arn = _start(cloud)
    record, failure = _assert_failed_cleanly(cloud, arn, "ExportError")
    # the export tasks ran into the bucket policy: three tasks, each file refused (and the completion
    # report too, so the failures give counts, not names), then the run fails
    assert _failed_tasks(cloud, arn).count("ExportError") == 1
    assert record["export"]["attempt"] == 3, record["error"]
    every = re.compile(r"(\d+) of \1 files not exported$")  # as many refused as there were
    assert all(every.search(f) for f in record["export"]["failures"]), record["export"]["failures"]
    assert record["stages"]["nurefine"]["state"] == "completed"  # the map was made
    assert "snapshot" in failure["message"]
    assert "/shared" in failure["message"]
    assert record["cluster_name"] in failure["message"]


def test_cost_ceiling_below_the_estimate_fails_before_any_cluster(cloud: LocalCloud) -> None:
    arn = _start(cloud, limits={"max_cost_usd": 100})
    desc = cloud.wait_for_execution(arn, timeout=240)
    assert desc["status"] == "FAILED"
    record = cloud.run_record(desc["name"])
    assert record is not None
    assert record["error"]["type"] == "RunLimitError"
    assert record["error"]["step"] == "validate"
    assert "would exceed limits.max_cost_usd $100" in record["error"]["message"]
    failure = cloud.mails()[-1]
    assert "limits.max_cost_usd" in failure["message"]
    assert "No cluster was created." in failure["message"]
    assert not list(cloud.pcluster.requests_for("create_cluster"))


def test_cost_ceiling_above_the_estimate_lets_the_run_finish(cloud: LocalCloud) -> None:
    arn = _start(cloud, limits={"max_cost_usd": 5000})
    desc = cloud.wait_for_execution(arn, timeout=240)
    assert desc["status"] == "SUCCEEDED", (cloud.run_record(desc["name"]) or {}).get("error")


def test_run_past_its_hour_limit_is_stopped(cloud: LocalCloud) -> None:
    arn = _start(cloud, limits={"max_hours": 3})
    record, failure = _assert_failed_cleanly(cloud, arn, "RunLimitError")
    assert "past its limit of 3 h (limits.max_hours)" in record["error"]["message"]
    assert "limits.max_hours" in failure["message"]
    elapsed_h = (record["finished_epoch"] - record["started_epoch"]) / 3600
    assert 3 < elapsed_h < 3 + 14400 / 3600 + 1  # within one (coarse) poll of the limit, plus the delete


def test_run_stopped_by_a_limit_exports_the_maps_it_has(cloud: LocalCloud) -> None:
    # ab-initio is done by about 18 h; the hour limit stops the run during heterogeneous refinement
    arn = _start(cloud, limits={"max_hours": 20})
    record, failure = _assert_failed_cleanly(cloud, arn, "RunLimitError")
    assert record["stages"]["abinit"]["state"] == "completed"
    partial = record["partial_export"]
    assert partial["files"] >= 2
    done = [
        s
        for s in ("abinit", "hetero1", "hetero2", "hetero3")
        if record["stages"].get(s, {}).get("state") == "completed"
    ]
    assert partial["stage"] == done[-1]
    prefix = f"runs/{record['run_id']}/results/partial/"
    assert partial["uri"] == f"s3://{cloud.results_bucket}/{prefix}"
    keys = [
        o["Key"]
        for o in cloud.client("s3").list_objects_v2(Bucket=cloud.results_bucket, Prefix=prefix)["Contents"]
    ]
    assert len(keys) == partial["files"]
    assert any("volume_class_" in k for k in keys)
    assert {f["kind"] for f in record["results"]["files"]} >= {"class_map", "particles"}
    assert partial["uri"] in failure["message"]
    assert "stopped early" in failure["message"]


def test_run_stopped_before_any_map_says_nothing_was_exported(cloud: LocalCloud) -> None:
    arn = _start(cloud, limits={"max_hours": 3})
    record, failure = _assert_failed_cleanly(cloud, arn, "RunLimitError")
    assert record["partial_export"] == {"files": 0, "reason": "no stage had made a map yet"}
    assert "nothing was exported" in failure["message"]


def test_a_complete_cluster_reported_without_its_head_node_is_checked_again(cloud: LocalCloud) -> None:
    # ParallelCluster leaves headNode out of describeCluster when its EC2 call is throttled: the
    # cluster is not ready yet, not a failure
    cloud.pcluster.inject("head_node_missing", count=2)
    arn = _start(cloud, "headless")
    desc = cloud.wait_for_execution(arn, timeout=240)
    assert desc["status"] == "SUCCEEDED", (cloud.run_record("headless") or {}).get("error")
    assert cloud.pcluster.pending_faults() == 0  # both describes answered without a head node
    assert _failed_tasks(cloud, arn) == []
    checks = [
        e for e in cloud.history(arn) if e.get("stateEnteredEventDetails", {}).get("name") == "CheckCluster"
    ]
    complete = [
        r
        for r in cloud.pcluster.requests_for("describe_cluster")
        if r.response.get("clusterStatus") == "CREATE_COMPLETE"
    ]
    assert len(complete) >= 3
    assert len(checks) >= 3
    record = cloud.run_record("headless")
    assert record is not None
    assert record["head_node_instance_id"]
