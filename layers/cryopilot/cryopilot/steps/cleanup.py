"""Nothing left running: the cleanup after an execution that ended outside the state machine's own
catches (stopped by hand, timed out, failed inside its failure path), and the scheduled janitor.

The state machine deletes the cluster on every path it controls. These two cover the rest:

* :func:`on_execution_end` — EventBridge's "Step Functions Execution Status Change" for FAILED,
  TIMED_OUT and ABORTED: when the run's cluster is not known to be deleted, request its deletion,
  close the run record and mail, once.
* :func:`janitor` — on a schedule: every cluster tagged with this stack whose run is over, has no
  record, or is older than the maximum run hours is deleted (a run still going past that limit is
  stopped first). A delete that keeps failing is retried on every pass and reported loudly once it
  failed :data:`LOUD_AFTER` times. Each pass that did something mails what it did.

Both also keep admission going (:mod:`cryopilot.adapters.admission`): every end of an execution, SUCCEEDED
included, releases the run's slot and starts the oldest waiting runs (:func:`handle_execution_end`);
each janitor pass reconciles the slots and the queue (:func:`handle_schedule`).
"""

import json
from datetime import UTC, datetime
from typing import Any, Literal

from aws_lambda_powertools.utilities.parser.models import EventBridgeModel
from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cryopilot.adapters import admission, aws, clusters, runs, snapshots
from cryopilot.adapters.observability import MetricUnit, logger, metrics
from cryopilot.adapters.settings import get_settings
from cryopilot.core import clock
from cryopilot.core.errors import ClusterNotFoundError, CryopilotError, PClusterApiError, RecordTooLargeError
from cryopilot.core.naming import CLUSTER_NAME_PREFIX, TAG_RUN_ID, TAG_STACK
from cryopilot.core.status import (
    CLUSTER_DELETE_AWAITS_CREATE,
    EXECUTION_UNFINISHED,
    RUN_STATUS_FOR_EXECUTION,
)
from cryopilot.domain import mails
from cryopilot.domain.record import RunRecord

GONE_OR_GOING = ("DELETE_IN_PROGRESS",)
#: Failed delete attempts after which the janitor's mail says ACTION NEEDED.
LOUD_AFTER = 3


class CleanupResult(BaseModel):
    run_id: str
    execution_status: str
    cluster: str | None = None
    #: ignored | no_record | no_cluster | already_deleted | delete_requested | delete_failed |
    #: delete_pending (no cluster yet, but its create may still be in flight)
    action: str
    mailed: bool = False


class JanitorAction(BaseModel):
    cluster: str
    run_id: str | None
    reason: str
    #: delete_requested | delete_retried (it had failed to delete) | deleting (already going) |
    #: stopped_and_delete_requested | delete_failed (the request itself failed)
    action: str
    attempts: int = 0
    loud: bool = False
    detail: str = ""


class SnapshotAction(BaseModel):
    snapshot_id: str
    run_id: str | None
    age_days: float
    gib: int
    deleted: bool
    detail: str = ""


class JanitorReport(BaseModel):
    checked: int = 0
    actions: list[JanitorAction] = Field(default_factory=list)
    #: snapshots found for runs whose clusters were deleted, and tagged as this stack's
    snapshots_tagged: int = 0
    snapshots: list[SnapshotAction] = Field(default_factory=list)
    mailed: bool = False


def _publish(mail: mails.Mail) -> None:
    aws.client("sns").publish(
        TopicArn=get_settings().topic_arn,
        Subject=mail.subject[:100],
        Message=mail.body,
        MessageAttributes={k: {"DataType": "String", "StringValue": v} for k, v in mail.attributes.items()},
    )


