"""The cryoSPARC licence never leaks: a recognisable licence is planted in the local Secrets
Manager under the stack's licence secret, a whole run goes through, and the licence appears in no
log line, execution history, run record, SNS message, report, command output or cluster
configuration. (Only the head node reads the secret, at boot: tests/unit/test_headnode_scripts.py
checks the bootstrap script keeps it out of its log and of every command line.)"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import yaml
from cryopilot_sim.clock import VirtualClock
from cryopilot_sim.harness import LICENCE_SECRET_ARN, LocalCloud

from tests.conftest import EVENTS

pytestmark = pytest.mark.slow

CANARY = "c0ffee00-1ce5-4bad-8d00-5ecre7cafe42"


@pytest.fixture
def cloud() -> Iterator[LocalCloud]:
    with LocalCloud(clock=VirtualClock()) as c:
        yield c


def _everything_stored(cloud: LocalCloud, arn: str) -> dict[str, str]:
    """Every place a run leaves text, by name."""
    places: dict[str, str] = {}
    places["execution history"] = json.dumps(cloud.history(arn), default=str)
    table = str(cloud.ref("RunsTable"))
    items = cloud.client("dynamodb").scan(TableName=table)["Items"]
    places["run table"] = json.dumps(items, default=str)
    places["mails"] = json.dumps(cloud.mails())
    s3 = cloud.client("s3")
    for bucket in (cloud.results_bucket, str(cloud.ref("ArtifactsBucket")), cloud.input_bucket):
        for obj in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            places[f"s3://{bucket}/{obj['Key']}"] = body.decode("utf-8", "replace")
    for request in cloud.pcluster.requests:
        places[f"ParallelCluster API {request.method} {request.path}"] = json.dumps(request.body, default=str)
    return places


@pytest.fixture
def lambda_log() -> Iterator[io.StringIO]:
    """The Lambdas' log lines, formatted as CloudWatch receives them (Powertools' JSON)."""
    from cryopilot.adapters.observability import logger

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logger.registered_formatter)
    target = logging.getLogger(logger.name)
    target.addHandler(handler)
    yield stream
    target.removeHandler(handler)


def test_licence_appears_nowhere_a_run_leaves_text(
    cloud: LocalCloud,
    lambda_log: io.StringIO,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    secrets = cloud.client("secretsmanager")
    secret_name = LICENCE_SECRET_ARN.rsplit(":secret:", 1)[1]
    # the local account has the secret (preflight checks it exists): the canary licence goes in it
    secrets.put_secret_value(SecretId=secret_name, SecretString=json.dumps({"licence_id": CANARY}))

    s3 = cloud.client("s3")
    s3.put_object(Bucket=cloud.input_bucket, Key="datasets/CGRP-2026-11/movies/m1.tif", Body=b"\0" * 64)
    s3.put_object(Bucket=cloud.input_bucket, Key="datasets/CGRP-2026-11/gain/gain_ref.mrc", Body=b"g" * 32)
    doc = {
        "manifest_inline": yaml.safe_load((EVENTS / "manifests" / "cgrp.yaml").read_text()),
        "data_s3_uri": f"s3://{cloud.input_bucket}/datasets/CGRP-2026-11/",
        "settings": {"min_poll_seconds": 1800, "max_poll_seconds": 14400},
    }
    sfn = cloud.client("stepfunctions")
    arn = sfn.start_execution(
        stateMachineArn=cloud.state_machine_arn, name="leak-check", input=json.dumps(doc)
    )["executionArn"]
    desc = cloud.wait_for_execution(arn, timeout=240)
    assert desc["status"] == "SUCCEEDED"

    places = _everything_stored(cloud, arn)
    out, err = capfd.readouterr()
    places["Lambda log"] = lambda_log.getvalue()
    places["stdout"] = out
    places["stderr"] = err
    places["log records"] = "\n".join(r.getMessage() for r in caplog.records)

    # the checks can fail: the places hold the run's text, and the secret's ARN is in them
    assert '"message":"manifest valid"' in places["Lambda log"]
    config = [v for k, v in places.items() if k.startswith("ParallelCluster API POST")]
    assert config
    assert secret_name in config[0]  # the ARN is passed, so the head node can read the secret
    assert any(k.endswith("/report/report.html") for k in places)

    leaks = [name for name, text in places.items() if CANARY in text]
    assert leaks == []
