"""StartRun: turn a trigger into exactly one Step Functions execution per manifest version."""

from __future__ import annotations

import json
from typing import Any, Literal

from botocore.exceptions import ClientError
from pydantic import BaseModel

from cryopilot import aws, runs
from cryopilot.errors import EventError
from cryopilot.manifest import MANIFEST_NAMES
from cryopilot.observability import logger
from cryopilot.settings import get_settings
from cryopilot.triggers import ManifestLocation, Trigger, check_key, parse_triggers


class StartOutcome(BaseModel):
    status: Literal["started", "duplicate", "ignored"]
    reason: str | None = None
    run_id: str | None = None
    execution_arn: str | None = None
    manifest: str | None = None


def handle_event(event: Any) -> list[StartOutcome]:
    """Start a run for each manifest the event names. Never raises for a bad event: it is
    ignored with a reason (a Lambda that raised would be retried by its caller for nothing)."""
    try:
        triggers = parse_triggers(event)
    except EventError as exc:
        logger.warning("ignoring event", extra={"reason": str(exc)})
        return [StartOutcome(status="ignored", reason=str(exc))]
    if not triggers:
        reason = _nothing_new(event)
        logger.info("ignoring event", extra={"reason": reason})
        return [StartOutcome(status="ignored", reason=reason)]
    return [_handle_trigger(t) for t in triggers]


def _nothing_new(event: dict[str, Any]) -> str:
    """Why a well-formed event started nothing (a removal, an unfinished DataSync transfer)."""
    if "Records" in event:
        names = sorted({str(r.get("eventName"))[:60] for r in event["Records"] if isinstance(r, dict)})
        if names:
            listed = ", ".join(names[:5])
            return f"S3 notification announces no new manifest ({listed}); only ObjectCreated:* does"
    elif event.get("source") == "aws.datasync":
        state = str((event.get("detail") or {}).get("State"))[:60]
        return f"DataSync task execution state is {state!r}; only SUCCESS starts a run"
    return "event announces no new manifest"


def _handle_trigger(trigger: Trigger) -> StartOutcome:
    try:
        location = trigger.location or _datasync_manifest(trigger.execution_arn or "")
        _check_location(location)
    except EventError as exc:
        logger.warning("ignoring trigger", extra={"reason": str(exc), "trigger": trigger.kind})
        return StartOutcome(status="ignored", reason=str(exc))
    return start_for_manifest(location, trigger=trigger.kind)


def _check_location(location: ManifestLocation) -> None:
    settings = get_settings()
    if location.bucket != settings.input_bucket:
        raise EventError(f"bucket {location.bucket!r} is not this stack's input bucket")
    check_key(location.key)


def _datasync_manifest(execution_arn: str) -> ManifestLocation:
    """The manifest at a DataSync transfer's destination prefix (newest version)."""
    ds = aws.client("datasync")
    # arn:aws:datasync:<region>:<account>:task/task-<id>/execution/exec-<id>: the task's ARN is the
    # part before "/execution/" (DescribeTaskExecution does not return it).
    task_arn, sep, _ = execution_arn.partition("/execution/")
    if not sep or ":datasync:" not in task_arn:
        raise EventError(f"{execution_arn!r} is not a DataSync task execution ARN")
    try:
        ds.describe_task_execution(TaskExecutionArn=execution_arn)
        dest_arn = ds.describe_task(TaskArn=task_arn)["DestinationLocationArn"]
        uri = ds.describe_location_s3(LocationArn=dest_arn)["LocationUri"]
    except ClientError as exc:
        raise EventError(f"cannot read DataSync execution {execution_arn}: {exc}") from None
    if not uri.startswith("s3://"):
        raise EventError(f"DataSync destination {uri} is not in S3")
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    prefix = prefix.strip("/")
    s3 = aws.client("s3")
    for name in MANIFEST_NAMES:
        key = f"{prefix}/{name}" if prefix else name
        try:
            head = s3.head_object(Bucket=bucket, Key=key)
        except ClientError:
            continue
        return ManifestLocation(
            bucket=bucket, key=key, version_id=head.get("VersionId"), etag=head.get("ETag")
        )
    raise EventError(f"DataSync destination {uri} holds no cryopilot manifest ({', '.join(MANIFEST_NAMES)})")


def start_for_manifest(location: ManifestLocation, *, trigger: str) -> StartOutcome:
    """Idempotent: the run id and execution name derive from the manifest version, the record
    is created only if absent and Step Functions refuses a second execution of the same name."""
    settings = get_settings()
    run_id, claimed = runs.claim_manifest(location.digest(), location.run_id(), location.model_dump())
    sfn = aws.client("stepfunctions")
    arn = _execution_arn(settings.state_machine_arn, run_id)
    if not claimed and _execution_exists(sfn, arn):
        logger.info("duplicate event for a manifest version already seen", extra={"run_id": run_id})
        return StartOutcome(status="duplicate", run_id=run_id, execution_arn=arn, manifest=location.uri)
    runs.create_run(
        run_id,
        dataset=location.dataset_folder,
        manifest=location.model_dump(),
        trigger=trigger,
        current_step="queued",
        execution_arn=arn,
    )
    execution_input = {"manifest": location.model_dump(exclude_none=True), "trigger": trigger}
    try:
        sfn.start_execution(
            stateMachineArn=settings.state_machine_arn, name=run_id, input=json.dumps(execution_input)
        )
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ExecutionAlreadyExists":
            raise
        logger.info("duplicate event raced a start", extra={"run_id": run_id})
        return StartOutcome(status="duplicate", run_id=run_id, execution_arn=arn, manifest=location.uri)
    logger.info("run started", extra={"run_id": run_id, "manifest": location.uri})
    return StartOutcome(status="started", run_id=run_id, execution_arn=arn, manifest=location.uri)


def _execution_exists(sfn: Any, arn: str) -> bool:
    try:
        sfn.describe_execution(executionArn=arn)
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "ExecutionDoesNotExist":
            return False
        raise
    return True


def _execution_arn(state_machine_arn: str, name: str) -> str:
    return state_machine_arn.replace(":stateMachine:", ":execution:") + f":{name}"