# ------------------------------------------------------------------ after an execution ended
def on_execution_end(detail: dict[str, Any]) -> CleanupResult:
    status = str(detail.get("status") or "")
    run_id = str(detail.get("name") or "")
    settings = get_settings()
    if (
        detail.get("stateMachineArn") != settings.state_machine_arn
        or status not in EXECUTION_UNFINISHED
        or not run_id
    ):
        return CleanupResult(run_id=run_id, execution_status=status, action="ignored")
    store = runs.store()
    run = store.get_run(run_id)
    if run is None:  # it ended before Validate wrote a record: no cluster can exist
        return CleanupResult(run_id=run_id, execution_status=status, action="no_record")

    if not run.is_over:
        fields: dict[str, Any] = {
            "status": RUN_STATUS_FOR_EXECUTION[status],
            "finished_at": clock.now_iso(),
            "finished_epoch": clock.now(),
        }
        if not run.error:
            fields["error"] = {
                "type": f"Execution{status.title().replace('_', '')}",
                "message": f"the execution ended {status} at {run.current_step or 'an unknown step'}",
                "step": run.current_step or "unknown",
            }
        try:
            store.update_run(run_id, **fields)
        except RecordTooLargeError as exc:  # the run must not stay RUNNING: keep what its end needs
            logger.error("run record too large; cut down", extra={"run_id": run_id, "error": str(exc)})
            store.replace_with_essentials(run_id, **fields)
        metrics.add_metric(name="RunsFailed", unit=MetricUnit.Count, value=1)

    name = run.cluster_name
    if run.cluster_deleted or not name or run.cluster_state in (None, "NOT_CREATED"):
        action = "already_deleted" if run.cluster_deleted else "no_cluster"
    else:
        try:
            step = clusters.request_deletion(run_id)
            if step.deleted:
                action = "already_deleted"
            elif step.status == CLUSTER_DELETE_AWAITS_CREATE:
                action = "delete_pending"  # its create may still be in flight: the janitor looks again
            else:
                action = "delete_requested"
        except CryopilotError as exc:
            logger.error("cleanup could not delete the cluster", extra={"run_id": run_id, "error": str(exc)})
            action = "delete_failed"

    already_told = any(m.get("kind") in ("failed", "cleanup") for m in run.mails)
    mailed = False
    if run.status == "SUCCEEDED" and action != "delete_failed":
        # it ended well and its "done" mail went out: stopped while its cluster was being deleted
        # (the deletion was asked again above), it was not "stopped", so no second mail; a
        # cluster that could not be deleted is still mailed (ACTION NEEDED)
        pass
    elif action in ("delete_requested", "delete_pending", "delete_failed") or not already_told:
        mailed = _mail_end(run, status, action)
    logger.info("execution end handled", extra={"run_id": run_id, "status": status, "action": action})
    return CleanupResult(run_id=run_id, execution_status=status, cluster=name, action=action, mailed=mailed)


def _mail_end(run: RunRecord, status: str, action: str) -> bool:
    mail = mails.execution_ended(run, status, action)
    _publish(mail)
    try:
        runs.store().append_to(
            run.run_id, "mails", {"kind": mail.kind, "subject": mail.subject, "at": clock.now_iso()}
        )
    except RecordTooLargeError as exc:  # mailed all the same
        logger.error("mail not noted on the run record", extra={"run_id": run.run_id, "error": str(exc)})
    return True


# ------------------------------------------------------------------ the janitor
def _execution_status(run: RunRecord) -> str | None:
    arn = run.execution_arn
    if not arn:
        return None
    try:
        return str(aws.client("stepfunctions").describe_execution(executionArn=arn)["status"])
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "ExecutionDoesNotExist":
            return None
        raise


def _age_hours(created: datetime | None, now: float) -> float | None:
    if created is None:
        return None
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    return (now - created.timestamp()) / 3600


def _reason_to_delete(run: RunRecord | None, execution: str | None, age_h: float | None) -> str | None:
    """Why the janitor deletes a cluster of this stack, or None when its run may keep it."""
    limit = get_settings().max_run_hours
    if run is None:
        return "no run record for its run id"
    if age_h is not None and age_h > limit:
        return f"older than the maximum run time ({age_h:.1f} h > {limit:g} h)"
    if run.is_over:
        return f"its run is over ({run.status})"
    if execution is not None and execution != "RUNNING":
        return f"its execution is over ({execution})"
    return None


