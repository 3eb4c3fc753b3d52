"""Report: write the run's report (Markdown, HTML, timeline PNG) next to its results."""

from typing import Any, Literal

from aws_lambda_powertools.utilities.typing import LambdaContext
from cryopilot.adapters.observability import logger, tracer
from cryopilot.steps import report as reporting
from pydantic import BaseModel


class Write(BaseModel):
    action: Literal["write"]
    run_id: str


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    req = Write.model_validate(event)
    logger.append_keys(run_id=req.run_id, action=req.action)
    return reporting.write(req.run_id).model_dump(mode="json")
