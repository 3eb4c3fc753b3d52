"""StartRun and the manual start, through the stack built from template.yaml.

These tests check which executions start (and with what input), not whole runs: the harness
stops whatever is still running when it shuts down.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from cryopilot_sim.clock import VirtualClock
from cryopilot_sim.harness import LocalCloud

from tests.conftest import EVENTS


@pytest.fixture
def cloud() -> Iterator[LocalCloud]:
    with LocalCloud(clock=VirtualClock(), profile="spike") as c:
        yield c


def _start_fn(cloud: LocalCloud) -> str:
    return next(n for n, f in cloud.functions.items() if f.logical_id == "StartRunFunction")


def _put_manifest(cloud: LocalCloud, folder: str = "SPIKE-FAB-07", name: str = "cryopilot.yaml") -> dict:
    body = (EVENTS / "manifests" / "spike.yaml").read_bytes()
    s3 = cloud.client("s3")
    s3.put_object(Bucket=cloud.input_bucket, Key=f"datasets/{folder}/{name}", Body=body)
    return s3.head_object(Bucket=cloud.input_bucket, Key=f"datasets/{folder}/{name}")


def test_upload_of_data_files_starts_nothing(cloud: LocalCloud) -> None:
    cloud.client("s3").put_object(Bucket=cloud.input_bucket, Key="datasets/X/movies/a.tif", Body=b"x")
    cloud.drain_events()
    assert cloud.deliveries == []  # the rule's pattern does not match data files
    assert cloud.executions() == []


@pytest.mark.parametrize("name", ["cryopilot.yaml", "cryopilot.yml", "cryopilot.json"])
def test_each_manifest_name_starts_a_run(cloud: LocalCloud, name: str) -> None:
    _put_manifest(cloud, name=name)
    cloud.drain_events()
    (execution,) = cloud.executions()
    doc = json.loads(
        cloud.client("stepfunctions").describe_execution(executionArn=execution["executionArn"])["input"]
    )
    assert doc["manifest"]["key"] == f"datasets/SPIKE-FAB-07/{name}"
    assert doc["manifest"]["version_id"]
    assert doc["trigger"] == "eventbridge-s3"


def test_s3_notification_event_starts_a_run(cloud: LocalCloud) -> None:
    head = _put_manifest(cloud, folder="SPIKE-FAB")
    cloud.drain_events()
    first = cloud.executions()
    event = json.loads((EVENTS / "s3-put.json").read_text())
    obj = event["Records"][0]["s3"]
    obj["bucket"]["name"] = cloud.input_bucket
    obj["object"]["key"] = "datasets/SPIKE%2DFAB/cryopilot.yaml"  # S3 URL-encodes keys
    obj["object"]["versionId"] = head["VersionId"]
    obj["object"]["eTag"] = head["ETag"].strip('"')
    ok, result = cloud.invoke(_start_fn(cloud), event)
    assert ok, result
    (outcome,) = result["outcomes"]
    # the EventBridge delivery of the same upload already started it: same version, same run
    assert outcome["status"] == "duplicate"
    assert len(cloud.executions()) == len(first) == 1
    assert outcome["run_id"] == first[0]["name"]


def test_an_s3_event_without_a_version_id_resolves_to_the_same_run(cloud: LocalCloud) -> None:
    # what `sam local generate-event s3 put` sends: no versionId, a made-up eTag. StartRun resolves
    # it to the object's current version (HeadObject), which the EventBridge delivery already started.
    _put_manifest(cloud, folder="SPIKE-FAB")
    cloud.drain_events()
    first = cloud.executions()
    event = json.loads((EVENTS / "s3-put.json").read_text())
    obj = event["Records"][0]["s3"]
    obj["bucket"]["name"] = cloud.input_bucket
    obj["object"]["key"] = "datasets/SPIKE-FAB/cryopilot.yaml"
    obj["object"].pop("versionId", None)
    obj["object"]["eTag"] = "0123456789abcdef0123456789abcdef"
    ok, result = cloud.invoke(_start_fn(cloud), event)
    assert ok, result
    (outcome,) = result["outcomes"]
    assert outcome["status"] == "duplicate", outcome
    assert outcome["run_id"] == first[0]["name"]
    assert len(cloud.executions()) == len(first) == 1


def test_a_dataset_folder_with_a_space_is_refused_with_its_rule(cloud: LocalCloud) -> None:
    """A space in a dataset folder (S3 notifications spell it '+') is refused at StartRun, with one
    line naming the rule, however the upload is announced: no run, no record, no mail."""
    head = _put_manifest(cloud, folder="SPIKE FAB")
    cloud.drain_events()
    event = json.loads((EVENTS / "s3-put.json").read_text())
    obj = event["Records"][0]["s3"]
    obj["bucket"]["name"] = cloud.input_bucket
    obj["object"]["key"] = "datasets/SPIKE+FAB/cryopilot.yaml"
    obj["object"]["versionId"] = head["VersionId"]
    ok, result = cloud.invoke(_start_fn(cloud), event)
    assert ok, result
    (delivered,) = cloud.deliveries
    reason = (
        "object key 'datasets/SPIKE FAB/cryopilot.yaml' has a dataset folder that contains whitespace"
        " U+0020 (SPACE); a dataset name is ASCII letters, digits, '.', '_' and '-', starting with a"
        " letter or digit, at most 48 characters"
    )
    for outcomes in (delivered.result["outcomes"], result["outcomes"]):
        assert outcomes == [{"status": "ignored", "reason": reason}]
    assert cloud.executions() == []
    assert cloud.mails() == []


def _datasync_done_event(cloud: LocalCloud, subdirectory: str) -> dict:
    """A DataSync "task execution SUCCESS" event for a real (moto) transfer into ``subdirectory``
    of the input bucket."""
    ds = cloud.client("datasync")
    src = ds.create_location_smb(
        ServerHostname="microscope.local",
        Subdirectory="/share",
        User="u",
        Password="p",
        AgentArns=["arn:aws:datasync:us-east-1:123456789012:agent/agent-0"],
    )
    dst = ds.create_location_s3(
        S3BucketArn=f"arn:aws:s3:::{cloud.input_bucket}",
        Subdirectory=subdirectory,
        S3Config={"BucketAccessRoleArn": "arn:aws:iam::123456789012:role/datasync"},
    )
    task = ds.create_task(SourceLocationArn=src["LocationArn"], DestinationLocationArn=dst["LocationArn"])
    execution = ds.start_task_execution(TaskArn=task["TaskArn"])["TaskExecutionArn"]
    event = json.loads((EVENTS / "datasync-success.json").read_text())
    event["resources"] = [execution]
    return event


def test_datasync_success_starts_the_run_at_its_destination(cloud: LocalCloud) -> None:
    # a deployment that relies on DataSync alone: the upload rule is off, the transfer's end starts the run
    rule = next(
        r["Name"] for r in cloud.client("events").list_rules()["Rules"] if "ManifestUploaded" in r["Name"]
    )
    cloud.client("events").disable_rule(Name=rule)
    s3 = cloud.client("s3")
    s3.put_object(Bucket=cloud.input_bucket, Key="datasets/SPIKE-FAB-07/micrographs/a.mrc", Body=b"m")
    body = (EVENTS / "manifests" / "spike.yaml").read_bytes()
    s3.put_object(Bucket=cloud.input_bucket, Key="datasets/SPIKE-FAB-07/cryopilot.yaml", Body=body)
    cloud.drain_events()
    assert cloud.deliveries == []
    assert cloud.executions() == []
    event = _datasync_done_event(cloud, "/datasets/SPIKE-FAB-07/")
    ok, result = cloud.invoke(_start_fn(cloud), event)
    assert ok, result
    (outcome,) = result["outcomes"]
    assert outcome["status"] == "started"
    assert outcome["manifest"] == f"s3://{cloud.input_bucket}/datasets/SPIKE-FAB-07/cryopilot.yaml"
    (execution,) = cloud.executions()
    doc = json.loads(
        cloud.client("stepfunctions").describe_execution(executionArn=execution["executionArn"])["input"]
    )
    assert doc["trigger"] == "datasync"
    assert doc["manifest"]["version_id"]
    # the same transfer reported twice starts nothing more
    ok, again = cloud.invoke(_start_fn(cloud), event)
    assert again["outcomes"][0]["status"] == "duplicate"
    assert len(cloud.executions()) == 1


def test_datasync_destination_without_manifest_is_ignored(cloud: LocalCloud) -> None:
    event = _datasync_done_event(cloud, "/datasets/EMPTY/")
    ok, result = cloud.invoke(_start_fn(cloud), event)
    assert ok
    (outcome,) = result["outcomes"]
    assert outcome["status"] == "ignored"
    assert "holds no cryopilot manifest" in outcome["reason"]
    assert cloud.executions() == []


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (
            lambda e: e["detail"]["bucket"].update(name="someone-elses-bucket"),
            "not this stack's input bucket",
        ),
        (lambda e: e["detail"]["object"].update(key="datasets/a/b/cryopilot.yaml"), "not a manifest"),
        (lambda e: e["detail"]["object"].update(key="datasets/../cryopilot.yaml"), "'..'"),
        (lambda e: e["detail"].pop("object"), "malformed"),
        (lambda e: e.update(source="aws.ec2"), "unknown event"),
    ],
)
def test_unusable_events_are_ignored_with_a_reason(cloud: LocalCloud, mutate, reason: str) -> None:
    event = json.loads((EVENTS / "eventbridge-s3-object-created.json").read_text())
    event["detail"]["bucket"]["name"] = cloud.input_bucket
    mutate(event)
    ok, result = cloud.invoke(_start_fn(cloud), event)
    assert ok, "a bad event must not crash StartRun"
    (outcome,) = result["outcomes"]
    assert outcome["status"] == "ignored"
    assert reason in outcome["reason"]
    assert cloud.executions() == []


def _manual(cloud: LocalCloud, name: str, doc: dict) -> dict:
    sfn = cloud.client("stepfunctions")
    arn = sfn.start_execution(stateMachineArn=cloud.state_machine_arn, name=name, input=json.dumps(doc))[
        "executionArn"
    ]
    return arn


def test_manual_start_with_an_s3_uri(cloud: LocalCloud) -> None:
    _put_manifest(cloud)
    cloud.drain_events()
    doc = json.loads((EVENTS / "manual-start-s3.json").read_text())
    doc["manifest_s3_uri"] = f"s3://{cloud.input_bucket}/datasets/SPIKE-FAB-07/cryopilot.yaml"
    _manual(cloud, "manual-s3", doc)
    record = _wait_for_record(cloud, "manual-s3", "cluster_name")
    assert record["dataset"] == "SPIKE-FAB-07"
    assert record["trigger"] == "manual"
    # where the manifest is (the version in S3), never the document itself
    assert record["manifest"]["version_id"]
    assert set(record["manifest"]) == {"bucket", "key", "version_id", "etag"}
    assert "manifest_doc" not in record


def test_manual_start_inline(cloud: LocalCloud) -> None:
    doc = json.loads((EVENTS / "manual-start-inline.json").read_text())
    doc["data_s3_uri"] = f"s3://{cloud.input_bucket}/datasets/SPIKE-FAB-07/"
    _manual(cloud, "manual-inline", doc)
    record = _wait_for_record(cloud, "manual-inline", "cluster_name")
    # the record says where the inline manifest is kept (the execution's input), not the document
    assert record["manifest"] == {
        "inline": True,
        "data_s3_uri": doc["data_s3_uri"],
        "kept_in": "execution input",
    }
    assert "manifest_doc" not in record
    assert record["preset"] == "micrographs"


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({}, "give exactly one of manifest, manifest_s3_uri, manifest_inline"),
        ({"manifest_inline": {"dataset": "x"}}, "needs data_s3_uri"),
        (
            {"manifest_s3_uri": "s3://other-bucket/datasets/x/cryopilot.yaml"},
            "is not in this stack's input bucket",
        ),
        ({"manifest_s3_uri": "not-a-uri"}, "manifest_s3_uri"),
        ({"manifest_s3_uri": "s3://b/k", "colour": 1}, "colour: unknown field"),
        (
            {"manifest_inline": {"dataset": "x"}, "data_s3_uri": "s3://{bucket}/d/"},
            "manifest_inline: input: required field",
        ),
    ],
)
def test_bad_manual_input_fails_at_validate(cloud: LocalCloud, doc: dict, expected: str) -> None:
    doc = json.loads(json.dumps(doc).replace("{bucket}", cloud.input_bucket))
    arn = _manual(cloud, "bad-input", doc)
    desc = cloud.wait_for_execution(arn, timeout=60)
    assert desc["status"] == "FAILED"
    record = cloud.run_record("bad-input")
    assert record is not None
    assert record["error"]["type"] == "ManifestError"
    assert expected in record["error"]["message"]
    assert "Validate" in cloud.states_entered(arn)
    assert "CreateCluster" not in cloud.states_entered(arn)


def test_operator_start_starts_one_run_with_the_operators_input(cloud: LocalCloud) -> None:
    """What ``cryopilot submit`` sends StartRun (events/operator-start.json)."""
    _put_manifest(cloud)
    cloud.drain_events()
    assert len(cloud.executions()) == 1  # the upload's own run
    event = json.loads((EVENTS / "operator-start.json").read_text())
    request = event["operator_start"]
    request["input"]["manifest_s3_uri"] = f"s3://{cloud.input_bucket}/datasets/SPIKE-FAB-07/cryopilot.yaml"
    ok, result = cloud.invoke(_start_fn(cloud), event)
    assert ok
    assert [o["status"] for o in result["outcomes"]] == ["started"]
    ok, again = cloud.invoke(_start_fn(cloud), event)
    assert [o["status"] for o in again["outcomes"]] == ["duplicate"]
    arns = [e["executionArn"] for e in cloud.executions() if e["name"] == request["run_id"]]
    assert len(arns) == 1
    doc = json.loads(cloud.client("stepfunctions").describe_execution(executionArn=arns[0])["input"])
    assert doc == request["input"]
    record = _wait_for_record(cloud, request["run_id"], "cluster_name")
    assert record["trigger"] == "operator"
    assert record["dataset"] == "SPIKE-FAB-07"


@pytest.mark.parametrize(
    ("request_doc", "reason"),
    [
        ({"run_id": "a/b", "dataset": "x", "input": {"manifest_s3_uri": "s3://b/k"}}, "run_id"),
        ({"run_id": "r" * 81, "dataset": "x", "input": {"manifest_s3_uri": "s3://b/k"}}, "run_id"),
        ({"run_id": "op-1", "dataset": "x", "input": {}}, "give exactly one of"),
        ({"run_id": "op-1", "input": {"manifest_s3_uri": "s3://b/k"}}, "dataset: required field"),
        (
            {"run_id": "op-1", "dataset": "x", "input": {"manifest_s3_uri": "s3://b/k"}, "now": True},
            "now: unknown field",
        ),
        ({"run_id": "op-1", "dataset": "x", "input": {"manifest_inline": {}}}, "needs data_s3_uri"),
        ("op-1", "operator start"),
        # the data folder: in the stack's input bucket only, and a well-formed S3 folder
        (
            {
                "run_id": "op-1",
                "dataset": "x",
                "input": {"manifest_inline": {}, "data_s3_uri": "s3://someone-elses-bucket/datasets/x/"},
            },
            "input.data_s3_uri: s3://someone-elses-bucket/datasets/x/: is not in this stack's input bucket",
        ),
        (
            {
                "run_id": "op-1",
                "dataset": "x",
                "input": {"manifest_inline": {}, "data_s3_uri": "s3://Bad_Bucket/x/"},
            },
            "input.data_s3_uri: 'Bad_Bucket' is not an S3 bucket name",
        ),
        (
            {
                "run_id": "op-1",
                "dataset": "x",
                "input": {"manifest_s3_uri": "s3://someone-elses-bucket/datasets/x/cryopilot.yaml"},
            },
            "input.manifest_s3_uri: s3://someone-elses-bucket/datasets/x/cryopilot.yaml: is not in this"
            " stack's input bucket",
        ),
        (
            {
                "run_id": "op-1",
                "dataset": "x",
                "input": {"manifest_s3_uri": "s3://{bucket}/datasets/My Data/cryopilot.yaml"},
            },
            "input.manifest_s3_uri: object key 'datasets/My Data/cryopilot.yaml' has a dataset folder that"
            " contains whitespace",
        ),
        # a version id S3 cannot have issued, or one it does not hold: the rules an event's gets
        (
            {
                "run_id": "op-1",
                "dataset": "x",
                "input": {
                    "manifest": {
                        "bucket": "{bucket}",
                        "key": "datasets/x/cryopilot.yaml",
                        "version_id": "v 1",
                    }
                },
            },
            "input.manifest: s3://{bucket}/datasets/x/cryopilot.yaml: version id 'v 1' (3 characters)"
            " is not an S3 version id",
        ),
        (
            {
                "run_id": "op-1",
                "dataset": "x",
                "input": {
                    "manifest": {
                        "bucket": "{bucket}",
                        "key": "datasets/x/cryopilot.yaml",
                        "version_id": "forged-version-1",
                    }
                },
            },
            "input.manifest: s3://{bucket}/datasets/x/cryopilot.yaml version 'forged-version-1': ",
        ),
        # the dataset name goes on the record before Validate: the same rule as the manifest's
        (
            {"run_id": "op-1", "dataset": "SPIKE\u202eFAB", "input": {"manifest_s3_uri": "s3://b/k"}},
            "dataset: String should match pattern",
        ),
    ],
)
def test_bad_operator_starts_are_refused_before_they_queue(
    cloud: LocalCloud, request_doc: object, reason: str
) -> None:
    request_doc = json.loads(json.dumps(request_doc).replace("{bucket}", cloud.input_bucket))
    reason = reason.replace("{bucket}", cloud.input_bucket)
    ok, result = cloud.invoke(_start_fn(cloud), {"operator_start": request_doc})
    assert ok, "a bad operator start must not crash StartRun"
    (outcome,) = result["outcomes"]
    assert outcome["status"] == "ignored"
    assert outcome["reason"].startswith("operator start: ")
    assert reason in outcome["reason"]
    assert cloud.executions() == []
    assert cloud.run_record("op-1") is None


def _wait_for_record(cloud: LocalCloud, run_id: str, field: str) -> dict:
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        record = cloud.run_record(run_id)
        if record and record.get(field):
            return record
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} never got {field}: {cloud.run_record(run_id)}")


def _s3_notification(cloud: LocalCloud, key: str, head: dict) -> dict:
    """The S3 event notification of one upload (``head``: its HeadObject answer)."""
    event = json.loads((EVENTS / "s3-put.json").read_text())
    obj = event["Records"][0]["s3"]
    obj["bucket"]["name"] = cloud.input_bucket
    obj["object"]["key"] = key
    obj["object"]["versionId"] = head["VersionId"]
    obj["object"]["eTag"] = head["ETag"].strip('"')
    return event


def test_a_new_manifest_version_supersedes_the_running_run(cloud: LocalCloud) -> None:
    """A second version of a dataset's manifest, uploaded while the first version's run goes:
    the old run is stopped (its cluster deleted, one mail saying why and which run replaces it)
    and the new version's run starts. One run per dataset folder at a time: never two clusters
    and two "done" mails. Replays of either version's event start nothing more."""
    import time
    from unittest import mock

    from cryopilot.steps import cluster as cluster_step

    doc = (EVENTS / "manifests" / "spike.yaml").read_text().replace("diameter_A: 280", "diameter_A: 290")
    assert doc != (EVENTS / "manifests" / "spike.yaml").read_text()
    s3 = cloud.client("s3")
    key = "datasets/SPIKE-FAB-07/cryopilot.yaml"
    handled: list[tuple[str, dict, tuple[bool, dict], dict]] = []
    create = cluster_step.create

    def create_then_supersede(run_id: str) -> cluster_step.ClusterStep:
        """The first run's cluster step: it asks for its cluster, then stands still, in its own
        step, while the new version's upload is handled (its S3 notification, delivered here; the
        rule's delivery of the same upload comes after, a duplicate). The harness runs one Lambda
        at a time, on a re-entrant lock: StartRun runs here, and the old run goes on only after."""
        step = create(run_id)
        if not handled:
            s3.put_object(Bucket=cloud.input_bucket, Key=key, Body=doc.encode())
            second = s3.head_object(Bucket=cloud.input_bucket, Key=key)
            answer = cloud.invoke(_start_fn(cloud), _s3_notification(cloud, key, second))
            handled.append((run_id, second, answer, cloud.run_record(run_id) or {}))
        return step

    with mock.patch.object(cluster_step, "create", create_then_supersede):
        first = _put_manifest(cloud)
        cloud.drain_events()
        deadline = time.monotonic() + 120
        while not handled:
            assert time.monotonic() < deadline, "the first run never asked for its cluster"
            time.sleep(0.02)
    ((old_run_id, second, (ok, result), old_record),) = handled
    old = next(e for e in cloud.executions() if e["name"] == old_run_id)
    assert ok, result
    assert result["outcomes"][0]["status"] == "started"
    assert old_record.get("status") == "CANCELLED"
    assert list(cloud.pcluster.requests_for("create_cluster")), "the first run had asked for its cluster"
    cloud.drain_events()
    executions = {e["name"]: e for e in cloud.executions()}
    assert len(executions) == 2
    new = next(e for n, e in executions.items() if n != old["name"])
    assert cloud.wait_for_execution(old["executionArn"], timeout=60)["status"] == "ABORTED"
    assert cloud.client("stepfunctions").describe_execution(executionArn=new["executionArn"])["status"] in (
        "RUNNING",
        "SUCCEEDED",
    )
    record = cloud.run_record(old["name"])
    assert record is not None
    assert record["status"] == "CANCELLED"
    assert record["error"]["type"] == "Superseded"
    assert new["name"] in record["error"]["message"]

    deadline = time.monotonic() + 60
    while not [d for d in cloud.deliveries if d.function.endswith("CleanupFunction")]:
        assert time.monotonic() < deadline, "the old execution's end never reached the cleanup function"
        time.sleep(0.02)
    cloud.drain_events()
    (why,) = [m for m in cloud.mails() if "superseded" in m["subject"]]
    assert why["subject"] == "[cryopilot] SPIKE-FAB-07 was superseded by a new manifest version"
    assert new["name"] in why["message"]
    assert "is being deleted now" in why["message"]
    from cryopilot.adapters import admission

    holders = admission.read().holders
    assert old["name"] not in holders, "the superseded run's slot is released"
    assert new["name"] in holders
    old_cluster = (cloud.run_record(old["name"]) or {})["cluster_name"]
    cloud.clock.sleep(600)
    assert old_cluster not in cloud.pcluster.clusters()

    # replays start nothing more and never restart the old run: the new version's is a duplicate,
    # the old version's is ignored (S3 holds a newer version of the manifest)
    for head, status in ((first, "ignored"), (second, "duplicate")):
        ok, result = cloud.invoke(_start_fn(cloud), _s3_notification(cloud, key, head))
        assert ok, result
        assert result["outcomes"][0]["status"] == status
    assert len(cloud.executions()) == 2
    assert cloud.client("stepfunctions").describe_execution(executionArn=new["executionArn"])["status"] in (
        "RUNNING",
        "SUCCEEDED",
    )


