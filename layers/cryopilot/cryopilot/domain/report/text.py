"""Plain-text pieces the renderers share: money, hours, times, the table's cells, the summary lines.

The Markdown and HTML renderers escape what these return, each for its own format.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from cryopilot.core.formatting import fmt_duration
from cryopilot.domain.billing import NODE_LIFETIMES, NODES_BILLED, STAGE_TIME, cost_text
from cryopilot.domain.report.data import ReportData
from cryopilot.domain.report.rows import MASTER_QUEUE, StageRow

#: Link targets the renderers make clickable; any other URI (``s3://``) is shown as text.
LINK_SCHEMES = ("https://", "http://")


def _money(value: float | None) -> str:
    return f"${value:,.2f}" if value is not None else "—"


def total_money(data: ReportData) -> str:
    if data.cost_usd is None:
        return "—"
    return ("at least " if data.lower_bounds else "") + _money(data.cost_usd)


def _hours(value: float | None) -> str:
    return f"{value:,.1f}" if value is not None else "—"


def resolution_text(value: float | None) -> str:
    return f"{value:.2f} Å" if value is not None else "resolution unknown"


def _time(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if value is not None else "—"


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def decision_parts(decision: Mapping[str, Any]) -> tuple[str, str, str, str]:
    """(stage id, kind, summary, the decision's scalar numbers) as plain text."""
    stage = str(decision.get("stage_id") or "?")
    kind = str(decision.get("kind") or "decision").replace("_", " ")
    summary = str(decision.get("summary") or "")
    numbers = decision.get("numbers")
    figures = ""
    if isinstance(numbers, Mapping):
        figures = ", ".join(
            f"{str(k).replace('_', ' ')}: {_scalar(v)}"
            for k, v in numbers.items()
            if isinstance(v, str | int | float | bool)
        )
    return stage, kind, summary, figures


def wall_cell(row: StageRow) -> str:
    if row.wall_seconds is not None:
        return fmt_duration(row.wall_seconds)
    return row.state


def instance_cell(row: StageRow) -> str:
    if row.queue == MASTER_QUEUE:
        return "head node"
    return row.instance_type or "—"


def cost_cell(row: StageRow) -> str:
    return _money(row.cost_usd) if row.cost_usd is not None else "—"


def total_wall(data: ReportData) -> float | None:
    walls = [r.wall_seconds for r in data.rows if r.wall_seconds is not None]
    return sum(walls) if walls else None


def _cost_lines(data: ReportData, at_least: str) -> list[tuple[str, str]]:
    """One cost and one set of GPU-hours: the run's figure, as the run record, the mail and
    ``cryopilot status`` give it (:func:`cost_text`). The GPU nodes' estimated bill (launch and
    Slurm's idle time included) when every compute stage has an end, else the stages' own run
    time; the stage table's costs are always the latter, so the summary says how they differ."""
    if data.billed_usd is not None:
        basis = NODE_LIFETIMES if data.billed_from_nodes else NODES_BILLED
        cost = cost_text(data.billed_usd, basis) + "; head node not included"
        if data.cost_usd is not None:
            cost += (
                f". The stages' own run time, in the table below, comes to {_money(data.cost_usd)};"
                " the rest is node launch and Slurm's idle time"
            )
        paid = data.billed_gpu_hours
    elif data.cost_usd is not None:
        cost = cost_text(data.cost_usd, STAGE_TIME) + "; head node not included"
        paid = data.gpu_hours_paid
    else:
        cost, paid = "unknown", data.gpu_hours_paid
    hours = f"{at_least}{_hours(paid)} paid for, {at_least}{_hours(data.gpu_hours_busy)} of them busy"
    return [("Cost", cost), ("GPU-hours", hours)]


#: Header of the report's node table (:func:`node_cells`).
NODE_HEADER = ("Node", "Queue", "Instance", "Launched", "Ended", "Hours", "Cost")


def node_cells(data: ReportData) -> list[tuple[str, ...]]:
    """One row per GPU node that ran (the nodes the run listed), as the bill counts it."""
    return [
        (
            n.node_id,
            n.queue,
            n.instance_type,
            _time(n.launched_at),
            _time(n.ended_at),
            _hours((n.ended_at - n.launched_at).total_seconds() / 3600),
            _money(n.cost_usd),
        )
        for n in data.nodes
    ]


def summary_lines(data: ReportData) -> list[tuple[str, str]]:
    """(label, value) pairs of the summary, as plain text."""
    lines: list[tuple[str, str]] = []
    at_least = "at least " if data.lower_bounds else ""
    if data.compound:
        lines.append(("Compound", data.compound))
    if data.campaign:
        lines.append(("Campaign", data.campaign))
    if data.time_to_structure_seconds is not None:
        lines.append(("Time to structure", fmt_duration(data.time_to_structure_seconds)))
    elif data.elapsed_seconds is not None:
        lines.append(("Elapsed", fmt_duration(data.elapsed_seconds)))
    if data.resolution_A is not None:
        lines.append(("Resolution", f"{resolution_text(data.resolution_A)} (gold-standard FSC 0.143)"))
    lines.extend(_cost_lines(data, at_least))
    if data.preset:
        lines.append(("Preset", data.preset + (f" ({data.preset_reason})" if data.preset_reason else "")))
    verdict = data.repeat_verdict or {}
    if verdict:
        ref = verdict.get("reference_resolution_A")
        lines.append(("Reference", f"{resolution_text(ref)}" if ref is not None else "resolution unknown"))
        lines.extend(("WARNING", str(problem)) for problem in verdict.get("problems") or [])
    lines.append(("Run", data.run_id))
    lines.append(("Started", _time(data.started_at)))
    lines.append(("Finished", _time(data.finished_at)))
    if data.cluster_name:
        lines.append(("Cluster", data.cluster_name))
    if data.placement:
        lines.append(("Placement", data.placement))
    if data.instance_types:
        lines.append(("Instances", ", ".join(f"{q}: {t}" for q, t in sorted(data.instance_types.items()))))
    if data.placements_tried:
        lines.append(("No capacity for", "; ".join(data.placements_tried)))
    lines.extend(("Capacity", event) for event in data.capacity_events)
    if data.spot:
        lines.append(("Spot", data.spot))
    if data.storage:
        lines.append(("Storage", data.storage))
    if data.exported:
        lines.append(("Exported", data.exported))
    return lines
