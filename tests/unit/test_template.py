"""Properties of template.yaml that must hold for every deployment."""

from __future__ import annotations

from typing import Any

import pytest
from cryopilot_sim.template import function_environment, load_template, resources_of_type

from tests.conftest import ROOT

TPL = load_template()


def _statements(policies: list[Any]) -> list[dict[str, Any]]:
    out = []
    for p in policies:
        if isinstance(p, dict) and "Statement" in p:
            out += p["Statement"]
    return out


def _all_policy_statements() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for logical, res in TPL["Resources"].items():
        props = res.get("Properties", {})
        if res["Type"] in ("AWS::Serverless::Function", "AWS::Serverless::StateMachine"):
            found += [(logical, s) for s in _statements(props.get("Policies", []))]
        if res["Type"] == "AWS::S3::BucketPolicy":
            found += [(logical, s) for s in props["PolicyDocument"]["Statement"]]
    return found


def test_no_wildcard_action_anywhere() -> None:
    for logical, st in _all_policy_statements():
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        for action in actions:
            if st["Effect"] == "Deny":
                continue  # deny-all statements (TLS only) are meant to be broad
            assert action != "*", f"{logical} allows every action"
            assert not action.endswith(":*"), f"{logical} allows {action}"


def test_wildcard_resources_are_only_where_aws_allows_nothing_else() -> None:
    allowed = {"ssm:GetCommandInvocation", "logs:CreateLogDelivery"}
    for logical, st in _all_policy_statements():
        if st["Effect"] == "Allow" and st["Resource"] == "*":
            actions = set(st["Action"])
            assert actions & allowed, f"{logical} grants {actions} on every resource"


@pytest.mark.parametrize("logical", sorted(resources_of_type(TPL, "AWS::S3::Bucket")))
def test_buckets_are_encrypted_versioned_private_and_tls_only(logical: str) -> None:
    props = TPL["Resources"][logical]["Properties"]
    assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert props["VersioningConfiguration"]["Status"] == "Enabled"
    assert all(props["PublicAccessBlockConfiguration"].values())
    policies = [
        r["Properties"]
        for r in resources_of_type(TPL, "AWS::S3::BucketPolicy").values()
        if r["Properties"]["Bucket"] == {"Ref": logical}
    ]
    assert policies, f"{logical} has no bucket policy"
    statements = policies[0]["PolicyDocument"]["Statement"]
    assert any(
        s["Effect"] == "Deny" and s["Condition"]["Bool"]["aws:SecureTransport"] == "false" for s in statements
    )


def test_input_bucket_sends_events_to_eventbridge() -> None:
    props = TPL["Resources"]["InputBucket"]["Properties"]
    assert props["NotificationConfiguration"]["EventBridgeConfiguration"]["EventBridgeEnabled"] is True


def test_runs_table_is_on_demand_with_pitr() -> None:
    props = TPL["Resources"]["RunsTable"]["Properties"]
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True


def test_functions_use_the_layer_and_python312() -> None:
    g = TPL["Globals"]["Function"]
    assert g["Runtime"] == "python3.12"
    assert g["Layers"] == [{"Ref": "CryopilotLayer"}]
    for logical, res in resources_of_type(TPL, "AWS::Serverless::Function").items():
        code = ROOT / res["Properties"]["CodeUri"]
        assert (code / "app.py").is_file(), logical
        assert "Environment" not in res["Properties"], f"{logical}: keep environment in Globals"


def test_environment_matches_the_settings_model() -> None:
    from cryopilot.settings import Settings

    env = function_environment(TPL)
    fields = {f"CRYOPILOT_{name.upper()}" for name in Settings.model_fields}
    ours = {k for k in env if k.startswith("CRYOPILOT_")}
    assert ours <= fields, f"variables the code never reads: {ours - fields}"


def test_state_machine_is_standard_and_logs_without_execution_data() -> None:
    (sm,) = resources_of_type(TPL, "AWS::Serverless::StateMachine").values()
    assert sm["Properties"]["Type"] == "STANDARD"
    assert sm["Properties"]["Logging"]["IncludeExecutionData"] is False
