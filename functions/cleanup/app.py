"""Cleanup: delete the cluster of an execution that ended FAILED, TIMED_OUT or ABORTED, and, on a
schedule, every cluster of this stack whose run is over or past the maximum run hours. Every end of
an execution (SUCCEEDED too) also frees the run's slot and starts the oldest waiting runs."""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext
from cryopilot.adapters.observability import log_metrics, logger, tracer
from cryopilot.steps import cleanup


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    kind, detail = cleanup.parse_event(event)
    logger.append_keys(trigger=kind)
    if kind == "execution_end":
        logger.append_keys(run_id=detail.get("name"), status=detail.get("status"))
        return cleanup.handle_execution_end(detail)
    return cleanup.handle_schedule()
