"""Export: write the results onto FSx and start the data repository task that takes them to the
results bucket (``start``; ``start_partial`` for a run stopped by a limit), then ``check`` it after
each wait until it is done and every file is verified."""

from typing import Any, Literal

from aws_lambda_powertools.utilities.typing import LambdaContext
from cryopilot.adapters.observability import logger, tracer
from cryopilot.steps import export
from pydantic import BaseModel


class ExportRequest(BaseModel):
    run_id: str
    action: Literal["start", "start_partial", "check"] = "start"
    polls: int = 0
    max_polls: int = 240


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    req = ExportRequest.model_validate(event)
    logger.append_keys(run_id=req.run_id)
    if req.action == "check":
        return export.check(req.run_id, req.polls, req.max_polls).model_dump(mode="json")
    return export.start(req.run_id, partial=req.action == "start_partial").model_dump(mode="json")
