from __future__ import annotations

import json
import re

import pytest
from cryopilot.adapters.events import parse_triggers
from cryopilot.core.errors import EventError
from cryopilot.domain.location import (
    NAME_PATTERN,
    RUN_ID_PATTERN,
    S3_FOLDER_RE,
    ManifestLocation,
    bucket_problem,
    check_key,
    data_uri_problem,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import EVENTS


def _event(name: str) -> dict:
    return json.loads((EVENTS / name).read_text())


def test_eventbridge_s3_event() -> None:
    (t,) = parse_triggers(_event("eventbridge-s3-object-created.json"))
    assert t.kind == "eventbridge-s3"
    assert t.location is not None
    assert t.location.key == "datasets/CGRP-2026-11/cryopilot.yaml"
    assert t.location.version_id == "IYV3p45BT0ac8hjHg1houSdS1a.Mro8e"
    assert t.location.etag == "b1946ac92492d2347c6235b4d2611184"


def test_moto_spelling_of_etag_is_accepted() -> None:
    ev = _event("eventbridge-s3-object-created.json")
    ev["detail"]["object"]["eTag"] = ev["detail"]["object"].pop("etag")
    (t,) = parse_triggers(ev)
    assert t.location is not None
    assert t.location.etag == "b1946ac92492d2347c6235b4d2611184"


def test_s3_notification_key_is_url_decoded() -> None:
    ev = _event("s3-put.json")
    ev["Records"][0]["s3"]["object"]["key"] = "datasets/My+Data%2B1/cryopilot.yaml"
    (t,) = parse_triggers(ev)
    assert t.kind == "s3-notification"
    assert t.location is not None
    assert t.location.key == "datasets/My Data+1/cryopilot.yaml"


def test_s3_removal_records_are_skipped() -> None:
    ev = _event("s3-put.json")
    ev["Records"][0]["eventName"] = "ObjectRemoved:Delete"
    assert parse_triggers(ev) == []


def test_datasync_success_and_other_states() -> None:
    ev = _event("datasync-success.json")
    (t,) = parse_triggers(ev)
    assert t.kind == "datasync"
    assert t.execution_arn is not None
    assert t.execution_arn.endswith("exec-0123456789abcdef0")
    ev["detail"]["State"] = "ERROR"
    assert parse_triggers(ev) == []


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ([], "must be a JSON object"),
        ({"source": "aws.ec2"}, "unknown event"),
        ({"source": "aws.s3", "detail-type": "Object Created", "detail": {}}, "malformed"),
        ({"Records": [{"eventSource": "aws:sqs"}]}, "not an S3 event notification"),
        (
            {
                "source": "aws.datasync",
                "detail-type": "DataSync Task Execution State Change",
                "resources": [],
                "detail": {"State": "SUCCESS"},
            },
            "malformed",
        ),
    ],
)
def test_unusable_events(event: object, expected: str) -> None:
    with pytest.raises(EventError, match=expected):
        parse_triggers(event)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("datasets/a\x00b/cryopilot.yaml", "control characters"),
        ("datasets/../cryopilot.yaml", "'..'"),
        ("datasets/a/movie.tif", "not a manifest"),
    ],
)
def test_check_key(key: str, expected: str) -> None:
    with pytest.raises(EventError, match=expected):
        check_key(key)


def test_run_id_is_deterministic_and_a_valid_execution_name() -> None:
    a = ManifestLocation(bucket="b", key="datasets/CGRP 2026/cryopilot.yaml", version_id="v1")
    b = ManifestLocation(bucket="b", key="datasets/CGRP 2026/cryopilot.yaml", version_id="v1")
    c = ManifestLocation(bucket="b", key="datasets/CGRP 2026/cryopilot.yaml", version_id="v2")
    assert a.run_id() == b.run_id() != c.run_id()
    assert a.run_id().startswith("CGRP-2026-")
    assert len(a.run_id()) <= 80
    assert all(ch.isalnum() or ch in "-_" for ch in a.run_id())


def test_etag_identifies_version_when_bucket_is_unversioned() -> None:
    a = ManifestLocation(bucket="b", key="datasets/x/cryopilot.yaml", etag='"abc"')
    b = ManifestLocation(bucket="b", key="datasets/x/cryopilot.yaml", etag="abc")
    assert a.digest() == b.digest()


def test_eventbridge_s3_event_is_parsed_with_powertools_model() -> None:
    from aws_lambda_powertools.utilities.parser.models import (
        EventBridgeModel,
        S3EventNotificationEventBridgeModel,
    )
    from cryopilot.adapters.event_models import DataSyncEvent, S3ObjectCreatedEvent

    assert issubclass(S3ObjectCreatedEvent, S3EventNotificationEventBridgeModel)
    assert issubclass(DataSyncEvent, EventBridgeModel)
    ev = S3ObjectCreatedEvent.model_validate(_event("eventbridge-s3-object-created.json"))
    assert ev.detail.object.etag == "b1946ac92492d2347c6235b4d2611184"


