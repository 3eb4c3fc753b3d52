"""Stage: submit a cryoSPARC stage through the head-node agent, or poll it."""

from typing import Annotated, Any, Literal

from aws_lambda_powertools.utilities.typing import LambdaContext
from cryopilot.adapters.observability import log_metrics, logger, tracer
from cryopilot.steps import stage as stages
from pydantic import BaseModel, Field, TypeAdapter


class Submit(BaseModel):
    action: Literal["submit"]
    run_id: str
    index: int = Field(ge=0)


class Poll(BaseModel):
    action: Literal["poll"]
    run_id: str
    stage: stages.StageStep


Request = TypeAdapter(Annotated[Submit | Poll, Field(discriminator="action")])


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    req = Request.validate_python(event)
    logger.append_keys(run_id=req.run_id, action=req.action)
    step = (
        stages.submit(req.run_id, req.index)
        if isinstance(req, Submit)
        else stages.poll(req.run_id, req.stage)
    )
    return step.model_dump(mode="json")
