"""The EventBridge events StartRun reads, as Powertools' parser models.

S3's ``Object Created`` is Powertools' :class:`S3EventNotificationEventBridgeModel`, narrowed to
that detail type; DataSync's ``Task Execution State Change`` has no Powertools model, so it is
Powertools' :class:`EventBridgeModel` with a detail model of ours. (S3's own notification,
``Records[]``, is Powertools' ``S3Model`` as it is.)
"""

from typing import Any, Literal

from aws_lambda_powertools.utilities.parser.models import (
    EventBridgeModel,
    S3EventNotificationEventBridgeDetailModel,
    S3EventNotificationEventBridgeModel,
    S3EventNotificationObjectModel,
)
from pydantic import BaseModel, Field, model_validator


class S3CreatedObject(S3EventNotificationObjectModel):
    """AWS spells the object's ETag ``etag``; moto's S3→EventBridge event says ``eTag``. The
    harness hands the Lambda AWS's spelling (it rewrites moto's event before delivering it); a
    moto-shaped event that reaches this model anyway keeps its ETag instead of parsing with an
    empty one (the ETag is the run's identity when the bucket is not versioned)."""

    @model_validator(mode="before")
    @classmethod
    def _moto_spelling(cls, data: Any) -> Any:
        if isinstance(data, dict) and "etag" not in data and "eTag" in data:
            return {**data, "etag": data["eTag"]}
        return data


class S3ObjectCreatedDetail(S3EventNotificationEventBridgeDetailModel):
    object: S3CreatedObject


class S3ObjectCreatedEvent(S3EventNotificationEventBridgeModel):
    source: Literal["aws.s3"]
    detail_type: Literal["Object Created"] = Field(alias="detail-type")
    detail: S3ObjectCreatedDetail


class DataSyncDetail(BaseModel):
    State: str


class DataSyncEvent(EventBridgeModel):
    source: Literal["aws.datasync"]
    detail_type: Literal["DataSync Task Execution State Change"] = Field(alias="detail-type")
    #: the task execution's ARN first
    resources: list[str] = Field(min_length=1)
    detail: DataSyncDetail
