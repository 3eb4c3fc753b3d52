"""StartRun: turn a trigger into exactly one Step Functions execution per manifest version, started
at once or, beyond ``MaxConcurrentRuns``, queued until a slot frees.

Operators' runs (``cryopilot submit``) come here too, as a direct invocation, so that they take
and wait for slots like the runs that S3 starts."""

import json
from typing import Any, Literal

from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cryopilot.adapters import admission, aws, runs
from cryopilot.adapters.events import Trigger, parse_triggers
from cryopilot.adapters.execution_input import ExecutionInput
from cryopilot.adapters.manifests import head_version
from cryopilot.adapters.observability import logger
from cryopilot.adapters.settings import get_settings
from cryopilot.core.errors import EventError
from cryopilot.core.validation import excerpt, validation_message
from cryopilot.domain.location import (
    MANIFEST_NAMES,
    NAME_PATTERN,
    RUN_ID_PATTERN,
    ManifestLocation,
    check_key,
    check_version,
)

StartStatus = Literal["started", "queued", "duplicate", "ignored"]


class OperatorStart(BaseModel):
    """A direct invocation by ``cryopilot submit``: ``{"operator_start": {...}}``."""

    model_config = ConfigDict(extra="forbid")

    #: the execution's name, as :func:`cryopilot.domain.location.run_id_for` derives it
    run_id: str = Field(pattern=RUN_ID_PATTERN)
    #: the manifest's dataset name (recorded before Validate reads the manifest)
    dataset: str = Field(pattern=NAME_PATTERN)
    #: the execution input, checked here so that a bad one is refused before it waits in a queue
    input: ExecutionInput


class StartOutcome(BaseModel):
    status: StartStatus
    reason: str | None = None
    run_id: str | None = None
    execution_arn: str | None = None
    manifest: str | None = None
    #: for a run waiting for a slot: 1 = the next to start
    queue_position: int | None = None


def handle_event(event: Any) -> list[StartOutcome]:
    """Start a run for each manifest the event names. Never raises for a bad event: it is
    ignored with a reason (a Lambda that raised would be retried by its caller for nothing)."""
    if isinstance(event, dict) and "operator_start" in event:
        try:
            request = OperatorStart.model_validate(event["operator_start"])
        except ValidationError as exc:
            reason = f"operator start: {validation_message(exc)}"
            logger.warning("ignoring event", extra={"reason": reason})
            return [StartOutcome(status="ignored", reason=reason)]
        problem = _operator_input_problem(request.input)
        if problem:
            reason = f"operator start: input.{problem}"
            logger.warning("ignoring event", extra={"reason": reason})
            return [StartOutcome(status="ignored", reason=reason)]
        return [start_operator_run(request)]
    try:
        triggers = parse_triggers(event)
    except EventError as exc:
        logger.warning("ignoring event", extra={"reason": str(exc)})
        return [StartOutcome(status="ignored", reason=str(exc))]
    if not triggers:
        reason = _why_nothing_started(event)
        logger.info("ignoring event", extra={"reason": reason})
        return [StartOutcome(status="ignored", reason=reason)]
    return [_handle_trigger(t) for t in triggers]


def _operator_input_problem(execution_input: ExecutionInput) -> str | None:
    """What Validate would refuse in an operator's input before reading any manifest (a bucket
    the stack does not read, a key no manifest can have): ``field: reason``, or None."""
    foreign = execution_input.bucket_problem(get_settings().input_bucket)
    if foreign:
        return foreign
    for field, key in (
        ("manifest", execution_input.manifest.key if execution_input.manifest else None),
        (
            "manifest_s3_uri",
            (execution_input.manifest_s3_uri or "s3://").partition("//")[2].partition("/")[2],
        ),
    ):
        if key:
            try:
                check_key(key)
            except EventError as exc:
                return f"{field}: {exc}"
    if execution_input.manifest is not None:
        try:  # a version named: the rules an event's version gets (the operator names the one to run)
            _check_version_exists(execution_input.manifest)
        except EventError as exc:
            return f"manifest: {exc}"
    return None


def _why_nothing_started(event: dict[str, Any]) -> str:
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
        location = _check_location(location)
    except EventError as exc:
        logger.warning("ignoring trigger", extra={"reason": str(exc), "trigger": trigger.kind})
        return StartOutcome(status="ignored", reason=str(exc))
    return start_for_manifest(location, trigger=trigger.kind)


