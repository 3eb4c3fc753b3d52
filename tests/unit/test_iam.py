"""Least privilege: the IAM evaluator of the local stack (cryopilot_sim.iam), and the state
machine's role against every service integration its ASL calls (the Tasks' ``Resource``,
``FunctionName``, ``TopicArn``), with the role exactly as SAM generates it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from cryopilot_sim import iam
from cryopilot_sim.harness import ACCOUNT_ID, REGION, substitute_definition
from cryopilot_sim.template import Resolver, load_template, resources_of_type

from tests.conftest import ROOT

STACK = "cryopilot-prod"


@pytest.fixture(scope="session")
def translated() -> dict[str, Any]:
    """The template as ``sam deploy`` would send it (translated again if template.yaml is newer)."""
    return iam.translated_template()


def _resolver() -> Resolver:
    """Every resource named as the stack would name it (functions, topic, table...)."""
    tpl = load_template()
    params = {
        "NotificationEmail": "structures@example.org",
        "ParallelClusterApiUrl": "https://abc123.execute-api.us-east-1.amazonaws.com/prod",
        "HeadNodeSubnetId": "subnet-1",
        "ComputeSubnetIds": "subnet-1",
        "VpcId": "vpc-1",
        "CryosparcLicenceSecretArn": f"arn:aws:secretsmanager:{REGION}:{ACCOUNT_ID}:secret:licence",
    }
    r = Resolver(tpl, params, region=REGION, account_id=ACCOUNT_ID, stack_name=STACK)
    for logical, res in tpl["Resources"].items():
        name = f"{STACK}-{logical}"
        r.refs[logical] = name
        if res["Type"] == "AWS::Serverless::Function":
            r.attrs[(logical, "Arn")] = f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{name}"
        elif res["Type"] == "AWS::DynamoDB::Table":
            r.attrs[(logical, "Arn")] = f"arn:aws:dynamodb:{REGION}:{ACCOUNT_ID}:table/{name}"
        elif res["Type"] == "AWS::SNS::Topic":
            r.refs[logical] = f"arn:aws:sns:{REGION}:{ACCOUNT_ID}:{name}"
            r.attrs[(logical, "TopicName")] = name
        else:
            r.attrs[(logical, "Arn")] = f"arn:aws:{logical.lower()}:{REGION}:{ACCOUNT_ID}:{name}"
    return r


def _tasks(states: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, state in states.items():
        if state.get("Type") == "Task":
            yield name, state
        for branch in state.get("Branches") or []:
            yield from _tasks(branch["States"])
        for key in ("Iterator", "ItemProcessor"):
            if key in state:
                yield from _tasks(state[key]["States"])


#: Step Functions' optimised integrations this stack uses: the IAM action each needs, and the
#: parameter naming its resource (Step Functions developer guide, "IAM policies for" Lambda / SNS).
_INTEGRATIONS = {
    "arn:aws:states:::lambda:invoke": ("lambda:InvokeFunction", "FunctionName"),
    "arn:aws:states:::sns:publish": ("sns:Publish", "TopicArn"),
}


def _machines(translated: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]], dict[str, Any]]]:
    r = _resolver()
    out = []
    for logical, res in resources_of_type(r.template, "AWS::Serverless::StateMachine").items():
        props = res["Properties"]
        subs = {k: str(v) for k, v in r.resolve(props["DefinitionSubstitutions"]).items()}
        asl = json.loads(substitute_definition((ROOT / props["DefinitionUri"]).read_text(), subs))
        role = translated["Resources"][logical]["Properties"]["RoleArn"]["Fn::GetAtt"][0]
        policies = translated["Resources"][role]["Properties"]["Policies"]
        out.append((logical, [r.resolve(p["PolicyDocument"]) for p in policies], asl))
    return out


def test_every_task_of_the_state_machine_is_granted_to_its_role(translated: dict[str, Any]) -> None:
    machines = _machines(translated)
    assert machines
    for logical, documents, asl in machines:
        tasks = list(_tasks(asl["States"]))
        assert tasks, logical
        for name, state in tasks:
            assert state["Resource"] in _INTEGRATIONS, (
                f"{logical}.{name}: unknown integration {state['Resource']}"
            )
            action, parameter = _INTEGRATIONS[state["Resource"]]
            target = state["Parameters"][parameter]
            assert iam.decide(documents, action, target, {}), (
                f"{logical}.{name}: {action} on {target} not granted"
            )


def test_the_state_machine_check_fails_when_a_grant_is_missing(translated: dict[str, Any]) -> None:
    """The check above can fail: without the Report function's LambdaInvokePolicy, its Task is denied."""
    ((_, documents, _asl),) = _machines(translated)
    report = f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{STACK}-ReportFunction"
    cut = [d for d in documents if f"{STACK}-ReportFunction*" not in json.dumps(d)]
    assert len(cut) == len(documents) - 1
    assert iam.decide(documents, "lambda:InvokeFunction", report, {})
    assert not iam.decide(cut, "lambda:InvokeFunction", report, {})
    assert not iam.decide(documents, "lambda:InvokeFunction", report.replace("Report", "Cleanup"), {})