def test_an_older_version_whose_event_comes_last_starts_nothing(cloud: LocalCloud) -> None:
    """Two versions uploaded back to back, their events delivered out of order (EventBridge and S3
    notifications promise no order): the newer version runs; the older one's late event starts
    nothing and supersedes nothing, because S3 already holds a newer version of that manifest."""
    # the uploads go in with the upload rule off; their events are delivered here, newest first
    rule = next(
        r["Name"] for r in cloud.client("events").list_rules()["Rules"] if "ManifestUploaded" in r["Name"]
    )
    cloud.client("events").disable_rule(Name=rule)
    s3 = cloud.client("s3")
    key = "datasets/SPIKE-FAB-07/cryopilot.yaml"
    first = _put_manifest(cloud)
    doc = (EVENTS / "manifests" / "spike.yaml").read_text().replace("diameter_A: 280", "diameter_A: 290")
    s3.put_object(Bucket=cloud.input_bucket, Key=key, Body=doc.encode())
    second = s3.head_object(Bucket=cloud.input_bucket, Key=key)
    assert first["VersionId"] != second["VersionId"]
    ok, result = cloud.invoke(_start_fn(cloud), _s3_notification(cloud, key, second))
    assert ok, result
    (newest,) = result["outcomes"]
    assert newest["status"] == "started"
    ok, result = cloud.invoke(_start_fn(cloud), _s3_notification(cloud, key, first))
    assert ok, result
    (late,) = result["outcomes"]
    assert late == {
        "status": "ignored",
        "reason": f"s3://{cloud.input_bucket}/{key} version {first['VersionId']!r}: a newer version"
        f" ({second['VersionId']!r}) of this manifest is in S3; only the newest version of a"
        " folder's manifest runs",
    }
    record = cloud.run_record(newest["run_id"])
    assert record is not None
    assert record["status"] not in ("CANCELLED",), "the newer run must not be superseded by an older version"
    assert [e["name"] for e in cloud.executions()] == [newest["run_id"]]


