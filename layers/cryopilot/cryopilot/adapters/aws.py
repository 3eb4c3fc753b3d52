"""boto3 clients, built lazily and cached (never at import time), so tests and the harness can
swap them or build them inside their mocks. :func:`reset` drops the cache.

On Lambda every client carries the function's own role (the runtime's credentials). The local
harness runs every function in one interpreter; it gives each invocation its own role's session
through :func:`use_sessions`, and the caches below are kept per session."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

import boto3
from botocore.config import Config

_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5})


def _default_session() -> Any:
    return None


_session: Callable[[], Any] = _default_session


def use_sessions(current: Callable[[], Any] | None) -> None:
    """Build clients from ``current()`` (a ``boto3.Session``, or None for the default one) from
    now on; None restores the default. For the local harness only: Lambda never calls this."""
    global _session
    _session = current or _default_session
    reset()


def credentials() -> Any:
    """The credentials clients are built with now (None: the default chain's), for requests
    signed by hand (the ParallelCluster API)."""
    session = _session()
    return None if session is None else session.get_credentials()


def client(service: str) -> Any:
    return _client(service, _session())


@cache
def _client(service: str, session: Any) -> Any:
    return (session or boto3).client(service, config=_CONFIG)


_on_reset: list[Callable[[], None]] = []


def on_reset(clear: Callable[[], None]) -> None:
    """Have :func:`reset` call ``clear`` too (for other per-container caches)."""
    _on_reset.append(clear)


def cached_factory[F: Callable[..., Any]](fn: F) -> F:
    """Cache a client factory like :func:`client` (per session), and clear it with :func:`reset`."""

    @cache
    def made(session: Any, *args: Any) -> Any:
        return fn(*args)

    def wrapped(*args: Any) -> Any:
        return made(_session(), *args)

    wrapped.__doc__ = fn.__doc__
    wrapped.cache_clear = made.cache_clear  # type: ignore[attr-defined]
    on_reset(made.cache_clear)
    return wrapped  # type: ignore[return-value]


def reset() -> None:
    """Forget every cached client (tests and the harness call this when endpoints change)."""
    _client.cache_clear()
    _resource.cache_clear()
    for clear in _on_reset:
        clear()


def resource(service: str) -> Any:
    return _resource(service, _session())


@cache
def _resource(service: str, session: Any) -> Any:
    return (session or boto3).resource(service, config=_CONFIG)
