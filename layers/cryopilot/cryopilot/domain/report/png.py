"""The report's timeline: the stages on a time axis, one lane per queue, with the GPU nodes each
queue had up (their lifetimes, as billed) drawn under its stages, as a PNG (matplotlib)."""

from __future__ import annotations

import io
import math
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from cryopilot.domain.report.data import ReportData
from cryopilot.domain.report.rows import MASTER_QUEUE, StageRow
from cryopilot.domain.report.text import resolution_text

#: Lane order and colours of the timeline; other queues follow in order of appearance.
_QUEUE_ORDER = ("gpu8", "gpu4", "gpu1", MASTER_QUEUE)
_QUEUE_COLOURS = {"gpu8": "#3b6fb6", "gpu4": "#4f9d5d", "gpu1": "#e08a2c", MASTER_QUEUE: "#8c8c8c"}
_OTHER_COLOURS = ("#4a9e5c", "#9b59b6", "#c0392b", "#16a085")


def _lanes(rows: Iterable[StageRow]) -> list[str]:
    present = list(dict.fromkeys(r.queue for r in rows))
    known = [q for q in _QUEUE_ORDER if q in present]
    return known + [q for q in present if q not in known]


def _colour(queue: str, lanes: list[str]) -> str:
    if queue in _QUEUE_COLOURS:
        return _QUEUE_COLOURS[queue]
    others = [q for q in lanes if q not in _QUEUE_COLOURS]
    return _OTHER_COLOURS[others.index(queue) % len(_OTHER_COLOURS)] if queue in others else "#555555"


def render_gantt_png(data: ReportData) -> bytes:
    """The stages on a time axis (hours since the run started), one lane per queue, as PNG bytes."""
    # matplotlib is in the Report function's own requirements, not in the shared layer (it would
    # weigh on every other function): only this function may import it, and only when called.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    started = [r for r in data.rows if r.started_at is not None]
    firsts = [r.started_at for r in started if r.started_at is not None]
    origin = data.started_at or data.created_at
    if firsts and (origin is None or origin > min(firsts)):
        origin = min(firsts)

    title = f"{data.dataset} · {data.status}"
    if data.resolution_A is not None:
        title += f" · {resolution_text(data.resolution_A)}"

    if not started or origin is None:
        fig = Figure(figsize=(10, 2), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.set_axis_off()
        ax.set_title(title, parse_math=False)
        ax.text(
            0.5, 0.5, "no stage ran", ha="center", va="center", fontsize=14, color="#666", parse_math=False
        )
        return _png(fig)

    def hours(when: datetime) -> float:
        return (when - origin).total_seconds() / 3600

    lanes = _lanes(started)
    fig = Figure(figsize=(10, 1.6 + 0.9 * len(lanes)), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    bars: list[tuple[StageRow, float, float]] = []
    for r in started:
        assert r.started_at is not None
        start = hours(r.started_at)
        if r.completed_at is not None:
            end = hours(r.completed_at)
        elif data.finished_at is not None and data.finished_at > r.started_at:
            end = hours(data.finished_at)  # failed or killed: drawn up to the run's end
        else:
            end = start
        bars.append((r, start, max(end, start)))
    right = max(end for _, _, end in bars)
    # the nodes that ran, under their queue's stages: what the bill counts, launch to end
    node_bars = [(n, hours(n.launched_at), hours(n.ended_at)) for n in data.nodes if n.queue in lanes]
    right = max([right] + [end for _, _, end in node_bars])
    for n, start, end in node_bars:
        y = len(lanes) - 1 - lanes.index(n.queue)
        ax.broken_barh(
            [(start, max(end - start, 0.0))],
            (y - 0.62, 0.1),
            facecolors="#bbbbbb",
            edgecolors=_colour(n.queue, lanes),
            linewidth=0.6,
        )
        ax.text(
            start, y - 0.56, n.instance_type, ha="left", va="top", fontsize=6, color="#555", parse_math=False
        )
    thinnest = max(right, 0.1) * 0.004  # keep instant stages visible
    per_lane: dict[str, int] = {}
    for r, start, end in bars:
        y = len(lanes) - 1 - lanes.index(r.queue)
        unfinished = r.completed_at is None
        ax.broken_barh(
            [(start, max(end - start, thinnest))],
            (y - 0.25, 0.5),
            facecolors=_colour(r.queue, lanes),
            edgecolors="#c0392b" if unfinished else "white",
            hatch="//" if unfinished else None,
            linewidth=1.0,
        )
        k = per_lane.get(r.queue, 0)
        per_lane[r.queue] = k + 1
        label = r.stage_id + (f" ({r.state})" if unfinished else "")
        ax.text(
            (start + end) / 2,
            y + (0.32 if k % 2 == 0 else -0.32),
            label,
            ha="center",
            va="bottom" if k % 2 == 0 else "top",
            fontsize=7,
            parse_math=False,
        )
    if data.cluster_ready_at is not None and data.cluster_ready_at >= origin:
        ax.axvline(hours(data.cluster_ready_at), color="#999", linestyle=":", linewidth=1)
    ax.set_yticks(range(len(lanes)), list(reversed(lanes)))
    ax.set_ylim(-1.0 if node_bars else -0.8, len(lanes) - 0.2)
    ax.set_xlim(0, max(right, 0.1) * 1.03)
    ax.set_xlabel("hours since the run started")
    ax.grid(axis="x", color="#e5e5e5", linewidth=0.8)
    ax.set_axisbelow(True)
    ax.set_title(title, parse_math=False)
    fig.tight_layout()
    return _png(fig)


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


def render_campaign_png(campaign: str, points: list[tuple[str, float | None, float | None]]) -> bytes:
    """A campaign's chart: per compound (in run order), the final resolution (Å, left axis, bars)
    and the time to structure (hours, right axis, line), as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(f"campaign {campaign}: resolution and time per compound", parse_math=False)
    if not points:
        ax.set_axis_off()
        ax.text(
            0.5, 0.5, "no run has succeeded yet", ha="center", va="center", color="#666", parse_math=False
        )
        return _png(fig)
    xs = list(range(len(points)))
    ax.bar(xs, [p[1] or 0.0 for p in points], color="#3b6fb6", width=0.5, label="resolution (Å)")
    ax.set_ylabel("resolution (Å, lower is better)")
    ax.set_xticks(xs, [p[0] for p in points], rotation=30, ha="right", fontsize=8)
    right = ax.twinx()
    # NaN leaves a gap where a run has no time to structure
    right.plot(xs, [math.nan if p[2] is None else p[2] / 3600 for p in points], "o-", color="#e08a2c")
    right.set_ylabel("time to structure (h)")
    right.set_ylim(bottom=0)
    fig.tight_layout()
    return _png(fig)