def test_a_retried_start_of_a_new_version_still_supersedes(cloud: LocalCloud) -> None:
    """StartRun claimed a new manifest version, then died before it took the folder (Lambda
    retries the event): the retry finds its own claim and must still make the new version the
    folder's run, superseding the previous version's."""
    from cryopilot.adapters import runs
    from cryopilot.domain.location import ManifestLocation

    rule = next(
        r["Name"] for r in cloud.client("events").list_rules()["Rules"] if "ManifestUploaded" in r["Name"]
    )
    cloud.client("events").disable_rule(Name=rule)
    s3 = cloud.client("s3")
    key = "datasets/SPIKE-FAB-07/cryopilot.yaml"
    with cloud._invoke_lock:  # the runs stand still: only StartRun's own invocations go
        first = _put_manifest(cloud)
        ok, result = cloud.invoke(_start_fn(cloud), _s3_notification(cloud, key, first))
        assert ok, result
        old = result["outcomes"][0]["run_id"]
        doc = (EVENTS / "manifests" / "spike.yaml").read_text().replace("diameter_A: 280", "diameter_A: 290")
        s3.put_object(Bucket=cloud.input_bucket, Key=key, Body=doc.encode())
        second = s3.head_object(Bucket=cloud.input_bucket, Key=key)
        location = ManifestLocation(
            bucket=cloud.input_bucket, key=key, version_id=second["VersionId"], etag=second["ETag"]
        )
        # what the first invocation did before it died
        assert runs.store().claim_manifest(location.digest(), location.run_id(), location.model_dump())[1]
        ok, result = cloud.invoke(_start_fn(cloud), _s3_notification(cloud, key, second))
        assert ok, result
        (outcome,) = result["outcomes"]
        assert outcome["status"] in ("started", "queued"), outcome
        assert outcome["run_id"] == location.run_id()
        record = cloud.run_record(old)
        assert record is not None
        assert record["status"] == "CANCELLED", "the previous version's run goes on beside the new one"
        assert record["error"]["type"] == "Superseded"


