"""The events that start a run, parsed into one shape: a manifest location.

Each event is parsed with Powertools' parser model of its kind (:mod:`cryopilot.adapters.event_models`)
and refused with a named reason (:class:`EventError`) when it is not one StartRun can use.

StartRun accepts three kinds of event:

* EventBridge ``Object Created`` from S3 (the stack's own rule);
* an S3 event notification (``Records[]``; users who wire S3 straight to the Lambda);
* EventBridge ``DataSync Task Execution State Change`` with ``State: SUCCESS`` (data moved by
  DataSync: the manifest sits at the transfer's destination prefix).
"""

import urllib.parse
from typing import Any, Literal

from aws_lambda_powertools.utilities.parser.models import S3Model
from pydantic import BaseModel, ValidationError

from cryopilot.adapters.event_models import DataSyncEvent, S3ObjectCreatedEvent
from cryopilot.core.errors import EventError
from cryopilot.domain.location import ManifestLocation


class Trigger(BaseModel):
    kind: Literal["eventbridge-s3", "s3-notification", "datasync"]
    location: ManifestLocation | None = None
    #: for DataSync: the task execution's ARN (its destination holds the manifest)
    execution_arn: str | None = None


def parse_triggers(event: Any) -> list[Trigger]:
    """Parse ``event`` into triggers. Raises :class:`EventError` for an event of no known kind."""
    if not isinstance(event, dict):
        raise EventError(f"event must be a JSON object, not {type(event).__name__}")
    if "Records" in event:
        try:
            notif = S3Model.model_validate(event)
        except ValidationError as exc:
            raise EventError(f"not an S3 event notification: {exc.errors()[0]['msg']}") from None
        except (AttributeError, TypeError):  # Powertools' record check reads a record's "s3" first
            raise EventError("not an S3 event notification: a record has no s3 object") from None
        out = []
        for rec in notif.Records:
            s3obj = rec.s3.object
            if not rec.eventName.startswith("ObjectCreated:") or s3obj is None:
                continue
            out.append(
                Trigger(
                    kind="s3-notification",
                    location=ManifestLocation(
                        bucket=rec.s3.bucket.name,
                        key=urllib.parse.unquote_plus(s3obj.key),
                        version_id=s3obj.versionId,
                        etag=s3obj.eTag,
                    ),
                )
            )
        return out
    source = event.get("source")
    detail_type = event.get("detail-type")
    if source == "aws.s3" and detail_type != "Object Created":
        raise EventError(
            f"aws.s3 event {str(detail_type)[:60]!r} announces no new manifest; only 'Object Created' does"
        )
    try:
        if source == "aws.s3":
            eb = S3ObjectCreatedEvent.model_validate(event)
            obj = eb.detail.object
            return [
                Trigger(
                    kind="eventbridge-s3",
                    location=ManifestLocation(
                        bucket=eb.detail.bucket.name,
                        key=obj.key,
                        version_id=obj.version_id,
                        etag=obj.etag or None,
                    ),
                )
            ]
        if source == "aws.datasync":
            ds = DataSyncEvent.model_validate(event)
            if ds.detail.State != "SUCCESS":
                return []
            return [Trigger(kind="datasync", execution_arn=ds.resources[0])]
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise EventError(f"{source} event is malformed: {where}: {first['msg']}") from None
    raise EventError(f"unknown event (source={source!r}); expected an S3, EventBridge S3 or DataSync event")
