"""Where cryopilot's code reads the time.

In AWS this is the wall clock. The offline harness points it at a simulated clock so that run
records, mails and reports carry simulated times that agree with the stand-ins.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

_now: Callable[[], float] = time.time


def now() -> float:
    """Epoch seconds."""
    return _now()


def now_iso() -> str:
    return datetime.fromtimestamp(now(), tz=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def set_clock(fn: Callable[[], float] | None) -> None:
    """Use ``fn`` as the clock (``None`` restores the wall clock)."""
    global _now
    _now = fn or time.time