def test_a_new_manifest_version_takes_the_place_of_a_run_waiting_for_a_slot() -> None:
    """With every slot taken, the first version's run waits in the queue; a second version
    supersedes it there: the first is taken out of the queue (CANCELLED, never started, no
    cluster) and the second waits in its place."""
    from cryopilot.adapters import admission

    with LocalCloud(clock=VirtualClock(), profile="spike", parameters={"MaxConcurrentRuns": 1}) as cloud:
        assert admission.admit("SOMEONE-ELSE", 1) == "admitted"  # the one slot is taken
        _put_manifest(cloud)
        cloud.drain_events()
        (first,) = admission.read().queue
        body = (EVENTS / "manifests" / "spike.yaml").read_text().replace("diameter_A: 280", "diameter_A: 290")
        s3 = cloud.client("s3")
        s3.put_object(Bucket=cloud.input_bucket, Key="datasets/SPIKE-FAB-07/cryopilot.yaml", Body=body)
        cloud.drain_events()
        (second,) = admission.read().queue
        assert second != first
        record = cloud.run_record(first)
        assert record is not None
        assert (record["status"], record["error"]["type"]) == ("CANCELLED", "Superseded")
        assert second in record["error"]["message"]
        assert cloud.executions() == [], "the superseded run never starts"
        assert admission.read().holders == {"SOMEONE-ELSE"}


