"""StartRun: S3 / EventBridge / DataSync event → one execution per manifest version."""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext
from cryopilot.adapters.observability import logger, metrics, tracer
from cryopilot.steps.start_run import handle_event


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    outcomes = handle_event(event)
    return {"outcomes": [o.model_dump(exclude_none=True) for o in outcomes]}
