"""HeadNodeBootstrap custom resource: upload this folder's bootstrap scripts and agent to S3.

This file is the handler of the delivery function, whose code is the ``headnode/`` folder itself
(``cryopilot_agent/`` and ``bootstrap/``); the work is in ``cryopilot.steps.deliver`` (the layer).
"""

from pathlib import Path
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext
from cryopilot.adapters.observability import logger
from cryopilot.steps import deliver as delivery

ROOT = Path(__file__).resolve().parent


@logger.inject_lambda_context(clear_state=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    logger.append_keys(request_type=event.get("RequestType"), logical_id=event.get("LogicalResourceId"))
    return delivery.handle(event, ROOT)
