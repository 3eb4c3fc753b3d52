"""The real state machine, executed by moto, driving the real handlers against the stand-ins.

Each test drops a dataset into the input bucket (the template's EventBridge rule routes it to
StartRun) and then checks the states entered, the run record, the mails and the cluster's end.
The clock is virtual: a 36-hour run takes seconds and every figure is exact.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import yaml
from cryopilot_ops import ops
from cryopilot_sim import demo
from cryopilot_sim.clock import VirtualClock
from cryopilot_sim.harness import LocalCloud

from tests.conftest import EVENTS

pytestmark = pytest.mark.slow

DATA = {"movies/m0001.tif": b"\x00" * 64, "movies/m0002.tif": b"\x01" * 64, "gain/gain_ref.mrc": b"g" * 32}


@pytest.fixture
def cloud(request: pytest.FixtureRequest) -> Iterator[LocalCloud]:
    with LocalCloud(clock=VirtualClock(), profile=getattr(request, "param", "cgrp")) as c:
        yield c


def _manifest(name: str) -> str:
    return (EVENTS / "manifests" / name).read_text()


def _only_execution(cloud: LocalCloud) -> dict:
    cloud.drain_events()
    execs = cloud.executions()
    assert len(execs) == 1, execs
    return cloud.wait_for_execution(execs[0]["executionArn"], timeout=240)


def _assert_rehearsal_passes(cloud: LocalCloud, fail: str, desc: dict) -> None:
    """The run also meets what `cryopilot demo --fail FAIL` expects of it (its verdict): the tests
    of the capacity faults arm them as the demo does and check both in one run."""
    run_id = desc["name"]
    statuses = {run_id: desc["status"]}
    cleanups = demo._await_cleanups(cloud, statuses)  # the cleanup function's answer to a failed run
    verdict = demo._verdict(
        cloud,
        fail,
        {run_id: desc["executionArn"]},
        statuses,
        {run_id: cloud.run_record(run_id) or {}},
        cloud.mails(),
        sorted(cloud.pcluster.clusters()),
        cleanups,
        [],
    )
    assert verdict["passed"], verdict["problems"]


def _start_with_coarse_polls(cloud: LocalCloud, dataset: str = "CGRP-2026-11") -> dict:
    """A manual start of the CGRP manifest polling its stages at most every 30 min (for tests of
    the cluster's side, where the stages' timeline does not matter); the finished execution."""
    import yaml

    s3 = cloud.client("s3")
    for rel, body in DATA.items():
        s3.put_object(Bucket=cloud.input_bucket, Key=f"datasets/{dataset}/{rel}", Body=body)
    doc = {
        "manifest_inline": yaml.safe_load(_manifest("cgrp.yaml")),
        "data_s3_uri": f"s3://{cloud.input_bucket}/datasets/{dataset}/",
        "settings": {"min_poll_seconds": 1800, "max_poll_seconds": 14400},
    }
    sfn = cloud.client("stepfunctions")
    arn = sfn.start_execution(
        stateMachineArn=cloud.state_machine_arn, name=f"{dataset}-coarse", input=json.dumps(doc)
    )["executionArn"]
    return cloud.wait_for_execution(arn, timeout=240)


def test_successful_run(cloud: LocalCloud) -> None:
    cloud.drop_dataset("CGRP-2026-11", _manifest("cgrp.yaml"), DATA)
    desc = _only_execution(cloud)
    run_id = desc["name"]
    assert desc["status"] == "SUCCEEDED", (cloud.run_record(run_id) or {}).get("error")

    entered = cloud.states_entered(desc["executionArn"])
    for state in (
        "Validate",
        "NotifyStarted",
        "CreateCluster",
        "CheckCluster",
        "SubmitStage",
        "PollStage",
        "ExportResults",
        "NotifySuccess",
        "DeleteCluster",
        "CheckDeletion",
        "RunSucceeded",
    ):
        assert state in entered, f"{state} never entered: {entered}"
    assert "RecordFailure" not in entered

    record = cloud.run_record(run_id)
    assert record is not None
    assert record["status"] == "SUCCEEDED"
    assert record["dataset"] == "CGRP-2026-11"
    assert record["cluster_deleted"] is True
    assert record["cluster_state"] == "DELETED"
    assert record["resolution_A"] == pytest.approx(2.8, abs=0.3)
    from cryopilot.adapters import runs

    planned = [s.id for s in runs.store().get_plan(run_id)]
    assert planned[0] == "import"
    assert planned[-1] == "nurefine"
    for stage_id in planned:
        stage = record["stages"][stage_id]
        assert stage["state"] == "completed", (stage_id, stage)
        assert stage["jobs"], stage_id
    assert {f["kind"] for f in record["results"]["files"]} >= {"map", "half_map_a", "half_map_b", "fsc"}
    # the cost of each stage's nodes is kept on the record as the stage runs (catalogue prices)
    from cryopilot.domain.catalogue import Catalogue

    motion, pick = record["stages"]["motion"], record["stages"]["pick"]
    p4d, gpu1 = Catalogue.load().price("p4d.24xlarge"), Catalogue.load().price("p5.4xlarge")
    hours = (motion["completed_at"] - motion["started_at"]) / 3600
    assert motion["cost_usd"] == pytest.approx(hours * p4d, rel=1e-3)  # one 8-GPU node
    assert pick["cost_usd"] == pytest.approx(
        (pick["completed_at"] - pick["started_at"]) / 3600 * gpu1, rel=1e-3
    )
    imp = record["stages"]["import"]  # a worker job: on the gpu8 node motion correction uses next
    assert imp["cost_usd"] == pytest.approx((imp["completed_at"] - imp["started_at"]) / 3600 * p4d, rel=1e-3)
    assert "cost_usd" not in record["stages"]["select2d"]  # interactive: on the cryoSPARC master
    assert record["cost_usd"] > 0  # the report's total, quoted in the final mail
    assert record["decisions"], "the 2D selection and class choices must be recorded"
    # the run's bill is the nodes that ran (describeClusterInstances), as EC2 bills them: within 1 %
    (cluster,) = cloud.compute_nodes
    bill = cloud.compute_nodes[cluster].bill()
    assert record["cost_basis"] == "node lifetimes"
    assert record["cost_usd"] == pytest.approx(sum(line["cost_usd"] for line in bill), rel=0.01)
    assert record["gpu_hours_paid"] == pytest.approx(sum(line["gpu_hours"] for line in bill), rel=0.01)
    assert record["compute_nodes"]
    assert record["nodes_cost_usd"] > 0  # the polls' bill so far

    s3 = cloud.client("s3")
    for f in record["results"]["files"]:
        head = s3.head_object(Bucket=cloud.results_bucket, Key=f["key"])
        assert head["ContentLength"] == f["size"]

    # the report's summary: when it finished, and one cost (the record's) and one set of GPU-hours
    from cryopilot.domain.billing import cost_text

    report = s3.get_object(Bucket=cloud.results_bucket, Key=f"runs/{run_id}/report/report.md")
    lines = report["Body"].read().decode().splitlines()
    summary = lines[lines.index("## Summary") + 1 : lines.index("## Stages")]
    (finished,) = [ln for ln in summary if ln.startswith("- **Finished:**")]
    assert finished.startswith("- **Finished:** 2026-"), finished
    # one cost for the nodes (the record's), and the storage's apart on its own line
    (cost, storage_line) = [ln for ln in summary if "$" in ln]
    assert storage_line.startswith("- **Storage:** FSx for Lustre "), storage_line
    assert cost.startswith(f"- **Cost:** {cost_text(record['cost_usd'], record['cost_basis'])}")
    (hours,) = [ln for ln in summary if "GPU-hours" in ln]
    paid, busy = record["gpu_hours_paid"], record["gpu_hours_busy"]
    assert hours == f"- **GPU-hours:** {paid:,.1f} paid for, {busy:,.1f} of them busy", hours

    mails = cloud.mails()
    subjects = [m["subject"] for m in mails]
    assert len(mails) == 2, subjects
    assert subjects[0].startswith("[cryopilot] CGRP-2026-11 started")
    assert subjects[1].startswith("[cryopilot] CGRP-2026-11 done: 2.")
    assert "Å in " in subjects[1]
    assert "Automatic decisions" in mails[1]["message"]
    assert f"GPU-hours: {record['gpu_hours_paid']:,.1f} paid for" in mails[1]["message"]
    assert all(m["attributes"]["run_id"] == run_id for m in mails)

    assert cloud.pcluster.clusters() == {}, "the cluster must be gone"
    assert cloud.head_nodes == {}

    # the manifest's extra address is subscribed to this dataset's mails only
    subs = cloud.client("sns").list_subscriptions_by_topic(TopicArn=cloud.topic_arn)["Subscriptions"]
    extra = [s for s in subs if s["Endpoint"] == "medchem-team@example.org"]
    assert len(extra) == 1
    attrs = cloud.client("sns").get_subscription_attributes(SubscriptionArn=extra[0]["SubscriptionArn"])
    assert json.loads(attrs["Attributes"]["FilterPolicy"]) == {"dataset": ["CGRP-2026-11"]}


def test_an_address_listed_by_two_datasets_gets_the_mails_of_both(cloud: LocalCloud) -> None:
    # Both manifests list one address; the second also lists the stack's NotificationEmail,
    # which already gets every mail. The clusters are refused at once (a configuration error), so
    # both runs end in seconds, without a cluster.
    shared, stack_address = "medchem-team@example.org", "structures@example.org"
    cloud.pcluster.inject("config_error", count=2, operation="create_cluster")
    cloud.drop_dataset("CGRP-2026-11", _manifest("cgrp.yaml"), DATA)
    spike = _manifest("spike.yaml") + f"notify: [{shared}, {stack_address}]\n"
    cloud.drop_dataset("SPIKE-FAB-07", spike, {"micrographs/a.mrc": b"m" * 64})
    cloud.drain_events()
    executions = cloud.executions()
    assert len(executions) == 2
    for execution in executions:
        desc = cloud.wait_for_execution(execution["executionArn"], timeout=240)
        record = cloud.run_record(desc["name"]) or {}
        assert (desc["status"], record["error"]["type"]) == ("FAILED", "ClusterConfigError"), record

    sns = cloud.client("sns")
    subs = sns.list_subscriptions_by_topic(TopicArn=cloud.topic_arn)["Subscriptions"]
    assert sorted(s["Endpoint"] for s in subs) == [shared, stack_address]  # one subscription each

    def policy(address: str) -> dict | None:
        (arn,) = [s["SubscriptionArn"] for s in subs if s["Endpoint"] == address]
        text = sns.get_subscription_attributes(SubscriptionArn=arn)["Attributes"].get("FilterPolicy")
        return json.loads(text) if text else None

    shared_policy = policy(shared)
    assert shared_policy is not None
    assert sorted(shared_policy["dataset"]) == ["CGRP-2026-11", "SPIKE-FAB-07"]
    assert policy(stack_address) is None, "the stack's own address must keep getting every mail"
    # every mail of both runs (started, failed) passes the shared address's filter
    mails = cloud.mails()
    assert len(mails) == 4
    assert {m["attributes"]["dataset"] for m in mails} <= set(shared_policy["dataset"])


def test_invalid_manifest_fails_without_a_cluster(cloud: LocalCloud) -> None:
    cloud.drop_dataset("BAD-VOLTAGE", _manifest("invalid-voltage.yaml"))
    desc = _only_execution(cloud)
    assert desc["status"] == "FAILED"
    entered = cloud.states_entered(desc["executionArn"])
    assert entered == [
        "Start",
        "Validate",
        "RecordFailure",
        "HasCluster?",
        "WriteFailureReport",
        "ComposeFailureMail",
        "NotifyFailure",
        "RunFailed",
    ]

    record = cloud.run_record(desc["name"])
    assert record is not None
    assert record["status"] == "FAILED"
    assert record["error"]["type"] == "ManifestError"
    assert "acquisition.voltage_kV" in record["error"]["message"]
    assert not record.get("cluster_name"), "no cluster may be planned for an invalid manifest"

    (mail,) = cloud.mails()
    assert "failed" in mail["subject"]
    assert "acquisition.voltage_kV" in mail["message"]
    assert "No cluster was created." in mail["message"]
    assert not list(cloud.pcluster.requests_for("create_cluster"))


def test_cluster_that_fails_to_create(cloud: LocalCloud) -> None:
    cloud.pcluster.inject("create_failed")
    cloud.drop_dataset("CGRP-2026-11", _manifest("cgrp.yaml"), DATA)
    desc = _only_execution(cloud)
    assert desc["status"] == "FAILED"
    entered = cloud.states_entered(desc["executionArn"])
    assert "FailureDeleteCluster" in entered
    assert "SubmitStage" not in entered

    record = cloud.run_record(desc["name"])
    assert record is not None
    assert record["error"]["type"] == "ClusterCreateFailedError"
    assert record["cluster_deleted"] is True

    mails = cloud.mails()
    assert mails[-1]["subject"].startswith("[cryopilot] CGRP-2026-11 failed")
    assert "ClusterCreateFailedError" in mails[-1]["message"]
    assert "has been deleted" in mails[-1]["message"]
    assert cloud.pcluster.clusters() == {}


def test_stack_delivers_the_head_node_files_and_a_missing_script_fails_the_create(cloud: LocalCloud) -> None:
    """The stack's custom resource uploaded the bootstrap files when the local stack was built;
    without the setup script, the head node cannot boot (OnNodeConfiguredDownloadFailure)."""
    answer = cloud.custom_resources["HeadNodeBootstrap"]
    assert answer["Status"] == "SUCCESS"
    bucket = str(cloud.ref("ArtifactsBucket"))
    s3 = cloud.client("s3")
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="headnode/")["Contents"]}
    assert keys == {
        "headnode/headnode-setup.sh",
        "headnode/cryosparc-cluster-script.sh",
        "headnode/cryopilot-agent.zip",
        "headnode/bundle.json",
    }

    s3.delete_object(Bucket=bucket, Key="headnode/headnode-setup.sh")
    cloud.drop_dataset("CGRP-2026-11", _manifest("cgrp.yaml"), DATA)
    desc = _only_execution(cloud)
    assert desc["status"] == "FAILED"
    record = cloud.run_record(desc["name"])
    assert record is not None
    assert record["error"]["type"] == "ClusterCreateFailedError"
    assert "OnNodeConfiguredDownloadFailure" in record["error"]["message"]
    assert record["cluster_deleted"] is True
    assert cloud.pcluster.clusters() == {}


def test_job_failing_mid_pipeline(cloud: LocalCloud) -> None:
    cloud.cryosparc_setup.append(lambda cs: cs.inject("fail", "class_2D_new"))
    cloud.drop_dataset("CGRP-2026-11", _manifest("cgrp.yaml"), DATA)
    desc = _only_execution(cloud)
    assert desc["status"] == "FAILED"

    record = cloud.run_record(desc["name"])
    assert record is not None
    assert record["error"]["type"] == "JobFailedError"
    assert record["error"]["step"] == "stage:class2d"
    assert record["stages"]["ctf"]["state"] == "completed"
    assert record["stages"]["class2d"]["state"] == "failed"
    assert record["cluster_deleted"] is True

    failure = cloud.mails()[-1]
    title = record["stages"]["class2d"]["title"]
    assert title in failure["subject"]
    assert "JobFailedError" in failure["message"]
    assert "has been deleted" in failure["message"]
    assert cloud.pcluster.clusters() == {}


@pytest.mark.parametrize("cloud", ["spike"], indirect=True)
def test_same_manifest_event_three_times_starts_one_execution(cloud: LocalCloud) -> None:
    cloud.drop_dataset("SPIKE-FAB-07", _manifest("spike.yaml"), {"micrographs/a.mrc": b"m" * 64})
    cloud.drain_events()
    (first,) = cloud.deliveries
    fn = first.function
    outcomes = [cloud.invoke(fn, first.event) for _ in range(2)]
    statuses = [first.result["outcomes"][0]["status"]] + [o[1]["outcomes"][0]["status"] for o in outcomes]
    assert statuses == ["started", "duplicate", "duplicate"]
    execs = cloud.executions()
    assert len(execs) == 1
    assert execs[0]["name"] == first.result["outcomes"][0]["run_id"]
    desc = cloud.wait_for_execution(execs[0]["executionArn"], timeout=240)
    assert desc["status"] == "SUCCEEDED"
    entered = cloud.states_entered(desc["executionArn"])
    assert entered.count("Validate") == 1
    assert entered.count("CreateCluster") == 1
    assert entered[-1] == "RunSucceeded"
    record = cloud.run_record(desc["name"])
    assert record is not None
    assert record["status"] == "SUCCEEDED"
    assert record["cluster_deleted"] is True
    subjects = [m["subject"] for m in cloud.mails()]
    assert len(subjects) == 2, subjects
    assert "done" in subjects[1]
    assert len(list(cloud.pcluster.requests_for("create_cluster"))) == 1
    assert cloud.pcluster.clusters() == {}


def test_throttled_parallelcluster_api_is_retried_and_the_run_succeeds(cloud: LocalCloud) -> None:
    cloud.pcluster.inject("throttle", count=3, operation="create_cluster")
    cloud.pcluster.inject("server_error", count=1, operation="describe_cluster")
    desc = _start_with_coarse_polls(cloud)
    run_id = desc["name"]
    assert desc["status"] == "SUCCEEDED", (cloud.run_record(run_id) or {}).get("error")
    creates = [r.status for r in cloud.pcluster.requests_for("create_cluster")]
    assert creates == [429, 429, 429, 202]
    history = cloud.history(desc["executionArn"])
    failed_tasks = [e for e in history if e["type"] == "TaskFailed"]
    assert [json.loads(e["taskFailedEventDetails"]["cause"])["errorType"] for e in failed_tasks] == [
        "ThrottledError"
    ] * 4
    assert cloud.pcluster.clusters() == {}


def test_killed_job_fails_the_run_and_names_the_stage(cloud: LocalCloud) -> None:
    cloud.cryosparc_setup.append(lambda cs: cs.inject("kill", "blob_picker_gpu"))
    cloud.drop_dataset("CGRP-2026-11", _manifest("cgrp.yaml"), DATA)
    desc = _only_execution(cloud)
    assert desc["status"] == "FAILED"
    record = cloud.run_record(desc["name"])
    assert record is not None
    assert record["error"]["type"] == "JobKilledError"
    assert record["error"]["step"] == "stage:pick"
    assert record["stages"]["pick"]["state"] == "killed"
    assert record["cluster_deleted"] is True
    failure = cloud.mails()[-1]
    assert record["stages"]["pick"]["title"] in failure["subject"]
    pick = record["stages"]["pick"]["title"]
    assert failure["subject"] == f"[cryopilot] CGRP-2026-11 failed at {pick}: JobKilledError"
    assert "Reason: JobKilledError: " in failure["message"]
    assert "was killed" in failure["message"]
    assert len(cloud.mails()) == 2  # started, then failed
    assert "has been deleted" in failure["message"]
    assert cloud.pcluster.clusters() == {}


def test_stuck_job_is_killed_once_its_stage_time_limit_passes(cloud: LocalCloud) -> None:
    from cryopilot.adapters import runs

    cloud.cryosparc_setup.append(lambda cs: cs.inject("stuck", "patch_ctf_estimation_multi"))
    cloud.drop_dataset("CGRP-2026-11", _manifest("cgrp.yaml"), DATA)
    desc = _only_execution(cloud)
    assert desc["status"] == "FAILED"
    run_id = desc["name"]
    record = cloud.run_record(run_id)
    assert record is not None
    assert record["error"]["type"] == "JobStuckError"
    assert record["error"]["step"] == "stage:ctf"
    ctf = record["stages"]["ctf"]
    assert ctf["state"] == "killed"
    assert ctf["killed_for_time"] is True
    limit = next(s for s in runs.store().get_plan(run_id) if s.id == "ctf").time_limit_seconds
    assert f"limit of {limit / 3600:.1f} h" in record["error"]["message"]
    # killed once its limit passed, and no later than one longest poll interval after it
    ran_for = record["finished_epoch"] - ctf["submitted_at"]
    assert limit <= ran_for <= limit + 1800 + 60
    assert record["cluster_deleted"] is True
    failure = cloud.mails()[-1]
    assert "JobStuckError" in failure["message"]
    assert failure["subject"] == f"[cryopilot] CGRP-2026-11 failed at {ctf['title']}: JobStuckError"
    assert "Reason: JobStuckError: " in failure["message"]
    assert f"ran past its limit of {limit / 3600:.1f} h" in failure["message"]
    assert "has been deleted; nothing is left running" in failure["message"]
    assert len(cloud.mails()) == 2  # started, then failed
    assert cloud.pcluster.clusters() == {}


PRIMARY_SUBNET = "subnet-0aaaaaaaaaaaaaaa1"
SECOND_SUBNET = "subnet-0bbbbbbbbbbbbbbb2"


def test_capacity_failure_falls_back_to_the_next_placement(cloud: LocalCloud) -> None:
    # a creation that fails for capacity (the stand-in names the head node's type): the cluster is
    # deleted and created in the next compute subnet
    cloud.pcluster.inject("create_failed_capacity", subnet_id=PRIMARY_SUBNET)
    desc = _start_with_coarse_polls(cloud)
    run_id = desc["name"]
    assert desc["status"] == "SUCCEEDED", (cloud.run_record(run_id) or {}).get("error")
    entered = cloud.states_entered(desc["executionArn"])
    assert entered.count("CapacityFallback") == 1
    assert entered.count("CreateCluster") == 2
    record = cloud.run_record(run_id)
    assert record is not None
    assert record["placement"] == f"p4d.24xlarge in {SECOND_SUBNET}"
    assert [t["label"] for t in record["placements_tried"]] == [f"p4d.24xlarge in {PRIMARY_SUBNET}"]
    assert "InsufficientInstanceCapacity" in record["placements_tried"][0]["reason"]
    created = [r for r in cloud.pcluster.requests_for("create_cluster") if r.status == 202]
    assert len(created) == 2
    assert created[0].body["clusterName"] != created[1].body["clusterName"]
    done = cloud.mails()[-1]["message"]
    assert f"No capacity for: p4d.24xlarge in {PRIMARY_SUBNET}" in done
    assert f"The cluster ran in: p4d.24xlarge in {SECOND_SUBNET}" in done
    assert cloud.pcluster.clusters() == {}, "the abandoned cluster and the one that ran are both gone"


def test_gpus_beyond_a_fallback_type_are_refused_at_validate() -> None:
    # gpu8's jobs may run on any of its capacity-fallback types: one of 4 GPUs (g5.12xlarge) bounds
    # compute_num_gpus on gpu8 to 4, at Validate, before a cluster is made
    fallbacks = {"FallbackGpu8InstanceTypes": "p5.48xlarge,g5.12xlarge"}
    with LocalCloud(clock=VirtualClock(), profile="spike", parameters=fallbacks) as cloud:
        doc = yaml.safe_load(_manifest("spike.yaml"))
        doc["pipeline"] = {"overrides": {"ctf": {"compute_num_gpus": 8}}}
        cloud.drop_dataset("SPIKE-FAB-07", yaml.safe_dump(doc))
        desc = _only_execution(cloud)
        record = cloud.run_record(desc["name"])
        assert record is not None
        error = record.get("error") or {}
        assert error.get("type") == "ManifestError", (record["status"], error)
        assert error["message"].endswith(
            "pipeline.overrides.ctf.compute_num_gpus: 8 GPUs, but stage ctf runs on lane gpu8"
            " (g5.12xlarge, 4 GPUs per node)"
        )
        assert "CreateCluster" not in cloud.states_entered(desc["executionArn"])
        assert not list(cloud.pcluster.requests_for("create_cluster"))


def test_no_capacity_anywhere_fails_cleanly(cloud: LocalCloud) -> None:
    # every creation fails for the head node's capacity
    cloud.pcluster.inject("create_failed_capacity", count=5)
    cloud.drop_dataset("CGRP-2026-11", _manifest("cgrp.yaml"), DATA)
    desc = _only_execution(cloud)
    assert desc["status"] == "FAILED"
    record = cloud.run_record(desc["name"])
    assert record is not None
    assert record["error"]["type"] == "CapacityError"
    assert "no capacity in any placement tried" in record["error"]["message"]
    assert "sufficient m6i.2xlarge capacity" in record["error"]["message"]  # the head node's type
    assert len(record["placements_tried"]) == 2  # both compute subnets (other GPU types are no placements)
    failure = cloud.mails()[-1]
    assert "CapacityError" in failure["message"]
    assert failure["subject"] == "[cryopilot] CGRP-2026-11 failed at create_cluster: CapacityError"
    assert "Reason: CapacityError: " in failure["message"]
    assert "no capacity in any placement tried" in failure["message"]
    assert len(cloud.mails()) == 2  # started, then failed
    assert "No capacity for:" in failure["message"]
    assert cloud.pcluster.clusters() == {}
    assert "SubmitStage" not in cloud.states_entered(desc["executionArn"])


# --- GPU capacity at node launch (ParallelCluster's fast insufficient-capacity fail-over) ---------


def _gpu8_stage(record: dict) -> tuple[str, dict, float]:
    """The first stage that ran (or waited) on gpu8, its record and its time limit (seconds)."""
    from cryopilot.adapters import runs

    stage = next(s for s in runs.store().get_plan(record["run_id"]) if s.lane == "gpu8")
    return stage.id, record["stages"][stage.id], float(stage.time_limit_seconds or 0)


def test_no_p4d_at_node_launch_fails_over_to_p4de_inside_the_cluster(cloud: LocalCloud) -> None:
    demo._inject(cloud, "capacity")  # no p4d.24xlarge capacity
    cloud.drop_dataset("CGRP-2026-11", _manifest("cgrp.yaml"), DATA)
    desc = _only_execution(cloud)
    run_id = desc["name"]
    assert desc["status"] == "SUCCEEDED", (cloud.run_record(run_id) or {}).get("error")
    entered = cloud.states_entered(desc["executionArn"])
    assert "CapacityFallback" not in entered  # the cluster was created once; the queue failed over
    assert entered.count("CreateCluster") == 1
    record = cloud.run_record(run_id)
    assert record is not None
    (cluster,) = cloud.compute_nodes
    nodes = cloud.compute_nodes[cluster]
    gpu8 = {line["instance_type"] for line in nodes.bill() if line["queue"] == "gpu8"}
    assert gpu8 == {"p4de.24xlarge"}, "every gpu8 job ran on the next compute resource"
    ice = ("p4d.24xlarge", "InsufficientInstanceCapacity")
    assert {(f.instance_type, f.code) for f in nodes.failures} == {ice}
    notes = [e["note"] for e in record["capacity_events"]]
    assert any(" ".join(ice) in n and "p4de.24xlarge" in n for n in notes), notes
    # the nodes that ran, as describeClusterInstances listed them, and the bill at p4de's price
    seen = record["compute_nodes"]
    assert {n["instance_type"] for n in seen.values() if n["queue"] == "gpu8"} == {"p4de.24xlarge"}
    assert all(n["ended_by"] is not None and n["ended_by"] > n["launched_at"] for n in seen.values())
    from cryopilot.domain.catalogue import Catalogue

    _, stage, _ = _gpu8_stage(record)
    hours = (stage["completed_at"] - stage["started_at"]) / 3600
    assert stage["cost_usd"] == pytest.approx(hours * Catalogue.load().price("p4de.24xlarge"), rel=1e-3)
    assert cloud.pcluster.clusters() == {}
    _assert_rehearsal_passes(cloud, "capacity", desc)


def test_no_capacity_in_any_gpu8_resource_fails_fast_with_capacity_error() -> None:
    parameters = {"CapacityWaitMinutes": 10, "CapacityMailMinutes": 5}
    with LocalCloud(clock=VirtualClock(), parameters=parameters) as cloud:
        demo._inject(cloud, "capacity-exhausted")  # no capacity for any type gpu8 lists
        assert cloud.settings_queue_types("gpu8") == ["p4d.24xlarge", "p4de.24xlarge", "p5.48xlarge"]
        cloud.drop_dataset("CGRP-2026-11", _manifest("cgrp.yaml"), DATA)
        desc = _only_execution(cloud)
        assert desc["status"] == "FAILED"
        record = cloud.run_record(desc["name"])
        assert record is not None
        error = record["error"]
        assert error["type"] == "CapacityError", error
        assert error["message"].startswith("gpu8: no capacity in any compute resource for ")
        assert "p4d.24xlarge InsufficientInstanceCapacity" in error["message"]
        stage_id, stage, limit = _gpu8_stage(record)
        assert error["step"] == f"stage:{stage_id}"
        # CapacityWaitMinutes after every resource was seen down, well before the stage's limit
        # (the end includes the cluster's deletion)
        waited = float(record["finished_epoch"]) - float(stage["submitted_at"])
        assert 10 * 60 <= waited < limit / 2, (waited, limit)
        assert stage["capacity_waiting"] is True
        assert "every compute resource is down" in stage["capacity_note"]
        shown = ops.render_status(ops.get_run(cloud.operator_stack(), desc["name"]), None)  # status, watch
        assert "    waiting for capacity on gpu8 since " in shown
        assert (
            "p4d.24xlarge InsufficientInstanceCapacity, p4de.24xlarge InsufficientInstanceCapacity" in shown
        )
        failure = cloud.mails()[-1]
        assert failure["subject"].endswith(": CapacityError"), failure["subject"]
        assert "no capacity in any compute resource" in failure["message"]
        # one mail once the stage had waited CapacityMailMinutes, before the failure
        waiting = [m for m in cloud.mails() if "waiting for GPU capacity" in m["subject"]]
        assert len(waiting) == 1, [m["subject"] for m in cloud.mails()]
        (mail,) = waiting
        assert mail["subject"] == f"[cryopilot] CGRP-2026-11 waiting for GPU capacity: {stage['title']}"
        assert "waiting for capacity on gpu8 since " in mail["message"]
        assert "CapacityWaitMinutes (10 min)" in mail["message"]
        assert mail["attributes"]["run_id"] == desc["name"]
        assert [m["subject"] for m in cloud.mails()].index(mail["subject"]) < len(cloud.mails()) - 1
        assert any(m["kind"] == "capacity_waiting" for m in record["mails"])
        assert "RecordFailure" in cloud.states_entered(desc["executionArn"])
        assert cloud.pcluster.clusters() == {}
        _assert_rehearsal_passes(cloud, "capacity-exhausted", desc)


def test_a_p_instance_quota_of_zero_fails_within_two_polls(cloud: LocalCloud) -> None:
    cloud.inject_capacity("p4d.24xlarge", "VcpuLimitExceeded")
    cloud.drop_dataset("CGRP-2026-11", _manifest("cgrp.yaml"), DATA)
    desc = _only_execution(cloud)
    assert desc["status"] == "FAILED"
    record = cloud.run_record(desc["name"])
    assert record is not None
    error = record["error"]
    assert error["type"] == "CapacityError", error
    message = error["message"]
    assert "p4d.24xlarge cannot launch: VcpuLimitExceeded" in message
    assert "'Running On-Demand P instances' (L-417A185B) in us-east-1" in message
    assert "needs at least 96 vCPUs" in message
    assert "\n" not in message
    _, stage, _ = _gpu8_stage(record)
    assert stage["polls"] <= 2, stage
    (cluster,) = cloud.compute_nodes
    assert [f.code for f in cloud.compute_nodes[cluster].failures] == ["VcpuLimitExceeded"]  # no fail-over
    assert "L-417A185B" in cloud.mails()[-1]["message"]
    assert cloud.pcluster.clusters() == {}
    # the demo's `quota` makes every P type's quota 0; here only p4d's is, to show no fail-over
    _assert_rehearsal_passes(cloud, "quota", desc)


# --- Spot where it is safe ------------------------------------------------------------------------


def test_a_stage_lost_to_a_spot_interruption_completes_on_demand(cloud: LocalCloud) -> None:
    from cryopilot.adapters import runs
    from cryopilot.domain.spot_policy import safe_stages

    # the account's Spot quotas raised (0 in a new account), and the first Spot node given a job
    # interrupted 10 minutes after its launch
    demo._inject(cloud, "spot-interrupt")
    assert cloud.ec2_quotas["L-7212CCBC"][1] > 0
    cloud.drop_dataset("CGRP-2026-11", demo.with_spot_where_safe(_manifest("cgrp.yaml")), DATA)
    desc = _only_execution(cloud)
    run_id = desc["name"]
    record = cloud.run_record(run_id)
    assert desc["status"] == "SUCCEEDED", (record or {}).get("error")
    assert record is not None
    plan = runs.store().get_plan(run_id)
    spot = [s for s in plan if s.lane and s.lane.endswith("-spot")]
    assert [s.id for s in spot] == safe_stages(plan) != []
    assert plan[-1].lane is None or not plan[-1].lane.endswith("-spot")  # never the final refinement
    assert record["capacity"] == "spot-where-safe"
    assert record["spot_queues"]
    (cluster,) = cloud.compute_nodes
    queues = {q.name: q.capacity_type for q in cloud.compute_nodes[cluster].queues.values()}
    assert {queues[f"{q}-spot"] for q in record["spot_queues"]} == {"SPOT"}
    # the interrupted stage: its job lost with its Spot node, then run again On-Demand
    (hit,) = [sid for sid, st in record["stages"].items() if st.get("spot_interruptions")]
    stage = record["stages"][hit]
    assert stage["state"] == "completed"
    lost = stage["spot_interruptions"][0]
    assert lost["lane"].endswith("-spot")
    assert "Spot instance interrupted" in lost["error"]
    assert stage["resubmitted_on"] == lost["lane"].removesuffix("-spot")
    bill = cloud.compute_nodes[cluster].bill()
    interrupted = [b for b in bill if b["interrupted_at"] is not None]
    assert len(interrupted) == 1
    assert interrupted[0]["spot"] is True
    # both attempts are paid: the Spot node up to its interruption, the On-Demand node after
    assert record["cost_basis"] == "node lifetimes"
    assert record["cost_usd"] == pytest.approx(sum(b["cost_usd"] for b in bill), rel=0.01)
    notes = [e["note"] for e in record["capacity_events"] if e["stage"] == hit]
    assert any("lost on Spot" in n and "resubmitted on" in n for n in notes), notes
    # the mail and the report say which stages ran on Spot and what it saved
    least, most = record["spot_saved_usd"]
    assert 0 <= least < most  # Spot may cost up to the On-Demand price: it saves from nothing
    assert f"{hit} (interrupted; completed on {stage['resubmitted_on']})" in record["spot_summary"]
    done = cloud.mails()[-1]
    assert done["subject"].startswith("[cryopilot] CGRP-2026-11 done:")
    assert f"Spot: {record['spot_summary']}" in done["message"]
    s3 = cloud.client("s3")
    report = s3.get_object(Bucket=cloud.results_bucket, Key=f"runs/{run_id}/report/report.md")
    text = report["Body"].read().decode()
    (spot_line,) = [ln for ln in text.splitlines() if ln.startswith("- **Spot:** on Spot: ")]
    assert f"{hit} (interrupted; completed on {stage['resubmitted_on']})" in spot_line
    assert f"unlisted:{hit}" in text  # the Spot node no listing saw, in the node table
    assert cloud.pcluster.clusters() == {}
    _assert_rehearsal_passes(cloud, "spot-interrupt", desc)


def test_spot_where_safe_without_a_spot_quota_fails_at_validate(cloud: LocalCloud) -> None:
    # the local account, like a new one, has 0 vCPUs for Spot P instances
    assert cloud.ec2_quotas["L-7212CCBC"][1] == 0.0
    cloud.drop_dataset("CGRP-2026-11", demo.with_spot_where_safe(_manifest("cgrp.yaml")), DATA)
    desc = _only_execution(cloud)
    assert desc["status"] == "FAILED"
    record = cloud.run_record(desc["name"])
    assert record is not None
    assert record["error"]["type"] == "PreflightError"
    assert "quota L-7212CCBC: 'All P Spot Instance Requests' is 0 vCPUs" in record["error"]["message"]
    assert not list(cloud.pcluster.requests_for("create_cluster"))


def test_a_create_that_timed_out_at_the_gateway_but_was_done_is_adopted(cloud: LocalCloud) -> None:
    # API Gateway answers 504 past its 29 s integration timeout while the API's Lambda goes on and
    # creates the stack (aws-parallelcluster issue 4491): the retried create finds the run's own
    # cluster (400 already exists) and adopts it; one cluster, never two
    cloud.pcluster.inject("gateway_timeout", operation="create_cluster")
    desc = _start_with_coarse_polls(cloud)
    run_id = desc["name"]
    assert desc["status"] == "SUCCEEDED", (cloud.run_record(run_id) or {}).get("error")
    assert [r.status for r in cloud.pcluster.requests_for("create_cluster")] == [504, 400]
    assert len(cloud.pcluster.history) == 1  # one cluster was created
    failed = [
        json.loads(e["taskFailedEventDetails"]["cause"])["errorType"]
        for e in cloud.history(desc["executionArn"])
        if e["type"] == "TaskFailed"
    ]
    assert failed == ["ThrottledError"]
    assert cloud.pcluster.clusters() == {}
