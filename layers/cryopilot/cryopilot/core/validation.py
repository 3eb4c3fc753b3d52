"""One line that says what is wrong with some input, from pydantic's validation errors.

Every refusal cryopilot gives (a manifest, an execution input, an operator's start) is one line
naming each field at fault and its rule, at most :data:`MAX_MESSAGE_CHARS` long.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

#: Longest refusal message (it goes to the run record and a mail).
MAX_MESSAGE_CHARS = 2000
#: Longest excerpt of the input (a value, a key) a message quotes.
MAX_EXCERPT_CHARS = 60


def printable(text: str) -> str:
    """``text`` on one line: characters that are not printable (newlines, controls) escaped."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def excerpt(value: Any) -> str:
    """A short quote of a value from the manifest."""
    try:
        shown = repr(value)
    except ValueError:  # an integer too long to print
        shown = f"a {type(value).__name__} too long to show"
    return clip(printable(shown), MAX_EXCERPT_CHARS)


def _describe(err: Any) -> str:
    where = ".".join(clip(printable(str(p)), MAX_EXCERPT_CHARS) for p in err["loc"]) or "(top level)"
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    elif err["type"] == "missing":
        msg = "required field is missing"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    msg = clip(printable(msg), 300)
    if "input" in err and err["type"] not in ("missing",) and not isinstance(err["input"], dict | list):
        msg = f"{msg} (got {excerpt(err['input'])})"
    return f"{where}: {msg}"


def validation_message(exc: ValidationError) -> str:
    """One message naming the fields at fault, e.g. ``acquisition.voltage_kV: Input should be …``.

    On one line and at most :data:`MAX_MESSAGE_CHARS` long: past that, the rest is counted, not listed.
    """
    problems = [_describe(e) for e in exc.errors()]
    budget = MAX_MESSAGE_CHARS - 400  # room for the source in front and the count behind
    shown: list[str] = []
    used = 0
    for problem in problems:
        if shown and used + len(problem) + 2 > budget:
            break
        shown.append(problem)
        used += len(problem) + 2
    rest = len(problems) - len(shown)
    text = "; ".join(shown) + (f"; and {rest} more problem{'s' if rest > 1 else ''}" if rest else "")
    return clip(text, MAX_MESSAGE_CHARS - 200)