def janitor(now: float | None = None) -> JanitorReport:
    settings = get_settings()
    now = clock.now() if now is None else now
    report = JanitorReport()
    listed: set[str] = set()
    for summary in clusters.api().list_clusters():
        listed.add(summary.name)
        if not summary.name.startswith(CLUSTER_NAME_PREFIX):
            continue
        try:
            info = clusters.api().describe_cluster(summary.name)
        except ClusterNotFoundError:
            continue
        except PClusterApiError as exc:
            # e.g. 400 "Cluster … belongs to an incompatible ParallelCluster major version" (another
            # stack's newer cluster: ParallelCluster 3.16 ``controllers/common.py``): not ours to
            # judge, and no reason to stop looking at the others
            logger.warning(
                "janitor cannot describe a cluster", extra={"cluster": summary.name, "error": str(exc)}
            )
            continue
        if info.tags.get(TAG_STACK) != settings.stack_name:
            continue  # another stack's cluster, or nobody's: never ours to delete
        report.checked += 1
        run_id = info.tags.get(TAG_RUN_ID)
        run = runs.store().get_run(run_id) if run_id else None
        execution = _execution_status(run) if run else None
        reason = _reason_to_delete(run, execution, _age_hours(info.creation_time, now))
        if reason is None:
            continue
        if info.status in GONE_OR_GOING:
            report.actions.append(
                JanitorAction(cluster=info.name, run_id=run_id, reason=reason, action="deleting")
            )
            continue
        action = "delete_requested"
        if run is not None and execution == "RUNNING":
            aws.client("stepfunctions").stop_execution(
                executionArn=run.execution_arn,
                error="MaxRunHoursExceeded",
                cause=f"stopped by the janitor: {reason}",
            )
            action = "stopped_and_delete_requested"
        report.actions.append(_delete(info, run_id, run, reason, action))

    closed = _close_deleted_records(listed)
    report.snapshots_tagged = _tag_new_snapshots(now)
    report.snapshots = _retire_old_snapshots(now)
    metrics.add_metric(name="ClustersAlive", unit=MetricUnit.Count, value=report.checked)
    report.mailed = _mail_janitor(report)
    logger.info(
        "janitor pass",
        extra={"checked": report.checked, "actions": len(report.actions), "records_closed": closed},
    )
    return report


#: How many recent runs the janitor looks through for deletions it asked for and saw end.
RECENT_RUNS = 200


def _close_deleted_records(listed: set[str]) -> list[str]:
    """Runs whose cluster the janitor (or a failed delete) left deleting, and which ParallelCluster
    no longer lists: the deletion finished, so the record says so (nobody else will)."""
    closed = []
    store = runs.store()
    for run in store.list_runs(limit=RECENT_RUNS):
        name = run.cluster_name
        if run.cluster_deleted or not name or name in listed:
            continue
        if run.cluster_state == CLUSTER_DELETE_AWAITS_CREATE:
            # deleted while its create was in flight, and no cluster listed: look again until the
            # create can no longer make one (a cluster that appeared is deleted by the next pass)
            if clusters.settle_pending_create(run.run_id).deleted:
                closed.append(run.run_id)
            continue
        if run.cluster_state not in ("DELETE_IN_PROGRESS", "DELETE_FAILED"):
            continue
        store.update_run(
            run.run_id,
            cluster_deleted=True,
            cluster_state="DELETED",
            cluster_deleted_at=clock.now_iso(),
        )
        closed.append(run.run_id)
    return closed


def _delete(info: Any, run_id: str | None, run: RunRecord | None, reason: str, action: str) -> JanitorAction:
    """Request the deletion (again, when it failed before); count the janitor's attempts on the
    run record, and be loud once a cluster failed to delete :data:`LOUD_AFTER` times."""
    attempts = int((run.janitor_delete_attempts if run is not None else None) or 0) + 1
    failed_before = info.status == "DELETE_FAILED"
    detail = ""
    try:
        clusters.api().delete_cluster(info.name, missing_ok=True)
        if failed_before:
            action = "delete_retried"
    except CryopilotError as exc:
        action, detail = "delete_failed", str(exc)
    if run_id and run is not None:
        fields: dict[str, Any] = {"janitor_delete_attempts": attempts}
        if action != "delete_failed":
            fields.update(cluster_state="DELETE_IN_PROGRESS", delete_requested_at=clock.now_iso())
        runs.store().update_run(run_id, **fields)
    loud = (failed_before or action == "delete_failed") and attempts >= LOUD_AFTER
    return JanitorAction(
        cluster=info.name,
        run_id=run_id,
        reason=reason,
        action=action,
        attempts=attempts,
        loud=loud,
        detail=detail,
    )


#: Days after a cluster's deletion when a /shared snapshot that still cannot be found is given up.
SNAPSHOT_SEARCH_DAYS = 2


