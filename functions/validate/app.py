"""Validate: read and check the manifest, plan the stages, write the run record."""

from typing import Any, Literal

from aws_lambda_powertools.utilities.typing import LambdaContext
from cryopilot.adapters.observability import logger, tracer
from cryopilot.steps.validate import preflight_checks, validate
from pydantic import BaseModel


class ValidateRequest(BaseModel):
    execution_name: str
    execution_arn: str
    input: Any


class PreflightRequest(BaseModel):
    action: Literal["preflight"]
    input: Any = None


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    if event.get("action") == "preflight":  # `cryopilot preflight`: the checks only, nothing written
        return preflight_checks(PreflightRequest.model_validate(event).input)
    req = ValidateRequest.model_validate(event)
    logger.append_keys(run_id=req.execution_name)
    return validate(req.execution_name, req.execution_arn, req.input).model_dump(mode="json")
