"""A deployed stack as the operator commands find it: CloudFormation's outputs and resources."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from cryopilot_ops import ops

NAME, REGION = "cryopilot-prod", "eu-west-1"
OUTPUTS = {
    "InputBucketName": "in",
    "ResultsBucketName": "out",
    "RunsTableName": "runs",
    "RunStateMachineArn": "arn:aws:states:eu-west-1:123456789012:stateMachine:cryopilot-prod",
    "NotificationTopicArn": "arn:aws:sns:eu-west-1:123456789012:cryopilot-prod",
    "HeadNodeBootstrapUri": "s3://artifacts/headnode/",
}


def test_a_stack_names_its_validate_function_its_bundle_and_lists_its_functions_on_demand(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfn = boto3.client("cloudformation", region_name=REGION)
    stub = Stubber(cfn)
    stub.add_response(
        "describe_stacks",
        {
            "Stacks": [
                {
                    "StackName": NAME,
                    "CreationTime": "2026-12-01T00:00:00Z",
                    "StackStatus": "CREATE_COMPLETE",
                    "Outputs": [{"OutputKey": k, "OutputValue": v} for k, v in OUTPUTS.items()],
                }
            ]
        },
        {"StackName": NAME},
    )
    for logical in ("ClusterFunction", "StartRunFunction", "ValidateFunction"):
        stub.add_response(
            "describe_stack_resource",
            {
                "StackResourceDetail": {
                    "LogicalResourceId": logical,
                    "PhysicalResourceId": f"{NAME}-{logical}-X1",
                    "ResourceType": "AWS::Lambda::Function",
                    "LastUpdatedTimestamp": "2026-12-01T00:00:00Z",
                    "ResourceStatus": "CREATE_COMPLETE",
                }
            },
            {"StackName": NAME, "LogicalResourceId": logical},
        )

    def summary(logical: str, kind: str) -> dict[str, Any]:
        return {
            "LogicalResourceId": logical,
            "PhysicalResourceId": f"{NAME}-{logical}-X1",
            "ResourceType": kind,
            "LastUpdatedTimestamp": "2026-12-01T00:00:00Z",
            "ResourceStatus": "CREATE_COMPLETE",
        }

    stub.add_response(
        "list_stack_resources",
        {
            "StackResourceSummaries": [
                summary("ValidateFunction", "AWS::Lambda::Function"),
                summary("RunsTable", "AWS::DynamoDB::Table"),
            ],
            "NextToken": "page-2",
        },
        {"StackName": NAME},
    )
    stub.add_response(
        "list_stack_resources",
        {"StackResourceSummaries": [summary("ClusterFunction", "AWS::Lambda::Function")]},
        {"StackName": NAME, "NextToken": "page-2"},
    )
    monkeypatch.setattr(ops.boto3, "client", lambda service, region_name=None: cfn)
    with stub:
        stack = ops.Stack.from_cloudformation(NAME, REGION)
        assert stack.validate_function == f"{NAME}-ValidateFunction-X1"
        assert stack.bootstrap_uri == "s3://artifacts/headnode/"
        assert stack.functions == (), "listed only by the command that needs them (smoke)"
        listed = ops._stack_functions(cfn, NAME)
    stub.assert_no_pending_responses()
    assert listed == (f"{NAME}-ClusterFunction-X1", f"{NAME}-ValidateFunction-X1")