def _tag_new_snapshots(now: float) -> int:
    """The /shared snapshots of runs whose clusters are gone, found by volume id and tagged as this
    stack's and their run's (see cryopilot.adapters.snapshots); how many."""
    settings = get_settings()
    store = runs.store()
    tagged = 0
    for run in store.list_runs(limit=RECENT_RUNS):
        if not run.cluster_deleted or not run.volume_ids or run.shared_snapshots is not None:
            continue
        asked = _parse_iso(run.delete_requested_at)
        try:
            found = snapshots.tag_snapshots_of(
                aws.client("ec2"),
                run.volume_ids,
                stack=settings.stack_name,
                run_id=run.run_id,
                dataset=run.dataset,
                not_before=None if asked is None else _as_utc(asked).timestamp(),
            )
        except ClientError as exc:
            logger.warning(
                "cannot tag the run's snapshots",
                extra={"run_id": run.run_id, "error": exc.response.get("Error", {}).get("Code")},
            )
            continue
        gone = _age_hours(_parse_iso(run.cluster_deleted_at or run.delete_requested_at), now)
        if found or (gone is not None and gone > SNAPSHOT_SEARCH_DAYS * 24):
            store.update_run(run.run_id, shared_snapshots=[s.as_record() for s in found])
            tagged += len(found)
    return tagged


def _retire_old_snapshots(now: float) -> list[SnapshotAction]:
    """This stack's snapshots older than ``SnapshotRetentionDays`` (none when it is 0), deleted."""
    days = get_settings().snapshot_retention_days
    if days <= 0:
        return []
    ec2 = aws.client("ec2")
    retired = []
    for snap in snapshots.stack_snapshots(ec2, get_settings().stack_name):
        age_days = (now - snap.started) / 86400
        if age_days <= days:
            continue
        detail = ""
        try:
            snapshots.delete_snapshot(ec2, snap.snapshot_id)
        except ClientError as exc:  # e.g. InvalidSnapshot.InUse: an AMI was made from it
            detail = str(exc.response.get("Error", {}).get("Code") or "error")
            if detail == "InvalidSnapshot.NotFound":  # another pass deleted it meanwhile
                detail = ""
        retired.append(
            SnapshotAction(
                snapshot_id=snap.snapshot_id,
                run_id=snap.run_id,
                age_days=age_days,
                gib=snap.size_gib,
                deleted=not detail,
                detail=detail,
            )
        )
    return retired


def _as_utc(when: datetime) -> datetime:
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _parse_iso(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _mail_janitor(report: JanitorReport) -> bool:
    acted = [a for a in report.actions if a.action != "deleting"]
    if not acted and not report.snapshots:
        return False
    _publish(
        mails.janitor(
            report.checked,
            acted,
            LOUD_AFTER,
            snapshots=report.snapshots,
            retention_days=get_settings().snapshot_retention_days,
        )
    )
    return True


def handle_execution_end(detail: dict[str, Any]) -> dict[str, Any]:
    """The cleanup of an ended execution (nothing for SUCCEEDED), then its slot released and the
    waiting runs started: the function's answer."""
    try:
        result = on_execution_end(detail).model_dump(mode="json")
    finally:  # whatever the cleanup met, the run's slot is released and the queue moves on
        released = admission.finish(detail).model_dump(mode="json")
    return {**result, **released}


def handle_schedule() -> dict[str, Any]:
    """The janitor's pass, then admission reconciled (``queue`` in the answer when it acted)."""
    answer = janitor().model_dump(mode="json")
    queue = admission.reconcile()
    if queue.acted:
        answer["queue"] = queue.model_dump(mode="json")
    return answer


class ExecutionEnd(BaseModel):
    """The detail of a "Step Functions Execution Status Change" event (the fields read here; the
    others are kept)."""

    model_config = ConfigDict(extra="allow")

    executionArn: str
    stateMachineArn: str
    name: str
    status: str


class ExecutionStatusChange(EventBridgeModel):
    """The EventBridge event of an execution's end (Powertools' EventBridge model)."""

    detail_type: Literal["Step Functions Execution Status Change"] = Field(alias="detail-type")
    detail: ExecutionEnd

    @field_validator("detail", mode="before")
    @classmethod
    def _decoded(cls, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value


def parse_event(event: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """("execution_end", detail) or ("schedule", {}) for the function's two triggers. An execution
    status change is parsed with Powertools' EventBridge model (and this detail model); the
    schedule's event carries nothing to read."""
    if event.get("detail-type") == "Step Functions Execution Status Change":
        try:
            change = ExecutionStatusChange.model_validate(event)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ValueError(f"malformed execution status change: {where}: {first['msg']}") from None
        return "execution_end", change.detail.model_dump()
    if event.get("detail-type") == "Scheduled Event" or event.get("source") == "aws.events":
        return "schedule", {}
    raise ValueError(f"not an event the cleanup function handles: {event.get('detail-type')!r}")
