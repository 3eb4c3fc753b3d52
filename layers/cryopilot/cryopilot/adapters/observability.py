"""Logger, Tracer and Metrics: created once here, used by every handler in the same order.

``@logger.inject_lambda_context`` → ``@tracer.capture_lambda_handler`` → ``@metrics.log_metrics``.
"""

from __future__ import annotations

from aws_lambda_powertools import Logger, Metrics, Tracer

SERVICE = "cryopilot"

logger = Logger(service=SERVICE)
tracer = Tracer(service=SERVICE)
metrics = Metrics(service=SERVICE, namespace="cryopilot")
