"""Simulated clocks shared by the stand-ins and the harness.

* :class:`VirtualClock` moves only when someone sleeps on it: the harness makes the state machine's
  Wait states call :meth:`sleep`, so a 36-hour run takes no real time and every figure is exact
  and repeatable. Use it when one execution drives time (tests, the benchmark).
* :class:`ScaledClock` runs ``speed`` times faster than the wall clock: sleeps are divided by
  ``speed``. Use it when several executions run at once (the demo, concurrency tests).

Both start at ``start`` (epoch seconds) and answer :meth:`now` in simulated epoch seconds.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class VirtualClock:
    """``pace``: if set, each sleep also takes ``seconds / pace`` of wall time, so a person can
    watch a run unfold (the figures stay exact)."""

    def __init__(self, start: float = 1_767_225_600.0, *, pace: float | None = None) -> None:
        self._now = float(start)  # 2026-01-01T00:00:00Z by default
        self._lock = threading.Lock()
        self.start = float(start)
        if pace is not None and not (math.isfinite(pace) and pace > 0):
            raise ValueError(f"pace must be a positive, finite number (got {pace!r})")
        self.pace = pace

    def now(self) -> float:
        with self._lock:
            return self._now

    def sleep(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("cannot sleep a negative time")
        with self._lock:
            self._now += seconds
        if self.pace:
            time.sleep(seconds / self.pace)

    def advance(self, seconds: float) -> None:
        """Move time on without pacing."""
        if seconds < 0:
            raise ValueError("cannot go back in time")
        with self._lock:
            self._now += seconds


class ScaledClock:
    def __init__(self, speed: float, start: float = 1_767_225_600.0) -> None:
        if not (math.isfinite(speed) and speed > 0):
            raise ValueError(f"speed must be a positive, finite number (got {speed!r})")
        self.speed = float(speed)
        self.start = float(start)
        self._t0 = time.monotonic()

    def now(self) -> float:
        return self.start + (time.monotonic() - self._t0) * self.speed

    def sleep(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("cannot sleep a negative time")
        time.sleep(seconds / self.speed)
