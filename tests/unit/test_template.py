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
        if res["Type"] in ("AWS::S3::BucketPolicy", "AWS::IAM::ManagedPolicy"):
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


#: The actions that support no resource-level permission, so may only be granted on "*":
#: SSM's GetCommandInvocation, SNS's subscription attributes (the Service Authorization Reference
#: lists no resource type for them), and the CloudWatch Logs delivery actions Step Functions logging needs.
#: FSx's DescribeFileSystems and DescribeDataRepositoryTasks list no resource type either (Service
#: Authorization Reference, Actions defined by Amazon FSx), nor do EC2's Describe actions (Actions
#: defined by Amazon EC2).
ONLY_ON_EVERY_RESOURCE = {
    "ec2:DescribeVolumes",
    "ec2:DescribeSnapshots",
    "fsx:DescribeFileSystems",
    "fsx:DescribeDataRepositoryTasks",
    "ssm:GetCommandInvocation",
    "sns:GetSubscriptionAttributes",
    "sns:SetSubscriptionAttributes",
    "logs:CreateLogDelivery",
    "logs:GetLogDelivery",
    "logs:UpdateLogDelivery",
    "logs:DeleteLogDelivery",
    "logs:ListLogDeliveries",
    "logs:PutResourcePolicy",
    "logs:DescribeResourcePolicies",
    "logs:DescribeLogGroups",
    # preflight's read-only account checks (Validate): EC2's Describe* actions take no resource
    # type; GetServiceQuota is asked for EC2's vCPU quotas of the account
    "servicequotas:GetServiceQuota",
    "ec2:DescribeInstanceTypeOfferings",
    "ec2:DescribeSubnets",
    "ec2:DescribeRouteTables",
    "ec2:DescribeVpcEndpoints",
}


def test_wildcard_resources_are_only_where_aws_allows_nothing_else() -> None:
    wildcard = 0
    for logical, st in _all_policy_statements():
        resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
        if st["Effect"] == "Allow" and "*" in resources:
            wildcard += 1
            actions = set(st["Action"] if isinstance(st["Action"], list) else [st["Action"]])
            extra = actions - ONLY_ON_EVERY_RESOURCE
            assert not extra, f"{logical} grants {sorted(extra)} on every resource"
    assert wildcard, "no statement on every resource: the template's policies were not read"


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
        module = res["Properties"].get("Handler", g["Handler"]).rpartition(".")[0]
        assert (code / f"{module}.py").is_file(), logical
        assert "Environment" not in res["Properties"], f"{logical}: keep environment in Globals"


def test_environment_matches_the_settings_model() -> None:
    from cryopilot.adapters.settings import Settings

    env = function_environment(TPL)
    fields = {f"CRYOPILOT_{name.upper()}" for name in Settings.model_fields}
    ours = {k for k in env if k.startswith("CRYOPILOT_")}
    assert ours <= fields, f"variables the code never reads: {ours - fields}"


def test_state_machine_is_standard_and_logs_without_execution_data() -> None:
    (sm,) = resources_of_type(TPL, "AWS::Serverless::StateMachine").values()
    assert sm["Properties"]["Type"] == "STANDARD"
    assert sm["Properties"]["Logging"]["IncludeExecutionData"] is False


def test_parallelcluster_api_is_deployed_when_no_url_is_given() -> None:
    """An empty ParallelClusterApiUrl deploys AWS's published API template (pinned version) as a
    nested stack, and every consumer of the URL takes the nested stack's output."""
    assert TPL["Parameters"]["ParallelClusterApiUrl"]["Default"] == ""
    assert TPL["Conditions"]["DeployParallelClusterApi"] == {
        "Fn::Equals": [{"Ref": "ParallelClusterApiUrl"}, ""]
    }
    nested = TPL["Resources"]["ParallelClusterApi"]
    assert nested["Type"] == "AWS::CloudFormation::Stack"
    assert nested["Condition"] == "DeployParallelClusterApi"
    url = nested["Properties"]["TemplateURL"]["Fn::Sub"]
    assert "/parallelcluster/3.16.1/api/parallelcluster-api.yaml" in url


def test_api_version_in_the_template_is_the_pinned_package_version() -> None:
    from importlib.metadata import version

    url = TPL["Resources"]["ParallelClusterApi"]["Properties"]["TemplateURL"]["Fn::Sub"]
    assert f"/parallelcluster/{version('aws-parallelcluster')}/api/" in url
    assert "3.16.1" in TPL["Parameters"]["ParallelClusterApiUrl"]["Description"]


