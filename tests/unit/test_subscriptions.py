"""Which datasets an address's one subscription lets through (its SNS filter policy)."""

from __future__ import annotations

import json
from typing import Any
from unittest import mock

import boto3
import pytest
import yaml
from botocore.stub import Stubber
from cryopilot.core.errors import ManifestError
from cryopilot.domain.manifest import manifest_from_dict
from cryopilot.domain.subscriptions import (
    MAX_DATASETS_PER_ADDRESS,
    policy_for,
    with_dataset,
    without_dataset,
)
from cryopilot.steps import validate
from cryopilot_ops import ops

from tests.conftest import EVENTS


def test_a_dataset_is_added_to_those_the_address_receives() -> None:
    assert json.loads(with_dataset(policy_for(["A"]), "B") or "") == {"dataset": ["A", "B"]}


def test_a_dataset_already_there_changes_nothing() -> None:
    assert with_dataset(policy_for(["A", "B"]), "A") is None


def test_an_address_that_receives_every_mail_keeps_doing_so() -> None:
    # the stack's NotificationEmail, or a subscription an operator made without a filter
    assert with_dataset(None, "A") is None
    assert with_dataset("", "A") is None


def test_a_policy_set_by_hand_with_other_keys_is_left_alone() -> None:
    assert with_dataset(json.dumps({"dataset": ["A"], "event": ["failed"]}), "B") is None
    assert with_dataset(json.dumps({"event": ["failed"]}), "B") is None
    assert with_dataset("not json", "B") is None


def test_past_the_sns_limit_the_first_datasets_added_go() -> None:
    # SNS refuses a filter policy of more than 150 value combinations
    full = [f"D{i:03d}" for i in range(MAX_DATASETS_PER_ADDRESS)]
    kept = json.loads(with_dataset(policy_for(full), "NEW") or "")["dataset"]
    assert len(kept) == MAX_DATASETS_PER_ADDRESS == 150
    assert kept[0] == "D001"
    assert kept[-1] == "NEW"


def test_taking_a_dataset_away_keeps_the_others() -> None:
    assert without_dataset(policy_for(["A", "B"]), "A") == ["B"]
    assert without_dataset(policy_for(["A"]), "A") == []  # nothing left: the caller unsubscribes
    assert without_dataset(policy_for(["A"]), "B") is None  # not one it receives
    assert without_dataset(None, "A") is None  # it receives every mail


def test_an_address_sns_refuses_is_a_manifest_error_naming_notify() -> None:
    # SNS checks an email endpoint itself (Subscribe: InvalidParameter, "Invalid parameter: Email
    # address"); moto does not, so the refusal is stubbed: both of subscribe()'s calls get it
    doc = yaml.safe_load((EVENTS / "manifests" / "spike.yaml").read_text())
    manifest = manifest_from_dict({**doc, "notify": ["lab@example.org"]})
    sns = boto3.client("sns", region_name="us-east-1")
    with Stubber(sns) as stub:
        for _ in range(2):
            stub.add_client_error(
                "subscribe", "InvalidParameter", "Invalid parameter: Email address", http_status_code=400
            )
        refused = pytest.raises(ManifestError)
        with mock.patch.object(validate.aws, "client", return_value=sns), refused as info:
            validate._subscribe(manifest)
    assert str(info.value) == "notify: SNS refuses the address 'lab@example.org' (InvalidParameter)"


TOPIC = "arn:aws:sns:us-east-1:123456789012:cryopilot"


class _SnsStack:
    """An operator's stack whose SNS client is ``sns`` (a stubbed client)."""

    def __init__(self, sns: Any) -> None:
        self.sns = sns
        self.topic_arn = TOPIC

    def client(self, name: str) -> Any:
        assert name == "sns"
        return self.sns


def test_unsubscribe_refuses_a_subscription_pending_confirmation() -> None:
    # SNS lists a subscription still pending confirmation with "PendingConfirmation" for its ARN
    # and cannot delete it; it deletes it itself once it has been unconfirmed for 48 hours (SNS
    # developer guide, "Deleting an Amazon SNS subscription and topic"). moto confirms every email
    # subscription at once, so the listing is stubbed: nothing but the listing may be called (no
    # Subscribe, which the operator's permissions do not include).
    sns = boto3.client("sns", region_name="us-east-1")
    pending = {
        "SubscriptionArn": "PendingConfirmation",
        "Owner": "123456789012",
        "Protocol": "email",
        "Endpoint": "lab@example.org",
        "TopicArn": TOPIC,
    }
    with Stubber(sns) as stub:
        for _ in range(2):
            stub.add_response(
                "list_subscriptions_by_topic", {"Subscriptions": [pending]}, {"TopicArn": TOPIC}
            )
        for dataset in (None, "CGRP-2026-11"):
            with pytest.raises(ops.OperatorError) as info:
                ops.unsubscribe(_SnsStack(sns), "lab@example.org", dataset)  # type: ignore[arg-type]
            assert info.value.exit_code == ops.EXIT_NOT_FOUND
            assert str(info.value) == (
                "lab@example.org's subscription is pending confirmation: SNS cannot delete it, and"
                " deletes it itself if it is still unconfirmed 48 hours after it was made"
            )
        stub.assert_no_pending_responses()