def test_a_permission_cut_from_the_template_denies_the_call_that_needs_it(cloud: LocalCloud) -> None:
    """Least privilege proven by execution: StartRun's role as SAM generates it, without
    ``states:StartExecution``, cannot start the run its manifest asks for."""
    cloud.revoke("StartRunFunction", "states:StartExecution")
    _put_manifest(cloud, folder="SPIKE-CUT")
    cloud.drain_events()
    assert cloud.executions() == []
    errors = [d.error or json.dumps(d.result) for d in cloud.deliveries if d.function == _start_fn(cloud)]
    assert any("AccessDenied" in e and "states:StartExecution" in e for e in errors), errors


def test_a_version_run_long_ago_is_not_run_again_once_step_functions_forgets_it(
    cloud: LocalCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A STANDARD execution's name is unique for 90 days: then DescribeExecution answers
    # ExecutionDoesNotExist and StartExecution would take the name again. The run's record remembers.
    from cryopilot.adapters import admission, runs

    head = _put_manifest(cloud, folder="SPIKE-OLD")
    cloud.drain_events()
    (first,) = cloud.executions()
    runs.store().update_run(first["name"], status="SUCCEEDED")
    monkeypatch.setattr(admission, "execution_status", lambda _run_id: None)  # 90 days later
    # (moto never forgets a name, so a second start would look idempotent here: forbid it outright)
    from cryopilot.steps import start_run

    def started_again(*args: object) -> None:
        raise AssertionError("the run was started again")

    monkeypatch.setattr(start_run, "_admit_and_start", started_again)
    event = json.loads((EVENTS / "s3-put.json").read_text())
    obj = event["Records"][0]["s3"]
    obj["bucket"]["name"] = cloud.input_bucket
    obj["object"]["key"] = "datasets/SPIKE-OLD/cryopilot.yaml"
    obj["object"]["versionId"] = head["VersionId"]
    obj["object"]["eTag"] = head["ETag"].strip('"')
    ok, result = cloud.invoke(_start_fn(cloud), event)
    assert ok, result
    (outcome,) = result["outcomes"]
    assert outcome["status"] == "duplicate", outcome
    assert outcome["run_id"] == first["name"]
    assert len(cloud.executions()) == 1
