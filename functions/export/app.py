"""Export: copy the final map and its companions to the results bucket and verify them; for a run
stopped by a limit (``action: export_partial``), the maps made so far."""

from typing import Any, Literal

from aws_lambda_powertools.utilities.typing import LambdaContext
from cryopilot.adapters.observability import logger, tracer
from cryopilot.steps.export import export, export_partial
from pydantic import BaseModel


class ExportRequest(BaseModel):
    run_id: str
    action: Literal["export", "export_partial"] = "export"


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    req = ExportRequest.model_validate(event)
    logger.append_keys(run_id=req.run_id)
    if req.action == "export_partial":
        return export_partial(req.run_id).model_dump(mode="json")
    return export(req.run_id).model_dump(mode="json")