def _check_location(location: ManifestLocation) -> ManifestLocation:
    """Refuse a location no run can come from: another bucket, a key no manifest can have, a
    version id S3 cannot have issued, a version that does not exist (a forged or stale event).
    Nothing is claimed, queued or mailed for it. The location returned names the object's real
    version and ETag (one HeadObject), whatever the event said: an event without a version id
    (an S3 notification from an unversioned source, or ``sam local generate-event s3 put``) and
    the EventBridge event of the same upload resolve to one version, so they start one run."""
    settings = get_settings()
    if location.bucket != settings.input_bucket:
        raise EventError(f"bucket {location.bucket!r} is not this stack's input bucket")
    check_key(location.key)
    head = _check_version_exists(location, newest=True)
    return location.model_copy(
        update={
            "version_id": head.get("VersionId") or location.version_id,
            "etag": head.get("ETag") or location.etag,
        }
    )


def _check_version_exists(location: ManifestLocation, *, newest: bool = False) -> dict[str, Any]:
    """Refuse a version id S3 cannot have issued and a version (or manifest) S3 does not hold;
    with ``newest``, also a version S3 already holds a newer version of. The version's HeadObject."""
    check_version(location)
    version = f" version {excerpt(location.version_id)}" if location.version_id else ""
    try:
        head = head_version(location)
        if newest and location.version_id:
            # Events come in no promised order: one for a version that S3 already holds a newer
            # version of comes too late. Only the newest version of a folder's manifest runs.
            current = head_version(location.model_copy(update={"version_id": None})).get("VersionId")
            if current and current != location.version_id:
                raise EventError(
                    f"a newer version ({excerpt(current)}) of this manifest is in S3; only the newest"
                    " version of a folder's manifest runs"
                )
    except EventError as exc:
        raise EventError(f"{location.uri}{version}: {exc}") from None
    return head


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
    is created only if absent, Step Functions refuses a second execution of the same name for 90
    days, and after that the run's record, over, says the version has run.

    A run beyond ``MaxConcurrentRuns`` is not failed: it waits in the queue (status QUEUED) and
    starts, oldest first, when a slot frees (:mod:`cryopilot.adapters.admission`)."""
    store = runs.store()
    run_id, claimed = store.claim_manifest(location.digest(), location.run_id(), location.model_dump())
    arn = admission.execution_arn(run_id)

    def outcome(status: StartStatus, **extra: Any) -> StartOutcome:
        return StartOutcome(status=status, run_id=run_id, execution_arn=arn, manifest=location.uri, **extra)

    if not claimed and _already_run(store, run_id):
        logger.info("duplicate event for a manifest version already seen", extra={"run_id": run_id})
        return outcome("duplicate")
    # also when a retried invocation finds its own claim (the first one died before starting the
    # run): the folder's current run is this one now
    previous = store.take_folder(location.folder_digest(), run_id, location.model_dump())
    if previous is not None:
        supersede(previous, run_id, location)
    execution_input = {"manifest": location.model_dump(exclude_none=True), "trigger": trigger}
    store.create_run(
        run_id,
        dataset=location.dataset_folder,
        manifest=location.model_dump(),
        trigger=trigger,
        current_step="queued",
        execution_arn=arn,
        start_input=json.dumps(execution_input),
    )
    status, position = _admit_and_start(run_id, execution_input)
    if status == "started":
        logger.info("run started", extra={"run_id": run_id, "manifest": location.uri})
    return outcome(status, **_queue_details(status, position))


def _already_run(store: runs.RunStore, run_id: str) -> bool:
    """Whether a claimed manifest version's run exists: its execution, or, once Step Functions has
    forgotten it (a STANDARD execution's name is unique for 90 days only: then DescribeExecution
    answers ExecutionDoesNotExist), its record of a run that is over. False for a claim whose
    first invocation died before it started anything."""
    if admission.execution_status(run_id) is not None:
        return True
    record = store.get_run(run_id, ["status"])
    return record is not None and record.is_over


def supersede(old_run_id: str, new_run_id: str, location: ManifestLocation) -> None:
    """A new version of a dataset folder's manifest replaces the run of the previous one: that
    run is stopped as ``cryopilot cancel`` stops a run (its record CANCELLED with the reason
    first, out of the queue if it waits, its execution stopped). The cleanup function then
    deletes its cluster, frees its slot and mails why, once. A run already over is left alone."""
    store = runs.store()
    old = store.get_run(old_run_id, ["status", "current_step"])
    if old is None or old.is_over:
        return
    version = location.version_id or location.etag or "?"
    message = (
        f"superseded by a new version of its manifest ({location.uri}, version {version}):"
        f" run {new_run_id} replaces it"
    )
    store.mark_cancelled(
        old_run_id, {"type": "Superseded", "message": message, "step": old.current_step or "unknown"}
    )
    admission.withdraw(old_run_id)
    stopped = admission.stop_execution(old_run_id, "Superseded", message)
    logger.info(
        "run superseded by a new manifest version",
        extra={"run_id": old_run_id, "by": new_run_id, "stopped": stopped},
    )


def start_operator_run(request: OperatorStart) -> StartOutcome:
    """A run an operator submitted (``cryopilot submit``): it takes a slot like any other run, or
    waits for one. Idempotent on the run id (the CLI derives it from the manifest and input)."""
    run_id = request.run_id
    arn = admission.execution_arn(run_id)
    if admission.execution_status(run_id) is not None:
        return StartOutcome(status="duplicate", run_id=run_id, execution_arn=arn)
    earlier = runs.store().get_run(run_id, ["status"])
    if earlier is not None and earlier.is_over:
        # cancelled while it waited for a slot: the same start again neither waits nor starts
        reason = f"the run is over ({earlier.status}) and never started"
        return StartOutcome(status="duplicate", run_id=run_id, execution_arn=arn, reason=reason)
    execution_input = request.input.model_dump(mode="json", exclude_none=True, exclude_unset=True)
    runs.store().create_run(
        run_id,
        dataset=request.dataset,
        trigger="operator",
        current_step="queued",
        execution_arn=arn,
        start_input=json.dumps(execution_input),
    )
    status, position = _admit_and_start(run_id, execution_input)
    logger.info("operator run", extra={"run_id": run_id, "status": status, "queue_position": position})
    return StartOutcome(status=status, run_id=run_id, execution_arn=arn, **_queue_details(status, position))


def _queue_details(status: StartStatus, position: int | None) -> dict[str, Any]:
    """The outcome's reason and queue position for a run that waits for a slot (nothing else)."""
    if status == "queued":
        limit = get_settings().max_concurrent_runs
        return {"reason": f"waits for a free slot (MaxConcurrentRuns {limit})", "queue_position": position}
    if status == "duplicate" and position is not None:
        return {"reason": "the run waits for a free slot", "queue_position": position}
    return {}


