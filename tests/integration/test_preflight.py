"""Preflight, end to end: a run the account cannot carry (a quota, the network, the licence secret,
the ParallelCluster API, its data) ends at Validate in seconds with the failed check's message on
its record and in one failure mail, and no cluster is made; ``cryopilot preflight`` runs the same
checks through the stack's Validate function, prints a table and exits 1 on a failure.

One local stack serves every case; each case arms its fault, starts one run (a manual start of the
spike manifest on a small data folder) and disarms the fault, so each failure names only its check.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from cryopilot_ops import cli, ops
from cryopilot_sim.clock import VirtualClock
from cryopilot_sim.harness import LICENCE_SECRET_ARN, LocalCloud

from tests.conftest import EVENTS

# one worker runs the module: its local stack (module fixture) is built once
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("preflight")]

NO_CLUSTER = "No cluster was created."
SPIKE = yaml.safe_load((EVENTS / "manifests" / "spike.yaml").read_text())
CGRP = yaml.safe_load((EVENTS / "manifests" / "cgrp.yaml").read_text())
FIRST_SUBNET = "subnet-0aaaaaaaaaaaaaaa1"
SECOND_SUBNET = "subnet-0bbbbbbbbbbbbbbb2"


@pytest.fixture(scope="module")
def cloud() -> Iterator[LocalCloud]:
    with LocalCloud(clock=VirtualClock(), profile="spike") as c:
        yield c


def _upload(cloud: LocalCloud, folder: str, files: dict[str, bytes]) -> str:
    s3 = cloud.client("s3")
    for rel, body in files.items():
        s3.put_object(Bucket=cloud.input_bucket, Key=f"datasets/{folder}/{rel}", Body=body)
    return f"s3://{cloud.input_bucket}/datasets/{folder}/"


MICROGRAPHS = {f"micrographs/m{i}.mrc": b"\x00" * 16 for i in range(3)}


def _run(
    cloud: LocalCloud,
    name: str,
    manifest: dict[str, Any] | None = None,
    files: dict[str, bytes] | None = None,
) -> dict[str, Any]:
    """A manual start of ``manifest`` (the spike's) on a data folder of its own; the ended execution."""
    data_uri = _upload(cloud, name, MICROGRAPHS if files is None else files)
    doc = {"manifest_inline": manifest or SPIKE, "data_s3_uri": data_uri}
    arn = cloud.client("stepfunctions").start_execution(
        stateMachineArn=cloud.state_machine_arn, name=name, input=json.dumps(doc)
    )["executionArn"]
    return cloud.wait_for_execution(arn, timeout=60)


def _assert_failed_at_validate(cloud: LocalCloud, desc: dict[str, Any], *fragments: str) -> str:
    run_id = desc["name"]
    assert desc["status"] == "FAILED"
    record = cloud.run_record(run_id)
    assert record is not None
    error = record["error"]
    assert (error["type"], error["step"]) == ("PreflightError", "validate"), error
    for fragment in fragments:
        assert fragment in error["message"], (fragment, error["message"])
    assert "\n" not in error["message"]
    assert [c["name"] for c in record["preflight"] if c["status"] == "fail"], "the checks are on the record"
    (mail,) = [m for m in cloud.mails() if m["attributes"].get("run_id") == run_id]
    assert mail["subject"].endswith("failed at validate: PreflightError")
    for fragment in fragments:
        assert fragment in mail["message"], (fragment, mail["message"])
    assert NO_CLUSTER in mail["message"]
    entered = cloud.states_entered(desc["executionArn"])
    assert "CreateCluster" not in entered
    created = [
        r
        for r in cloud.pcluster.requests_for("create_cluster")
        if isinstance(r.body, dict) and r.body.get("clusterName") == record["cluster_name"]
    ]
    assert not created, "no cluster may be requested"
    return str(error["message"])


def _armed(arm: Callable[[], None], disarm: Callable[[], None]) -> Iterator[None]:
    arm()
    try:
        yield
    finally:
        disarm()


def _checks(answer: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {c["name"]: c for c in answer["checks"]}


# --- the operator's command --------------------------------------------------------------------


def test_preflight_of_a_ready_stack_passes_every_check(
    cloud: LocalCloud, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "_stack", lambda args: cloud.operator_stack())
    manifest = EVENTS / "manifests" / "spike.yaml"
    _upload(cloud, "SPIKE-FAB-07", MICROGRAPHS)
    assert cli.main(["preflight", str(manifest)]) == 0
    out = capsys.readouterr().out
    for name in (
        "quota L-417A185B",  # p4d.24xlarge and p5.4xlarge
        "quota L-DB2E81BA",  # g6e.12xlarge
        "quota L-1216C47A",  # the head node's m6i.2xlarge
        "instance offerings",
        "network subnet-0aaaaaaaaaaaaaaa1",
        f"network {SECOND_SUBNET}",
        "licence secret",
        "ParallelCluster API",
        "input data",
        "results bucket",
        "mail subscriptions",
    ):
        line = next((li for li in out.splitlines() if li.startswith(name + " ")), None)
        assert line is not None, (name, out)
        assert "  OK  " in line, line
    assert "'Running On-Demand P instances' is 1152 vCPUs, 512 needed" in out


def test_endpoints_without_a_nat_route_warn_that_the_licence_needs_egress(cloud: LocalCloud) -> None:
    for _ in _armed(
        lambda: cloud.remove_egress(SECOND_SUBNET, endpoints=True),
        lambda: cloud.restore_egress(SECOND_SUBNET),
    ):
        answer = ops.preflight(cloud.operator_stack())
    check = _checks(answer)[f"network {SECOND_SUBNET}"]
    assert check["status"] == "warn"
    assert "every VPC endpoint ParallelCluster needs is there" in check["detail"]
    assert "cryoSPARC's licence check and download need egress" in check["fix"]
    assert answer["ok"] is True, "a warning does not stop a run"


def test_a_topic_without_a_confirmed_subscription_warns(cloud: LocalCloud) -> None:
    sns = cloud.client("sns")
    (sub,) = sns.list_subscriptions_by_topic(TopicArn=cloud.topic_arn)["Subscriptions"]
    sns.unsubscribe(SubscriptionArn=sub["SubscriptionArn"])
    try:
        answer = ops.preflight(cloud.operator_stack())
    finally:
        sns.subscribe(TopicArn=cloud.topic_arn, Protocol="email", Endpoint=sub["Endpoint"])
    check = _checks(answer)["mail subscriptions"]
    assert check["status"] == "warn"
    assert "no confirmed subscription" in check["detail"]
    assert answer["ok"] is True


def test_the_command_exits_1_and_names_the_failed_check(
    cloud: LocalCloud, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "_stack", lambda args: cloud.operator_stack())
    name, _ = cloud.ec2_quotas["L-DB2E81BA"]
    for _ in _armed(
        lambda: cloud.ec2_quotas.update({"L-DB2E81BA": (name, 96.0)}),
        lambda: cloud.ec2_quotas.update({"L-DB2E81BA": (name, 768.0)}),
    ):
        code = cli.main(["preflight"])
    out, err = capsys.readouterr()
    assert code == 1
    assert "preflight FAILED: quota L-DB2E81BA" in err
    (line,) = [li for li in out.splitlines() if li.startswith("quota L-DB2E81BA ")]
    assert "FAIL" in line
    assert "'Running On-Demand G and VT instances' is 96 vCPUs" in line
    assert "4 x g6e.12xlarge at once: 192" in line
    assert "--quota-code L-DB2E81BA --desired-value 192" in out


# --- a run the account cannot carry ends at Validate --------------------------------------------


def test_a_p_quota_of_zero_fails_the_run_at_validate(cloud: LocalCloud) -> None:
    name, value = cloud.ec2_quotas["L-417A185B"]
    for _ in _armed(
        lambda: cloud.ec2_quotas.update({"L-417A185B": (name, 0.0)}),
        lambda: cloud.ec2_quotas.update({"L-417A185B": (name, value)}),
    ):
        desc = _run(cloud, "PF-quota-zero")
    message = _assert_failed_at_validate(
        cloud,
        desc,
        "quota L-417A185B: 'Running On-Demand P instances' is 0 vCPUs",
        "4 x p4d.24xlarge, 8 x p5.4xlarge at once: 512",
        "--quota-code L-417A185B --desired-value 512",
    )
    assert message.count("quota ") == 1, "only the failed check is named"


def test_a_subnet_without_a_route_out_fails_the_run_at_validate(cloud: LocalCloud) -> None:
    for _ in _armed(lambda: cloud.remove_egress(FIRST_SUBNET), lambda: cloud.restore_egress(FIRST_SUBNET)):
        desc = _run(cloud, "PF-no-egress")
    message = _assert_failed_at_validate(
        cloud,
        desc,
        f"network {FIRST_SUBNET}: no default route through a NAT gateway, and no VPC endpoint for",
    )
    # whatever interface endpoints the VPC has (they serve every subnet), the gateway endpoints
    # for S3 and DynamoDB are missing from this subnet's route table
    missing = (
        message.split(f"network {FIRST_SUBNET}: ", 1)[1].split("no VPC endpoint for ", 1)[1].split(";")[0]
    )
    assert {"dynamodb", "s3"} <= set(missing.split(", ")), missing


def test_a_licence_secret_scheduled_for_deletion_fails_the_run_at_validate(cloud: LocalCloud) -> None:
    sm = cloud.client("secretsmanager")
    for _ in _armed(
        lambda: sm.delete_secret(SecretId=LICENCE_SECRET_ARN, RecoveryWindowInDays=7),
        lambda: sm.restore_secret(SecretId=LICENCE_SECRET_ARN),
    ):
        desc = _run(cloud, "PF-secret-deleted")
    _assert_failed_at_validate(
        cloud, desc, f"licence secret: {LICENCE_SECRET_ARN} is scheduled for deletion", "restore-secret"
    )


def test_a_parallelcluster_api_of_another_version_fails_the_run_at_validate(cloud: LocalCloud) -> None:
    pinned = cloud.pcluster.version
    for _ in _armed(
        lambda: setattr(cloud.pcluster, "version", "3.9.0"),
        lambda: setattr(cloud.pcluster, "version", pinned),
    ):
        desc = _run(cloud, "PF-pcluster-version")
    _assert_failed_at_validate(
        cloud, desc, "ParallelCluster API: its version is 3.9.0, cryopilot targets 3.16.1"
    )


def test_fewer_files_than_expected_fail_the_run_at_validate(cloud: LocalCloud) -> None:
    manifest = {**SPIKE, "input": {**SPIKE["input"], "expected_files": 10}}
    desc = _run(cloud, "PF-few-files", manifest)
    _assert_failed_at_validate(
        cloud,
        desc,
        f"input data: s3://{cloud.input_bucket}/datasets/PF-few-files/ holds 3 files matching"
        " 'micrographs/*.mrc', input.expected_files is 10",
    )


def test_a_missing_gain_reference_fails_the_run_at_validate(cloud: LocalCloud) -> None:
    manifest = {**CGRP, "input": {**CGRP["input"], "expected_files": 2}}
    desc = _run(cloud, "PF-no-gain", manifest, {"movies/a.tif": b"1", "movies/b.tif": b"2"})
    _assert_failed_at_validate(
        cloud,
        desc,
        f"gain reference: s3://{cloud.input_bucket}/datasets/PF-no-gain/gain/gain_ref.mrc does not exist"
        " (acquisition.gain_reference)",
    )


def test_a_type_not_offered_in_any_subnet_fails_preflight(
    cloud: LocalCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    # p4de.24xlarge is offered in us-east-1b and c only (moto's offerings, as AWS's): with the
    # compute queues in subnet a (us-east-1a) alone, no zone of theirs offers it. The functions'
    # environment as the stack's parameters Gpu8InstanceType and ComputeSubnetIds would set it.
    from cryopilot.adapters.settings import get_settings

    monkeypatch.setenv("CRYOPILOT_GPU8_INSTANCE_TYPE", "p4de.24xlarge")
    monkeypatch.setenv("CRYOPILOT_COMPUTE_SUBNET_IDS", FIRST_SUBNET)
    get_settings.cache_clear()
    try:
        answer = ops.preflight(cloud.operator_stack())
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    check = _checks(answer)["instance offerings"]
    assert check["status"] == "fail"
    assert check["detail"] == f"p4de.24xlarge is not offered in {FIRST_SUBNET} (us-east-1a)"
    assert "describe-instance-type-offerings" in check["fix"]
    assert answer["ok"] is False


# --- cryopilot smoke ------------------------------------------------------------------------------


def _smoke(
    cloud: LocalCloud, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    monkeypatch.setattr(cli, "_stack", lambda args: cloud.operator_stack())
    code = cli.main(["smoke"])
    out, err = capsys.readouterr()
    return code, out, err


def _row(out: str, name: str) -> str:
    (line,) = [li for li in out.splitlines() if li.startswith(name + " ")]
    return line


def test_smoke_passes_on_a_ready_stack_and_creates_nothing(
    cloud: LocalCloud, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _smoke(cloud, monkeypatch, capsys)
    assert code == 0, out + err
    dryrun = _row(out, "cluster dryrun")
    assert "  OK  " in dryrun
    assert "ParallelCluster would create cryopilot-" in dryrun
    (sent,) = [r for r in cloud.pcluster.requests_for("create_cluster") if r.query.get("dryrun") == ["true"]]
    assert sent.status == 412, "the API validated the configuration and would have created it"
    assert cloud.pcluster.clusters() == {}, "a dry run creates nothing"
    assert "  OK  " in _row(out, "head-node bundle")
    assert "3 files match bundle.json" in _row(out, "head-node bundle")  # setup script, lane template, agent
    for function in cloud.functions:
        assert "  OK  " in _row(out, f"invoke {function}")
    start_run = _row(out, "StartRun runs")
    assert (
        "a harmless event was ignored: aws.s3 event 'Object Deleted' announces no new manifest" in start_run
    )
    assert cloud.executions() == [] or all(not e["name"].endswith("-smoke") for e in cloud.executions()), (
        "the smoke test starts no run"
    )


def test_smoke_fails_on_a_bundle_that_does_not_match_its_checksums(
    cloud: LocalCloud, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bucket, _, prefix = cloud.operator_stack().bootstrap_uri.removeprefix("s3://").partition("/")
    s3 = cloud.client("s3")
    key = prefix + "cryopilot-agent.zip"
    good = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    s3.put_object(Bucket=bucket, Key=key, Body=b"not the agent")
    try:
        code, out, err = _smoke(cloud, monkeypatch, capsys)
    finally:
        s3.put_object(Bucket=bucket, Key=key, Body=good)
    assert code == 1
    row = _row(out, "head-node bundle")
    assert "FAIL" in row
    assert "cryopilot-agent.zip's SHA-256 is " in row
    assert "smoke FAILED: head-node bundle" in err


def test_smoke_fails_on_a_configuration_the_dryrun_refuses(
    cloud: LocalCloud, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cloud.pcluster.inject("config_error", operation="create_cluster")
    code, out, err = _smoke(cloud, monkeypatch, capsys)
    assert code == 1
    row = _row(out, "cluster dryrun")
    assert "FAIL" in row
    assert "ParallelCluster refuses the configuration (REJECTED)" in row
    assert "is not supported in the Availability Zone" in row
    assert "smoke FAILED: cluster dryrun" in err


def test_a_throttled_api_is_retried_not_failed(cloud: LocalCloud) -> None:
    # a 429 of ParallelCluster's API says "later", not "no": Validate is retried (ThrottledError),
    # and the retry's checks decide (here: the P quota of 0 fails it)
    name, value = cloud.ec2_quotas["L-417A185B"]
    cloud.pcluster.inject("throttle", count=1, operation="list_official_images")
    for _ in _armed(
        lambda: cloud.ec2_quotas.update({"L-417A185B": (name, 0.0)}),
        lambda: cloud.ec2_quotas.update({"L-417A185B": (name, value)}),
    ):
        desc = _run(cloud, "PF-throttled")
    _assert_failed_at_validate(cloud, desc, "quota L-417A185B")
    failed = [
        json.loads(e["taskFailedEventDetails"]["cause"])["errorType"]
        for e in cloud.history(desc["executionArn"])
        if e["type"] == "TaskFailed"
    ]
    assert failed == ["ThrottledError", "PreflightError"]


def test_a_capacity_fallback_beyond_a_quota_warns(cloud: LocalCloud, monkeypatch: pytest.MonkeyPatch) -> None:
    # the stack's FallbackGpu8InstanceTypes as its functions' environment carries it: with the P
    # quota at 600 vCPUs, the configured placement fits (512) and the fallback to p5.48xlarge
    # (4 x 192 + 8 x 16 = 896) does not
    from cryopilot.adapters.settings import get_settings

    name, value = cloud.ec2_quotas["L-417A185B"]
    monkeypatch.setenv("CRYOPILOT_FALLBACK_GPU8_INSTANCE_TYPES", "p5.48xlarge")
    get_settings.cache_clear()
    try:
        for _ in _armed(
            lambda: cloud.ec2_quotas.update({"L-417A185B": (name, 600.0)}),
            lambda: cloud.ec2_quotas.update({"L-417A185B": (name, value)}),
        ):
            answer = ops.preflight(cloud.operator_stack())
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    checks = _checks(answer)
    assert checks["quota L-417A185B"]["status"] == "ok"
    warn = checks["quota L-417A185B (fallback p5.48xlarge)"]
    assert warn["status"] == "warn"
    assert "4 x p5.48xlarge, 8 x p5.4xlarge at once: 896" in warn["detail"]
    assert answer["ok"] is True
