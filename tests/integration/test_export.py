"""The export through the FSx data repository, through the real state machine: the agent writes
the results onto the cluster's FSx, an export task takes them (and with ``export: project`` the
whole cryoSPARC project) to the results bucket, every result file is checked in S3 before the
cluster is deleted, and a task that fails is retried, then fails the run with a mail saying what
is kept where."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import yaml
from cryopilot_sim.clock import VirtualClock
from cryopilot_sim.harness import LocalCloud

from tests.conftest import EVENTS

pytestmark = pytest.mark.slow

DATA = {"micrographs/a0001.mrc": b"\x00" * 64, "micrographs/a0002.mrc": b"\x01" * 64}


def _spike(folder: str, **changes: object) -> str:
    doc = yaml.safe_load((EVENTS / "manifests" / "spike.yaml").read_text())
    doc.update(dataset=folder, **changes)
    return yaml.safe_dump(doc, sort_keys=False)


def _run(cloud: LocalCloud, folder: str, **changes: object) -> tuple[dict, dict]:
    cloud.drop_dataset(folder, _spike(folder, **changes), DATA)
    cloud.drain_events()
    (execution,) = cloud.executions()
    desc = cloud.wait_for_execution(execution["executionArn"], timeout=240)
    record = cloud.run_record(desc["name"])
    assert record is not None
    return desc, record


def _tagged_file_systems(cloud: LocalCloud, run_id: str) -> list[str]:
    found = []
    for fs in cloud.client("fsx").describe_file_systems()["FileSystems"]:
        tags = {t["Key"]: t["Value"] for t in fs.get("Tags", [])}
        if tags.get("cryopilot:run-id") == run_id:
            found.append(fs["FileSystemId"])
    return found


@pytest.fixture
def one_failed_task() -> Iterator[LocalCloud]:
    with LocalCloud(clock=VirtualClock(), profile="spike", fsx_options={"fail_next": 1}) as c:
        yield c


@pytest.fixture
def failing_tasks() -> Iterator[LocalCloud]:
    with LocalCloud(clock=VirtualClock(), profile="spike", fsx_options={"fail_next": 3}) as c:
        yield c


def test_export_project_survives_one_failed_task(one_failed_task: LocalCloud) -> None:
    cloud = one_failed_task
    desc, record = _run(cloud, "SPIKE-EXPORT-PROJECT", export="project")
    run_id = desc["name"]
    assert desc["status"] == "SUCCEEDED", record.get("error")
    entered = cloud.states_entered(desc["executionArn"])
    assert {"ExportResults", "WaitForExport", "CheckExport", "WriteReport"} <= set(entered)

    task = record["export"]
    assert task["mode"] == "project"
    assert task["attempt"] == 2, task  # the first task failed, the second exported everything
    (failure,) = task["failures"]
    assert "failed" in failure
    # the report's rows: each file's path relative to the mount, and its error code
    assert "files not exported: projects/" in failure
    assert "(ExportFailed) and " in failure
    assert task["paths"][0] == "results"
    assert task["paths"][1].startswith("projects/")

    s3 = cloud.client("s3")
    bucket = cloud.results_bucket
    # the first task's completion report, where FSx delivers it
    reports = s3.list_objects_v2(Bucket=bucket, Prefix=f"runs/{run_id}/results/export-reports/")
    (report_key,) = [o["Key"] for o in reports.get("Contents", [])]
    assert report_key.endswith("/failures.csv")
    assert "/task-" in report_key

    # every result file is in S3 with the size the agent wrote on FSx
    results = record["results"]
    assert results["uri"] == f"s3://{bucket}/runs/{run_id}/results/"
    assert {f["kind"] for f in results["files"]} >= {"map", "half_map_a", "half_map_b", "mask", "fsc"}
    for f in results["files"]:
        assert f["key"] == f"runs/{run_id}/results/{f['name']}"
        assert s3.head_object(Bucket=bucket, Key=f["key"])["ContentLength"] == f["size"]

    # the project: every job's files, under the projects association's prefix
    assert results["project_uri"] == f"s3://{bucket}/runs/{run_id}/project/"
    project = s3.list_objects_v2(Bucket=bucket, Prefix=f"runs/{run_id}/project/").get("Contents", [])
    keys = [o["Key"] for o in project]
    assert any(k.endswith(".mrc") for k in keys), keys
    assert any(k.endswith(".cs") for k in keys), keys
    assert len(keys) > len(results["files"])

    (mail,) = [m for m in cloud.mails() if "done:" in m["subject"]]
    assert (
        f"Also exported: the whole cryoSPARC project (every job's output) to {results['project_uri']}"
        in (mail["message"])
    )
    assert "Not exported: the raw data" in mail["message"]
    # the storage and the export in the mail, the record and the report
    assert "and the /shared snapshot kept after it: about $" in mail["message"]
    assert record["snapshot_cost_usd"] > 0
    report = s3.get_object(Bucket=bucket, Key=f"runs/{run_id}/report/report.md")["Body"].read().decode()
    (storage_line,) = [ln for ln in report.splitlines() if ln.startswith("- **Storage:** ")]
    assert f"FSx for Lustre {record['fsx_storage_gib']:,} GiB" in storage_line
    assert "/shared snapshot (25 GiB, kept 30 days)" in storage_line
    (exported_line,) = [ln for ln in report.splitlines() if ln.startswith("- **Exported:** ")]
    assert "the whole cryoSPARC project to " in exported_line
    assert _tagged_file_systems(cloud, run_id) == [], "the FSx file system goes with the cluster"
    assert cloud.pcluster.clusters() == {}


def test_an_export_that_keeps_failing_fails_the_run_and_says_what_is_kept(failing_tasks: LocalCloud) -> None:
    cloud = failing_tasks
    desc, record = _run(cloud, "SPIKE-EXPORT-FAILS")
    run_id = desc["name"]
    assert desc["status"] == "FAILED"
    error = record["error"]
    assert (error["type"], error["step"]) == ("ExportError", "export")
    assert error["message"].startswith("the export failed 3 times; the last: task task-")
    assert "files not exported" in error["message"]
    assert record["export"]["attempt"] == 3
    assert len(record["export"]["failures"]) == 3
    # nothing was verified, so nothing is claimed
    assert not (record.get("results") or {}).get("files")

    (mail,) = [m for m in cloud.mails() if "failed" in m["subject"]]
    body = mail["message"]
    assert "Reason: ExportError: the export failed 3 times" in body
    assert "The results were NOT exported." in body
    assert "kept as an EBS snapshot" in body  # the database, on /shared
    assert "deleted with the cluster" in body  # the project, on FSx
    assert record["cluster_deleted"] is True
    assert _tagged_file_systems(cloud, run_id) == []
    assert cloud.pcluster.clusters() == {}


@pytest.fixture
def spike_cloud() -> Iterator[LocalCloud]:
    with LocalCloud(clock=VirtualClock(), profile="spike") as c:
        yield c


def test_the_janitor_retires_shared_snapshots_after_the_retention_days(spike_cloud: LocalCloud) -> None:
    cloud = spike_cloud
    desc, record = _run(cloud, "SPIKE-SNAPSHOTS")
    run_id = desc["name"]
    assert desc["status"] == "SUCCEEDED", record.get("error")
    assert record["volume_ids"], "the cluster's volumes are found by the run's tag when it is ready"
    ec2 = cloud.client("ec2")
    # another stack's snapshot, just as old: never touched
    other = ec2.create_volume(AvailabilityZone="us-east-1a", Size=8)["VolumeId"]
    foreign = ec2.create_snapshot(VolumeId=other)["SnapshotId"]
    ec2.create_tags(Resources=[foreign], Tags=[{"Key": "cryopilot:stack", "Value": "someone-else"}])
    cloud._set_snapshot_time(foreign, cloud.clock.now())

    first = cloud.run_schedule("CleanupFunction")
    assert first["snapshots_tagged"] == 1  # the /shared snapshot ParallelCluster left at deletion
    assert first["snapshots"] == []  # young: kept
    (snap,) = (cloud.run_record(run_id) or {})["shared_snapshots"]
    tags = ec2.describe_snapshots(SnapshotIds=[snap["id"]])["Snapshots"][0]["Tags"]
    tagged = {t["Key"]: t["Value"] for t in tags}
    assert (tagged["cryopilot:stack"], tagged["cryopilot:run-id"]) == (cloud.stack_name, run_id)
    mails_before = len(cloud.mails())

    cloud.clock.sleep(31 * 86400)  # SnapshotRetentionDays is 30 by default
    second = cloud.run_schedule("CleanupFunction")
    (retired,) = second["snapshots"]
    assert (retired["snapshot_id"], retired["run_id"], retired["deleted"]) == (snap["id"], run_id, True)
    left = {s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]}
    assert snap["id"] not in left
    assert foreign in left
    (mail,) = cloud.mails()[mails_before:]
    assert mail["subject"] == "[cryopilot] janitor: 1 old snapshot(s) deleted"
    assert f"- {snap['id']} (run {run_id}, " in mail["message"]
    assert "never deleted by cryopilot" in mail["message"]
    # the results stay
    for f in record["results"]["files"]:
        cloud.client("s3").head_object(Bucket=cloud.results_bucket, Key=f["key"])