def test_sam_policy_templates_are_expanded(translated: dict[str, Any]) -> None:
    """SNSPublishMessagePolicy becomes what SAM's policy_templates.json lists: sns:Publish on the topic."""
    role = translated["Resources"]["CleanupFunction"]["Properties"]["Role"]["Fn::GetAtt"][0]
    policies = translated["Resources"][role]["Properties"]["Policies"]
    documents = [_resolver().resolve(p["PolicyDocument"]) for p in policies]
    topic = f"arn:aws:sns:{REGION}:{ACCOUNT_ID}:{STACK}-NotificationTopic"
    assert iam.decide(documents, "sns:Publish", topic, {})
    assert not iam.decide(documents, "sns:Publish", topic + "-other", {})
    assert not iam.decide(documents, "sns:DeleteTopic", topic, {})
    table = f"arn:aws:dynamodb:{REGION}:{ACCOUNT_ID}:table/{STACK}-RunsTable"
    assert iam.decide(documents, "dynamodb:UpdateItem", table, {})
    assert not iam.decide(documents, "dynamodb:Scan", table, {})  # no DynamoDBCrudPolicy any more


# ------------------------------------------------------------------------------ the evaluator

_DOC = {
    "Statement": [
        {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": "arn:aws:s3:::b/data/*"},
        {"Effect": "Deny", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b/data/secret*"},
        {
            "Effect": "Allow",
            "Action": "ssm:SendCommand",
            "Resource": "arn:aws:ec2:us-east-1:1:instance/*",
            "Condition": {"StringEquals": {"ssm:resourceTag/cryopilot:stack": "prod"}},
        },
    ]
}


@pytest.mark.parametrize(
    ("action", "resource", "context", "allowed"),
    [
        ("s3:GetObject", "arn:aws:s3:::b/data/x.mrc", {}, True),
        ("S3:getobject", "arn:aws:s3:::b/data/x.mrc", {}, True),  # actions are case-insensitive
        ("s3:GetObject", "arn:aws:s3:::b/other/x.mrc", {}, False),
        ("s3:GetObject", "arn:aws:s3:::b/data/secret.txt", {}, False),  # an explicit Deny wins
        ("s3:PutObject", "arn:aws:s3:::b/data/x.mrc", {}, False),
        (
            "ssm:SendCommand",
            "arn:aws:ec2:us-east-1:1:instance/i-1",
            {"ssm:resourceTag/cryopilot:stack": "prod"},
            True,
        ),
        (
            "ssm:SendCommand",
            "arn:aws:ec2:us-east-1:1:instance/i-1",
            {"ssm:resourceTag/cryopilot:stack": "dev"},
            False,
        ),
        ("ssm:SendCommand", "arn:aws:ec2:us-east-1:1:instance/i-1", {}, False),  # no tag: no match
    ],
)
def test_the_evaluator_follows_iam(
    action: str, resource: str, context: dict[str, str], allowed: bool
) -> None:
    assert iam.decide([_DOC], action, resource, context) is allowed


def test_an_unknown_call_needs_a_grant_on_every_resource() -> None:
    (need,) = iam.needs("kms", "Decrypt", {"KeyId": "k"}, REGION, ACCOUNT_ID)
    assert need == iam.Need("kms:Decrypt", "*")
    scoped = {
        "Statement": [
            {"Effect": "Allow", "Action": "kms:Decrypt", "Resource": "arn:aws:kms:us-east-1:1:key/k"}
        ]
    }
    assert not iam.decide([scoped], need.action, need.resource, {})


def test_an_unsupported_condition_operator_is_an_error_not_a_pass() -> None:
    doc = {
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "*",
                "Resource": "*",
                "Condition": {"DateGreaterThan": {"aws:CurrentTime": "2020-01-01"}},
            }
        ]
    }
    with pytest.raises(iam.UnsupportedCondition):
        iam.decide([doc], "s3:GetObject", "*", {})


def test_calls_map_to_the_actions_iam_checks() -> None:
    def one(prefix: str, op: str, params: dict[str, Any]) -> list[tuple[str, str]]:
        return [(n.action, n.resource) for n in iam.needs(prefix, op, params, REGION, ACCOUNT_ID)]

    assert one("s3", "HeadObject", {"Bucket": "b", "Key": "k"}) == [("s3:GetObject", "arn:aws:s3:::b/k")]
    assert one("s3", "GetObject", {"Bucket": "b", "Key": "k", "VersionId": "v"}) == [
        ("s3:GetObjectVersion", "arn:aws:s3:::b/k")
    ]
    assert one("s3", "ListObjectsV2", {"Bucket": "b"}) == [("s3:ListBucket", "arn:aws:s3:::b")]
    assert one("dynamodb", "Query", {"TableName": "t", "IndexName": "i"}) == [
        ("dynamodb:Query", f"arn:aws:dynamodb:{REGION}:{ACCOUNT_ID}:table/t/index/i")
    ]
    assert one("ssm", "SendCommand", {"DocumentName": "AWS-RunShellScript", "InstanceIds": ["i-1"]}) == [
        ("ssm:SendCommand", f"arn:aws:ssm:{REGION}::document/AWS-RunShellScript"),
        ("ssm:SendCommand", f"arn:aws:ec2:{REGION}:{ACCOUNT_ID}:instance/i-1"),
    ]


def test_a_tag_condition_reads_the_tags_of_the_resource_the_call_touches() -> None:
    """ssm:SendCommand on a head node: the condition names ``ssm:resourceTag/...`` (the action's
    service), the tags are the instance's."""
    from botocore.exceptions import ClientError

    tags = {"i-1": {"cryopilot:stack": "prod"}, "i-2": {"cryopilot:stack": "dev"}}
    enforcer = iam.Enforcer(REGION, "1", lambda arn: tags.get(arn.rsplit("/", 1)[-1], {}))
    doc = {
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "ssm:SendCommand",
                "Resource": f"arn:aws:ssm:{REGION}::document/AWS-*",
            },
            _DOC["Statement"][2],
        ]
    }
    enforcer.add(iam.Role("StageRole", "stage", "arn:aws:iam::1:role/stage", [doc]))
    send = {"DocumentName": "AWS-RunShellScript", "InstanceIds": ["i-1"]}
    enforcer.check("StageRole", "s", "ssm", "SendCommand", send)
    assert enforcer.used["StageRole"]["ssm:SendCommand"] == 2
    with pytest.raises(ClientError, match=r"AccessDeniedException.*ssm:SendCommand.*instance/i-2"):
        enforcer.check("StageRole", "s", "ssm", "SendCommand", {**send, "InstanceIds": ["i-2"]})
    assert enforcer.denied == [("StageRole", "ssm:SendCommand", "arn:aws:ec2:us-east-1:1:instance/i-2")]


def test_the_report_reads_a_justification_in_the_granting_resource_only() -> None:
    from scripts.iam_report import blocks, justified

    text = (
        "Resources:\n"
        "  OneFunction:\n"
        "    Properties:\n"
        "      # iam-unused: sqs:SendMessage, execute-api:Invoke - Lambda sends there itself\n"
        "      # iam-unused: s3:GetObject\n"
        "  Other:\n"
        "    Type: x\n"
        "Outputs:\n"
        "  # iam-unused: sns:Publish - not a resource\n"
    )
    found = blocks(text)
    assert set(found) == {"OneFunction", "Other"}
    # an action without a reason justifies nothing
    assert justified(found["OneFunction"]) == {"sqs:sendmessage", "execute-api:invoke"}
    assert justified(found["Other"]) == set()


def test_tagging_a_snapshot_is_limited_to_the_keys_and_stack_the_policy_names() -> None:
    doc = {
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "ec2:CreateTags",
                "Resource": "arn:aws:ec2:us-east-1::snapshot/*",
                "Condition": {
                    "ForAllValues:StringEquals": {"aws:TagKeys": ["cryopilot:stack", "cryopilot:run-id"]},
                    "StringEquals": {"aws:RequestTag/cryopilot:stack": "prod"},
                },
            }
        ]
    }

    def allowed(tags: dict[str, str], resource: str = "snap-1") -> bool:
        params = {"Resources": [resource], "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
        (need,) = iam.needs("ec2", "CreateTags", params, REGION, ACCOUNT_ID)
        return iam.decide([doc], need.action, need.resource, need.context)

    assert allowed({"cryopilot:stack": "prod", "cryopilot:run-id": "r1"})
    assert not allowed({"cryopilot:stack": "dev", "cryopilot:run-id": "r1"})
    assert not allowed({"cryopilot:stack": "prod", "Name": "x"})  # a key the policy does not list
    assert not allowed({"cryopilot:stack": "prod"}, resource="vol-1")  # not a snapshot
