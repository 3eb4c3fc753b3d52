"""Notify: record a failure, and compose the success and failure mails (SNS sends them)."""

from typing import Annotated, Any, Literal

from aws_lambda_powertools.utilities.typing import LambdaContext
from cryopilot.adapters.observability import log_metrics, logger, tracer
from cryopilot.steps import notify as mail
from pydantic import BaseModel, Field, TypeAdapter


class RecordFailure(BaseModel):
    action: Literal["record_failure"]
    run_id: str
    error: Any = None


class Compose(BaseModel):
    action: Literal["success", "failure"]
    run_id: str


Request = TypeAdapter(Annotated[RecordFailure | Compose, Field(discriminator="action")])


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    req = Request.validate_python(event)
    logger.append_keys(run_id=req.run_id, action=req.action)
    if isinstance(req, RecordFailure):
        return mail.record_failure(req.run_id, req.error).model_dump()
    composed = mail.success_mail(req.run_id) if req.action == "success" else mail.failure_mail(req.run_id)
    return composed.model_dump()
