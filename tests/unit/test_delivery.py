"""The stack's delivery of the head node's files: what is bundled, and the custom-resource protocol."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from cryopilot.steps import deliver as delivery
from moto import mock_aws

from tests.conftest import ROOT

HEADNODE = ROOT / "headnode"
BUCKET = "artifacts"


@pytest.fixture
def s3() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


def _event(request_type: str = "Create", **props: Any) -> dict[str, Any]:
    return {
        "RequestType": request_type,
        "ResponseURL": "https://cloudformation-custom-resource-response.example/answer",
        "StackId": "arn:aws:cloudformation:us-east-1:123456789012:stack/cryopilot/guid",
        "RequestId": "req-1",
        "LogicalResourceId": "HeadNodeBootstrap",
        "ResourceType": "Custom::HeadNodeBootstrap",
        "ResourceProperties": {"ServiceToken": "arn:fn", "Bucket": BUCKET, "Prefix": "headnode/", **props},
    }


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, url: str, body: bytes) -> None:
        self.sent.append((url, json.loads(body)))


def test_bundle_holds_the_scripts_the_agent_and_their_digests() -> None:
    files = {f.name: f for f in delivery.bundle(HEADNODE)}
    assert set(files) == {
        "headnode-setup.sh",
        "cryosparc-cluster-script.sh",
        "cryopilot-agent.zip",
        "bundle.json",
    }
    assert files["headnode-setup.sh"].body == (HEADNODE / "bootstrap" / "headnode-setup.sh").read_bytes()
    manifest = json.loads(files["bundle.json"].body)
    for name in ("headnode-setup.sh", "cryosparc-cluster-script.sh", "cryopilot-agent.zip"):
        assert manifest[name] == {"sha256": files[name].sha256, "bytes": len(files[name].body)}


def test_agent_zip_is_reproducible_and_holds_only_the_package_sources() -> None:
    first = {f.name: f.body for f in delivery.bundle(HEADNODE)}["cryopilot-agent.zip"]
    second = {f.name: f.body for f in delivery.bundle(HEADNODE)}["cryopilot-agent.zip"]
    assert first == second
    names = zipfile.ZipFile(io.BytesIO(first)).namelist()
    assert "cryopilot_agent/__init__.py" in names
    assert "cryopilot_agent/cli.py" in names
    # of the shared package, the protocol only: the agent needs nothing else
    shared = sorted(n for n in names if n.startswith("cryopilot/"))
    assert shared == [
        "cryopilot/__init__.py",
        "cryopilot/protocol/__init__.py",
        "cryopilot/protocol/agent.py",
        "cryopilot/protocol/stage.py",
    ]
    assert all(n.startswith(("cryopilot_agent/", "cryopilot/")) for n in names)
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)


def test_unzipped_agent_runs_as_the_wrapper_runs_it(tmp_path: Path) -> None:
    """The head node unzips the agent and runs ``python -m cryopilot_agent``: the zip alone must
    be enough (its own imports resolve), which a missing module in the zip would break."""
    body = {f.name: f.body for f in delivery.bundle(HEADNODE)}["cryopilot-agent.zip"]
    zipfile.ZipFile(io.BytesIO(body)).extractall(tmp_path)
    script = (
        "import cryopilot_agent.cli, cryopilot_agent.driver, cryopilot_agent.decisions, sys; "
        "import cryopilot.protocol.agent, cryopilot.protocol.stage; "
        "assert cryopilot_agent.cli.__file__.startswith(sys.argv[1]); "
        "assert cryopilot.protocol.stage.__file__.startswith(sys.argv[1]); "
        "sys.exit(cryopilot_agent.cli.main([]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    # no verb: the agent answers with its usage error as one JSON document
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["error_type"] == "UsageError"


def test_create_uploads_every_file_and_answers_success(s3: Any) -> None:
    send = Recorder()
    answer = delivery.handle(_event(), HEADNODE, send)
    assert answer["Status"] == "SUCCESS"
    ((url, sent),) = send.sent
    assert url.endswith("/answer")
    assert sent == answer
    assert sent["PhysicalResourceId"] == f"s3://{BUCKET}/headnode/"
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert keys == {
        "headnode/headnode-setup.sh",
        "headnode/cryosparc-cluster-script.sh",
        "headnode/cryopilot-agent.zip",
        "headnode/bundle.json",
    }
    stored = s3.get_object(Bucket=BUCKET, Key="headnode/cryopilot-agent.zip")["Body"].read()
    assert delivery.BundleFile("z", stored, "").sha256 == sent["Data"]["AgentSha256"]


def test_update_keeps_the_physical_id_and_redelivers(s3: Any) -> None:
    send = Recorder()
    event = _event("Update") | {"PhysicalResourceId": "s3://artifacts/headnode/"}
    assert delivery.handle(event, HEADNODE, send)["Status"] == "SUCCESS"
    assert send.sent[0][1]["PhysicalResourceId"] == "s3://artifacts/headnode/"
    assert s3.list_objects_v2(Bucket=BUCKET)["KeyCount"] == 4


def test_delete_leaves_the_files_and_answers_success(s3: Any) -> None:
    delivery.handle(_event(), HEADNODE, Recorder())
    send = Recorder()
    event = _event("Delete") | {"PhysicalResourceId": "s3://artifacts/headnode/"}
    assert delivery.handle(event, HEADNODE, send)["Status"] == "SUCCESS"
    assert s3.list_objects_v2(Bucket=BUCKET)["KeyCount"] == 4


def test_a_missing_script_is_a_failed_answer_never_a_hang(s3: Any, tmp_path: Path) -> None:
    root = tmp_path / "headnode"
    shutil.copytree(HEADNODE, root, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "bootstrap" / "cryosparc-cluster-script.sh").unlink()
    send = Recorder()
    answer = delivery.handle(_event(), root, send)
    assert answer["Status"] == "FAILED"
    assert "cryosparc-cluster-script.sh is missing" in answer["Reason"]
    assert len(send.sent) == 1
    assert s3.list_objects_v2(Bucket=BUCKET)["KeyCount"] == 0


def test_a_missing_bucket_or_unknown_request_is_a_failed_answer(s3: Any) -> None:
    send = Recorder()
    assert delivery.handle(_event(Bucket=""), HEADNODE, send)["Status"] == "FAILED"
    assert delivery.handle(_event("Rename"), HEADNODE, send)["Status"] == "FAILED"
    assert "unknown RequestType 'Rename'" in send.sent[-1][1]["Reason"]


@pytest.mark.parametrize("url", ["http://example.org/answer", "file:///etc/passwd", "ftp://x/y"])
def test_response_goes_only_to_https_or_loopback(url: str) -> None:
    with pytest.raises(ValueError, match="https"):
        delivery._put_response(url, b"{}")
