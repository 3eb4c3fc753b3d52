"""StartRun: S3 / EventBridge / DataSync event → one execution per manifest version."""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext
from cryopilot.adapters.observability import MetricUnit, log_metrics, logger, metrics, tracer
from cryopilot.steps.start_run import handle_event


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    outcomes = handle_event(event)
    # Every run accepted counts once: it started now, or waits for a slot and starts later.
    accepted = sum(o.status in ("started", "queued") for o in outcomes)
    metrics.add_metric(name="RunsStarted", unit=MetricUnit.Count, value=accepted)
    queued = sum(o.status == "queued" for o in outcomes)
    if queued:
        metrics.add_metric(name="RunsQueued", unit=MetricUnit.Count, value=queued)
    return {"outcomes": [o.model_dump(exclude_none=True) for o in outcomes]}