def _admit_and_start(run_id: str, execution_input: dict[str, Any]) -> tuple[StartStatus, int | None]:
    """Take a slot and start the run's execution, or queue the run: (what happened, its place in
    the queue when it waits). The run record must exist, holding ``start_input``."""
    limit = get_settings().max_concurrent_runs
    decision: str = admission.admit(run_id, limit)
    if decision == "refused":
        admission.mark_waiting(run_id)
        decision = admission.enqueue(run_id)
    if decision == "already_queued":
        logger.info("duplicate start for a run waiting for a slot", extra={"run_id": run_id})
        return "duplicate", _position(run_id)
    if decision == "queued":
        # A slot may have freed between the refusal and the queueing: its release saw no one waiting.
        if run_id in admission.start_queued(limit):
            return "started", None
        position = _position(run_id)
        logger.info("run queued", extra={"run_id": run_id, "queue_position": position})
        return "queued", position
    # admitted by this call, or by a concurrent delivery of the same event
    admission.mark_admitted(run_id)
    try:
        started = admission.start_execution(run_id, execution_input)
    except Exception:
        if decision == "admitted":
            admission.release_failed_start(run_id)  # the event's retry takes a slot again
        raise
    if not started:
        logger.info("duplicate start raced another", extra={"run_id": run_id})
        return "duplicate", None
    return "started", None


def _position(run_id: str) -> int | None:
    return admission.read().position(run_id)