def test_eventbridge_s3_event_without_etag_has_none() -> None:
    ev = _event("eventbridge-s3-object-created.json")
    del ev["detail"]["object"]["etag"]
    (t,) = parse_triggers(ev)
    assert t.location is not None
    assert t.location.etag is None


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda ev: ev["detail"].pop("request-id"), r"aws.s3 event is malformed: detail.request-id"),
        (lambda ev: ev.pop("time"), r"aws.s3 event is malformed: time"),
        (lambda ev: ev.update({"detail-type": "Object Deleted"}), "only 'Object Created' does"),
    ],
)
def test_eventbridge_s3_event_must_have_the_real_shape(mutate: object, expected: str) -> None:
    ev = _event("eventbridge-s3-object-created.json")
    mutate(ev)  # type: ignore[operator]
    with pytest.raises(EventError, match=expected):
        parse_triggers(ev)


def test_s3_notification_must_have_the_real_shape() -> None:
    ev = _event("s3-put.json")
    del ev["Records"][0]["eventTime"]
    with pytest.raises(EventError, match="not an S3 event notification: Field required"):
        parse_triggers(ev)


def test_datasync_event_without_state_is_malformed() -> None:
    ev = _event("datasync-success.json")
    ev["detail"] = {}
    with pytest.raises(EventError, match=r"aws.datasync event is malformed: detail.State"):
        parse_triggers(ev)


def _status_change(**detail: object) -> dict:
    return {
        "version": "0",
        "id": "e1",
        "detail-type": "Step Functions Execution Status Change",
        "source": "aws.states",
        "account": "123456789012",
        "time": "2026-11-23T12:00:00Z",
        "region": "us-east-1",
        "resources": ["arn:aws:states:us-east-1:123456789012:execution:sm:run-1"],
        "detail": {
            "executionArn": "arn:aws:states:us-east-1:123456789012:execution:sm:run-1",
            "stateMachineArn": "arn:aws:states:us-east-1:123456789012:stateMachine:sm",
            "name": "run-1",
            "status": "ABORTED",
            "startDate": 1,
            "stopDate": 2,
            **detail,
        },
    }


def test_cleanup_parses_an_execution_status_change() -> None:
    from cryopilot.steps.cleanup import parse_event

    kind, detail = parse_event(_status_change())
    assert kind == "execution_end"
    assert detail["name"] == "run-1"
    assert detail["status"] == "ABORTED"
    assert detail["stopDate"] == 2  # fields the cleanup does not read are kept
    ev = _status_change()
    ev["detail"] = json.dumps(ev["detail"])
    assert parse_event(ev)[1]["name"] == "run-1"


def test_cleanup_refuses_what_it_does_not_handle() -> None:
    from cryopilot.steps.cleanup import parse_event

    ev = _status_change()
    del ev["detail"]["status"]
    with pytest.raises(ValueError, match=r"malformed execution status change: detail.status"):
        parse_event(ev)
    with pytest.raises(ValueError, match="not an event the cleanup function handles"):
        parse_event({"detail-type": "EC2 Instance State-change Notification", "source": "aws.ec2"})
    assert parse_event({"detail-type": "Scheduled Event", "source": "aws.events"}) == ("schedule", {})


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_every_name_is_accepted_by_the_rule_or_refused_on_one_visible_line(name: str) -> None:
    """A dataset folder: accepted exactly when it matches the manifest's ``dataset`` pattern,
    otherwise refused with one line of printable text (no format or bidi character gets through
    into the reason)."""
    key = f"datasets/{name}/cryopilot.yaml"
    if re.fullmatch(NAME_PATTERN[1:-1], name) is None:
        with pytest.raises(EventError) as refused:
            check_key(key)
        assert str(refused.value).isprintable()
        return
    check_key(key)
    # ... and whatever is accepted makes a run id StartRun takes
    assert re.fullmatch(RUN_ID_PATTERN[1:-1], ManifestLocation(bucket="b", key=key).run_id())


@pytest.mark.parametrize(
    ("bucket", "valid"),
    [
        # S3's general purpose bucket naming rules, one case per rule
        ("cryopilot-input-123456789012", True),
        ("a.b.c", True),
        ("192.168.5.x", True),
        ("ab", False),  # 3 to 63 characters
        ("a" * 64, False),
        ("Bad_Bucket", False),  # lowercase letters, digits, '.' and '-'
        ("-ab", False),  # begins and ends with a letter or digit
        ("ab-", False),
        ("a..b", False),  # no two adjacent periods
        ("192.168.5.4", False),  # not formatted as an IP address
        ("xn--abc", False),  # reserved prefixes
        ("sthree-abc", False),
        ("amzn-s3-demo-abc", False),
        ("abc-s3alias", False),  # reserved suffixes
        ("abc--ol-s3", False),
        ("abc.mrap", False),
        ("abc--x-s3", False),
        ("abc--table-s3", False),
    ],
)
def test_bucket_names_follow_s3s_rules_alone_and_in_a_folder_uri(bucket: str, valid: bool) -> None:
    assert (bucket_problem(bucket) is None) is valid
    assert (S3_FOLDER_RE.fullmatch(f"s3://{bucket}/datasets/x/") is not None) is valid
    assert (data_uri_problem(f"s3://{bucket}/datasets/x/") is None) is valid
