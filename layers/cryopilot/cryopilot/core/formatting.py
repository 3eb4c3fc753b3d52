"""How durations read, everywhere a person sees one (mails, reports, the CLI, the demo)."""

from __future__ import annotations


def fmt_duration(seconds: float | None) -> str:
    """``36 h 27 min``, ``2 h``, ``14 min``, ``< 1 min``; empty for None."""
    if seconds is None:
        return ""
    if 0 < seconds < 30:
        return "< 1 min"
    minutes = round(max(0.0, seconds) / 60)
    h, m = divmod(minutes, 60)
    if h and m:
        return f"{h} h {m:02d} min"
    return f"{h} h" if h else f"{m} min"
