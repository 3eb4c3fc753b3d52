"""boto3 clients, built lazily and cached (never at import time), so tests and the harness can
swap them or build them inside their mocks. :func:`reset` drops the cache."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

import boto3
from botocore.config import Config

_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5})


@cache
def client(service: str) -> Any:
    return boto3.client(service, config=_CONFIG)


_on_reset: list[Callable[[], None]] = []


def on_reset(clear: Callable[[], None]) -> None:
    """Have :func:`reset` call ``clear`` too (for other per-container caches)."""
    _on_reset.append(clear)


def cached_factory[F: Callable[..., Any]](fn: F) -> F:
    """Cache a client factory like :func:`client`, and clear it with :func:`reset`."""
    wrapped = cache(fn)
    on_reset(wrapped.cache_clear)
    return wrapped  # type: ignore[return-value]


def reset() -> None:
    """Forget every cached client (tests and the harness call this when endpoints change)."""
    client.cache_clear()
    resource.cache_clear()
    for clear in _on_reset:
        clear()


@cache
def resource(service: str) -> Any:
    return boto3.resource(service, config=_CONFIG)
