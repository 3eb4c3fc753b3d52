"""Logger, Tracer and Metrics: created once here, used by every handler in the same order.

``@logger.inject_lambda_context`` → ``@tracer.capture_lambda_handler`` → ``@log_metrics`` (this
module's, on the handlers that publish metrics only).

Metrics go to CloudWatch as EMF lines on stdout (namespace ``cryopilot``, dimension ``service``;
the README lists them). Tracing is X-Ray through Powertools' Tracer when the function runs in
Lambda with tracing on (the template's ``Tracing: Active``); anywhere else (tests, the harness,
``POWERTOOLS_TRACE_DISABLED``) the Tracer gets a provider that records nothing, so the X-Ray SDK
is not even imported: its import builds two botocore clients and was a third of a cold start.
"""

from __future__ import annotations

import functools
import os
from collections.abc import AsyncGenerator, Callable, Generator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.tracing.base import BaseProvider, BaseSegment

SERVICE = "cryopilot"
NAMESPACE = "cryopilot"

#: What X-Ray instruments when tracing is on: the AWS SDK (botocore) and plain HTTP (http.client:
#: the ParallelCluster API, CloudFormation's response URL). Nothing else of X-Ray's list is used
#: here; patching all of it would import modules such as sqlite3 at every cold start.
PATCH_MODULES = ("botocore", "httplib")

_TRUE = ("1", "true", "yes", "y", "on", "t")


def tracing_enabled(env: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """Powertools' documented rule: X-Ray only inside Lambda (not under ``sam local``), unless
    ``POWERTOOLS_TRACE_DISABLED`` is true."""
    if env.get("POWERTOOLS_TRACE_DISABLED", "false").strip().lower() in _TRUE:
        return False
    return bool(env.get("LAMBDA_TASK_ROOT")) and not env.get("AWS_SAM_LOCAL")


class _NoSegment(BaseSegment):
    def close(self, end_time: int | None = None) -> None:
        return None

    def add_subsegment(self, subsegment: Any) -> None:
        return None

    def remove_subsegment(self, subsegment: Any) -> None:
        return None

    def put_annotation(self, key: str, value: Any) -> None:
        return None

    def put_metadata(self, key: str, value: Any, namespace: str = "default") -> None:
        return None

    def add_exception(self, exception: BaseException, stack: Any, remote: bool = False) -> None:
        return None


class NoTracing(BaseProvider):
    """A tracing provider that records nothing (what the X-Ray SDK does once disabled)."""

    @contextmanager
    def in_subsegment(self, name: Any = None, **kwargs: Any) -> Generator[BaseSegment, None, None]:
        yield _NoSegment()

    @asynccontextmanager
    async def in_subsegment_async(self, name: Any = None, **kwargs: Any) -> AsyncGenerator[BaseSegment, None]:
        yield _NoSegment()

    def put_annotation(self, key: str, value: Any) -> None:
        return None

    def put_metadata(self, key: str, value: Any, namespace: str = "default") -> None:
        return None

    def patch(self, modules: Sequence[str]) -> None:
        return None

    def patch_all(self) -> None:
        return None


def _tracer() -> Tracer:
    if tracing_enabled():
        return Tracer(service=SERVICE, patch_modules=PATCH_MODULES)
    return Tracer(service=SERVICE, disabled=True, auto_patch=False, provider=NoTracing())


logger = Logger(service=SERVICE)
tracer = _tracer()
metrics = Metrics(service=SERVICE, namespace=NAMESPACE)

__all__ = ["NAMESPACE", "SERVICE", "MetricUnit", "log_metrics", "logger", "metrics", "tracer"]


def log_metrics[F: Callable[..., Any]](handler: F) -> F:
    """Publish what the call added to :data:`metrics` as one EMF line when it returns or raises
    (Powertools' ``metrics.log_metrics``), and nothing for a call that added none: most calls of
    the stage, notify and cleanup functions have nothing to count (a stage polled before its
    end), and Powertools would warn about each of them."""

    @functools.wraps(handler)
    def publish(*args: Any, **kwargs: Any) -> Any:
        try:
            return handler(*args, **kwargs)
        finally:
            if metrics.metric_set:
                metrics.flush_metrics()
            else:
                metrics.clear_metrics()

    return publish  # type: ignore[return-value]
