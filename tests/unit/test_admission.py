"""Admission (MaxConcurrentRuns): slots taken, refused and released once, the queue kept oldest
first, against moto's DynamoDB and Step Functions (executions there stay RUNNING until stopped).

The harness runs one handler at a time, so the races between concurrent Lambda invocations are
played here step by step: another invocation changes the admission item between a read and the
conditional update that follows it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from cryopilot.adapters import admission, runs
from cryopilot_sim.template import function_environment, load_template
from moto import mock_aws

REGION = "us-east-1"
TABLE = "runs-admission-test"


@pytest.fixture
def sfn_arn(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    from cryopilot.adapters import aws
    from cryopilot.adapters.settings import get_settings

    with mock_aws():
        ddb = boto3.client("dynamodb", region_name=REGION)
        ddb.create_table(
            TableName=TABLE,
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
        )
        role = boto3.client("iam", region_name=REGION).create_role(
            RoleName="sfn", AssumeRolePolicyDocument="{}"
        )["Role"]["Arn"]
        definition = {"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}}
        arn = boto3.client("stepfunctions", region_name=REGION).create_state_machine(
            name="cryopilot-test-run", definition=json.dumps(definition), roleArn=role
        )["stateMachineArn"]
        monkeypatch.setenv("CRYOPILOT_RUNS_TABLE", TABLE)
        monkeypatch.setenv("CRYOPILOT_STATE_MACHINE_ARN", arn)
        monkeypatch.setenv("CRYOPILOT_MAX_CONCURRENT_RUNS", "2")
        get_settings.cache_clear()
        aws.reset()
        yield arn
        aws.reset()


def _set_limit(monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    from cryopilot.adapters.settings import get_settings

    monkeypatch.setenv("CRYOPILOT_MAX_CONCURRENT_RUNS", str(limit))
    get_settings.cache_clear()


def _queued_run(run_id: str, **fields: Any) -> None:
    """A run record as StartRun leaves it for a run that waits."""
    runs.store().create_run(run_id, start_input=json.dumps({"manifest": {"key": run_id}}), **fields)
    admission.mark_waiting(run_id)
    assert admission.enqueue(run_id) == "queued"


def _executions(arn: str) -> dict[str, str]:
    sfn = boto3.client("stepfunctions", region_name=REGION)
    return {e["name"]: e["status"] for e in sfn.list_executions(stateMachineArn=arn)["executions"]}


def _end(sfn_arn: str, run_id: str, status: str = "SUCCEEDED") -> dict[str, Any]:
    return {"stateMachineArn": sfn_arn, "name": run_id, "status": status}


# ------------------------------------------------------------------ slots and queue
def test_slots_are_taken_up_to_the_limit_and_released_exactly_once(sfn_arn: str) -> None:
    assert admission.admit("a", 2) == "admitted"
    assert admission.admit("b", 2) == "admitted"
    assert admission.admit("c", 2) == "refused"
    assert admission.admit("a", 2) == "already_admitted"
    assert admission.read().holders == {"a", "b"}

    assert admission.release("a") is True
    assert admission.release("a") is False, "a repeated end event must not free a second slot"
    assert admission.release("never-admitted") is False
    assert admission.read().active == 1
    assert admission.admit("c", 2) == "admitted"
    assert admission.admit("d", 2) == "refused"


def test_a_new_run_never_overtakes_a_waiting_one(sfn_arn: str) -> None:
    assert admission.admit("a", 1) == "admitted"
    assert admission.admit("b", 1) == "refused"
    assert admission.enqueue("b") == "queued"
    assert admission.release("a")
    # a slot is free, but b waits: c queues behind it
    assert admission.admit("c", 1) == "refused"
    assert admission.enqueue("c") == "queued"
    assert admission.read().queue == ["b", "c"]
    assert admission.take_next(1) == "b"
    assert admission.take_next(1) is None, "no slot left for c"
    assert admission.read().position("c") == 1


def test_queueing_is_idempotent(sfn_arn: str) -> None:
    assert admission.admit("a", 1) == "admitted"
    assert admission.enqueue("b") == "queued"
    assert admission.enqueue("b") == "already_queued"
    assert admission.admit("b", 1) == "already_queued"
    assert admission.enqueue("a") == "already_admitted"
    assert admission.read().queue == ["b"]


def test_a_failed_start_gives_the_slot_back_and_keeps_the_runs_turn(sfn_arn: str) -> None:
    for run_id in ("a", "b"):
        admission.enqueue(run_id)
    assert admission.take_next(1) == "a"
    assert admission.requeue("a") is True
    state = admission.read()
    assert state.queue == ["a", "b"]
    assert state.holders == set()
    assert admission.requeue("a") is False


# ------------------------------------------------------------------ races, step by step
def _after_first_read(monkeypatch: pytest.MonkeyPatch, other: Callable[[], Any]) -> None:
    """Another invocation runs ``other`` right after this one's next read of the admission item,
    before the conditional update this read chose."""
    real_read = admission.read
    pending = [other]

    def read() -> admission.AdmissionState:
        state = real_read()
        if pending:
            pending.pop()()
        return state

    monkeypatch.setattr(admission, "read", read)


def test_two_invocations_starting_waiting_runs_at_once_never_exceed_the_limit(
    sfn_arn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert admission.admit("a", 2) == "admitted"
    for run_id in ("w1", "w2"):
        admission.enqueue(run_id)
    # both read one free slot with w1 at the head; the other one takes it first
    _after_first_read(monkeypatch, lambda: admission.take_next(2))
    assert admission.take_next(2) is None
    state = admission.read()
    assert state.holders == {"a", "w1"}
    assert state.queue == ["w2"]


def test_a_slot_freed_while_start_run_queues_its_run_is_not_lost(
    sfn_arn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """StartRun is refused (no slot), then, before it queues the run, the only active run ends and
    its release finds nobody waiting: StartRun itself must start the run it just queued."""
    from cryopilot.domain.location import ManifestLocation
    from cryopilot.steps import start_run as startrun

    _set_limit(monkeypatch, 1)
    assert admission.admit("a", 1) == "admitted"
    real_enqueue = admission.enqueue

    def enqueue(run_id: str) -> admission.Queued:
        assert admission.finish(_end(sfn_arn, "a")) == admission.EndResult(slot_released=True)
        return real_enqueue(run_id)

    monkeypatch.setattr(admission, "enqueue", enqueue)
    location = ManifestLocation(bucket="in", key="datasets/X/cryopilot.yaml", version_id="v1")
    outcome = startrun.start_for_manifest(location, trigger="eventbridge-s3")
    assert outcome.status == "started"
    assert _executions(sfn_arn) == {outcome.run_id: "RUNNING"}
    assert admission.read().holders == {outcome.run_id}


def test_a_repeated_event_for_a_waiting_run_queues_nothing_more(sfn_arn: str) -> None:
    from cryopilot.domain.location import ManifestLocation
    from cryopilot.steps import start_run as startrun

    assert admission.admit("a", 2) == "admitted"
    assert admission.admit("b", 2) == "admitted"
    location = ManifestLocation(bucket="in", key="datasets/X/cryopilot.yaml", version_id="v1")
    first = startrun.start_for_manifest(location, trigger="eventbridge-s3")
    assert first.status == "queued"
    assert first.queue_position == 1
    again = startrun.start_for_manifest(location, trigger="s3-notification")
    assert again.status == "duplicate"
    assert again.run_id == first.run_id
    assert admission.read().queue == [first.run_id]
    assert _executions(sfn_arn) == {}
    record = runs.store().get_run(str(first.run_id))
    assert record is not None
    assert record.status == "QUEUED"
    assert record.current_step == admission.WAITING_STEP
    assert record.start_input is not None
    assert json.loads(record.start_input)["manifest"]["version_id"] == "v1"


# ------------------------------------------------------------------ ends of executions, the janitor
def test_every_end_releases_once_and_starts_the_oldest_waiting_run(sfn_arn: str) -> None:
    for run_id in ("a", "b"):
        assert admission.admit(run_id, 2) == "admitted"
    for run_id in ("w1", "w2", "w3"):
        _queued_run(run_id)

    assert admission.finish(_end(sfn_arn, "a", "SUCCEEDED")) == admission.EndResult(
        slot_released=True, started=["w1"]
    )
    # the same event again (EventBridge delivers at least once): nothing more
    assert admission.finish(_end(sfn_arn, "a", "SUCCEEDED")) == admission.EndResult()
    # another state machine's execution, or one still running: ignored
    assert admission.finish({**_end(sfn_arn, "b"), "stateMachineArn": sfn_arn + "-other"}) == (
        admission.EndResult()
    )
    assert admission.finish(_end(sfn_arn, "b", "RUNNING")) == admission.EndResult()
    assert admission.finish(_end(sfn_arn, "b", "ABORTED")).started == ["w2"]

    assert _executions(sfn_arn) == {"w1": "RUNNING", "w2": "RUNNING"}
    state = admission.read()
    assert state.holders == {"w1", "w2"}
    assert state.queue == ["w3"]
    record = runs.store().get_run("w1")
    assert record is not None
    assert record.current_step == admission.STARTING_STEP
    assert record.admitted_at


def test_a_run_cancelled_while_waiting_is_dropped_not_started(sfn_arn: str) -> None:
    assert admission.admit("a", 2) == "admitted"
    assert admission.admit("b", 2) == "admitted"
    _queued_run("cancelled")
    _queued_run("next")
    runs.store().update_run("cancelled", status="CANCELLED")
    assert admission.finish(_end(sfn_arn, "a")).started == ["next"]
    assert "cancelled" not in _executions(sfn_arn)
    assert admission.read().queue == []


def test_withdraw_takes_a_cancelled_run_out_of_the_queue_even_as_the_queue_moves(sfn_arn: str) -> None:
    assert admission.admit("a", 1) == "admitted"
    for run_id in ("w1", "w2", "w3"):
        admission.enqueue(run_id)

    class MovingTable:
        """The run table, where another invocation takes the queue's head right after the first
        read: the index that read chose no longer holds the run, and the condition refuses it."""

        def __init__(self) -> None:
            self.real = runs.table()
            self.reads = 0

        def get_item(self, **kwargs: Any) -> Any:
            item = self.real.get_item(**kwargs)
            self.reads += 1
            if self.reads == 1:
                assert admission.release("a")
                assert admission.take_next(1) == "w1"
            return item

        def update_item(self, **kwargs: Any) -> Any:
            return self.real.update_item(**kwargs)

    table = MovingTable()
    assert admission.withdraw("w3", table) == 2, "its place once the queue moved"
    assert table.reads == 2
    assert admission.read().queue == ["w2"]
    assert admission.withdraw("w3") is None, "withdrawing twice changes nothing"
    assert admission.withdraw("w1") is None, "a run holding a slot is not in the queue"
    assert admission.read() == admission.AdmissionState(holders={"w1"}, queue=["w2"])


def test_janitor_releases_lost_ends_restarts_lost_starts_and_drains_the_queue(
    sfn_arn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _set_limit(monkeypatch, 4)
    sfn = boto3.client("stepfunctions", region_name=REGION)
    now = 1_800_000_000.0
    # "over": its end event never came; "lost": admitted long ago, its start never happened;
    # "fresh": admitted a moment ago, its starter is still at work; "running": left alone
    for run_id in ("over", "lost", "fresh", "running"):
        runs.store().create_run(run_id, start_input=json.dumps({"manifest": {"key": run_id}}))
        assert admission.admit(run_id, 4) == "admitted"
    runs.store().update_run("lost", admitted_epoch=now - 3600)
    runs.store().update_run("fresh", admitted_epoch=now - 10)
    for run_id in ("over", "running"):
        admission.start_execution(run_id, {"manifest": {"key": run_id}})
    sfn.stop_execution(executionArn=admission.execution_arn("over"))
    _queued_run("w1")

    report = admission.reconcile(now=now)
    assert report.released == ["over"]
    assert report.restarted == ["lost"]
    assert report.started == ["w1"]
    assert (report.active, report.waiting) == (4, 0)
    assert admission.read().holders == {"lost", "fresh", "running", "w1"}
    assert _executions(sfn_arn) == {
        "over": "ABORTED",
        "lost": "RUNNING",
        "running": "RUNNING",
        "w1": "RUNNING",
    }

    again = admission.reconcile(now=now)
    assert not again.acted


# ------------------------------------------------------------------ the template
def test_template_declares_max_concurrent_runs_and_routes_every_end_to_cleanup() -> None:
    tpl = load_template()
    param = tpl["Parameters"]["MaxConcurrentRuns"]
    assert param["Type"] == "Number"
    assert param["Default"] == 10
    assert param["MinValue"] == 1
    assert function_environment(tpl)["CRYOPILOT_MAX_CONCURRENT_RUNS"] == {"Ref": "MaxConcurrentRuns"}
    cleanup = tpl["Resources"]["CleanupFunction"]["Properties"]
    statuses = set()
    for event in cleanup["Events"].values():
        if event["Type"] == "EventBridgeRule":
            statuses |= set(event["Properties"]["Pattern"]["detail"]["status"])
    assert statuses == {"SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"}
    actions = {
        action
        for policy in cleanup["Policies"]
        if isinstance(policy, dict) and "Statement" in policy
        for statement in policy["Statement"]
        for action in statement["Action"]
    }
    assert "states:StartExecution" in actions


def _throttled(*args: Any, **kwargs: Any) -> bool:
    from botocore.exceptions import ClientError

    raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "slow down"}}, "StartExecution")


def test_a_start_that_fails_gives_the_slot_back_and_the_retry_starts_the_run(
    sfn_arn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from botocore.exceptions import ClientError
    from cryopilot.domain.location import ManifestLocation
    from cryopilot.steps import start_run as startrun

    location = ManifestLocation(bucket="in", key="datasets/X/cryopilot.yaml", version_id="v1")
    with monkeypatch.context() as m:
        m.setattr(admission, "start_execution", _throttled)
        with pytest.raises(ClientError):
            startrun.start_for_manifest(location, trigger="eventbridge-s3")
    assert admission.read().holders == set(), "no slot held by a run that did not start"
    record = runs.store().get_run(location.run_id())
    assert record is not None
    assert (record.admitted_at, record.admitted_epoch, record.current_step) == (None, None, "queued")
    # EventBridge retries the event
    assert startrun.start_for_manifest(location, trigger="eventbridge-s3").status == "started"
    assert admission.read().holders == {location.run_id()}


def test_a_waiting_run_whose_start_fails_keeps_its_turn(
    sfn_arn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from botocore.exceptions import ClientError

    assert admission.admit("a", 2) == "admitted"
    assert admission.admit("b", 2) == "admitted"
    _queued_run("w1")
    _queued_run("w2")
    with monkeypatch.context() as m:
        m.setattr(admission, "start_execution", _throttled)
        with pytest.raises(ClientError):
            admission.finish(_end(sfn_arn, "a"))
    state = admission.read()
    assert (state.holders, state.queue) == ({"b"}, ["w1", "w2"])
    record = runs.store().get_run("w1")
    assert record is not None
    assert record.current_step == admission.WAITING_STEP
    # the next pass (the janitor's, or the next end's) starts it first
    assert admission.start_queued() == ["w1"]