def test_every_use_of_the_api_url_follows_the_condition() -> None:
    """Outside Conditions, ParallelClusterApiUrl is only ever the "else" of an !If on
    DeployParallelClusterApi whose "then" is the nested stack's invoke URL."""
    nested_url = {"Fn::GetAtt": ["ParallelClusterApi", "Outputs.ParallelClusterApiInvokeUrl"]}
    guarded: list[str] = []
    bare: list[str] = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if node.get("Fn::If") and node["Fn::If"][0] == "DeployParallelClusterApi":
                _, then, otherwise = node["Fn::If"]
                if then == nested_url and otherwise == {"Ref": "ParallelClusterApiUrl"}:
                    guarded.append(where)
                    return
            if node == {"Ref": "ParallelClusterApiUrl"}:
                bare.append(where)
            for k, v in node.items():
                walk(v, f"{where}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}[{i}]")

    for section in ("Globals", "Resources", "Outputs"):
        walk(TPL[section], section)
    assert not bare, f"unguarded uses of the URL parameter: {bare}"
    assert any(w.startswith("Globals") for w in guarded)
    assert any(w.startswith("Resources.ParallelClusterApiInvokePolicy") for w in guarded)
    assert any(w.startswith("Outputs") for w in guarded)


def test_head_node_may_read_only_the_licence_secret_and_the_api_may_attach_it() -> None:
    policy = TPL["Resources"]["HeadNodePolicy"]
    assert policy["Type"] == "AWS::IAM::ManagedPolicy"
    # the ParallelCluster API may attach only policies under policy/parallelcluster/
    assert policy["Properties"]["Path"] == "/parallelcluster/"
    (statement,) = policy["Properties"]["PolicyDocument"]["Statement"]
    assert set(statement["Action"]) == {"secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"}
    assert statement["Resource"] == {"Fn::Sub": "${CryosparcLicenceSecretArn}*"}
    env = function_environment(TPL)
    assert env["CRYOPILOT_HEAD_NODE_POLICY_ARNS"] == {"Ref": "HeadNodePolicy"}


def test_licence_parameter_accepts_only_a_secret_arn() -> None:
    import re

    param = TPL["Parameters"]["CryosparcLicenceSecretArn"]
    assert "Default" not in param
    pattern = re.compile(param["AllowedPattern"])
    assert pattern.match("arn:aws:secretsmanager:eu-west-1:123456789012:secret:cryosparc/licence-AbC123")
    assert not pattern.match("5f1c2e3a-0000-4000-8000-000000000000")  # a licence id itself
    assert not pattern.match("")


def test_stack_delivers_the_head_node_files_itself() -> None:
    fn = TPL["Resources"]["HeadNodeBootstrapFunction"]["Properties"]
    assert fn["CodeUri"] == "headnode/"
    assert fn["AutoPublishAlias"]
    custom = TPL["Resources"]["HeadNodeBootstrap"]
    assert custom["Type"].startswith("Custom::")
    props = custom["Properties"]
    assert props["ServiceToken"] == {"Fn::GetAtt": ["HeadNodeBootstrapFunction", "Arn"]}
    assert props["Bucket"] == {"Ref": "ArtifactsBucket"}
    # the function's version is a property, so new code re-delivers the files
    assert props["CodeVersion"] == {"Ref": "HeadNodeBootstrapFunction.Version"}
    (statement,) = fn["Policies"][0]["Statement"]
    assert statement["Action"] == ["s3:PutObject"]
    assert statement["Resource"] == {"Fn::Sub": "${ArtifactsBucket.Arn}/headnode/*"}


def test_cluster_and_cleanup_functions_share_the_api_invoke_policy() -> None:
    for logical in ("ClusterFunction", "CleanupFunction"):
        policies = TPL["Resources"][logical]["Properties"]["Policies"]
        assert {"Ref": "ParallelClusterApiInvokePolicy"} in policies, logical
    (statement,) = TPL["Resources"]["ParallelClusterApiInvokePolicy"]["Properties"]["PolicyDocument"][
        "Statement"
    ]
    assert statement["Action"] == ["execute-api:Invoke"]
    assert len(statement["Resource"]) == 2  # /v3/clusters and /v3/clusters/*, of that API only


def test_cleanup_runs_when_an_execution_ends_badly_and_on_a_schedule() -> None:
    events = TPL["Resources"]["CleanupFunction"]["Properties"]["Events"]
    pattern = events["ExecutionEnded"]["Properties"]["Pattern"]
    assert pattern["source"] == ["aws.states"]
    assert pattern["detail-type"] == ["Step Functions Execution Status Change"]
    assert sorted(pattern["detail"]["status"]) == ["ABORTED", "FAILED", "TIMED_OUT"]
    (arn,) = pattern["detail"]["stateMachineArn"]
    assert arn["Fn::Sub"].endswith(":stateMachine:${AWS::StackName}-run")
    assert events["Janitor"]["Type"] == "Schedule"
    assert events["Janitor"]["Properties"]["Schedule"] == "rate(30 minutes)"
