"""The report as Markdown."""

from __future__ import annotations

import re

from cryopilot.core.formatting import fmt_duration
from cryopilot.domain.report.data import ReportData
from cryopilot.domain.report.text import (
    LINK_SCHEMES,
    NODE_HEADER,
    cost_cell,
    decision_parts,
    instance_cell,
    node_cells,
    resolution_text,
    summary_lines,
    total_money,
    total_wall,
    wall_cell,
)

_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|#])")


def _md(text: str) -> str:
    """Free text made inert in Markdown (and in table cells)."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def _md_link(label: str, uri: str) -> str:
    if uri.startswith(LINK_SCHEMES) and not re.search(r"[\s()<>]", uri):
        return f"[{_md(label)}]({uri})"
    return f"{_md(label)}: `{uri.replace('`', '')}`"


def render_markdown(data: ReportData) -> str:
    """The report as Markdown (the timeline is ``timeline.png`` next to it)."""
    out = [
        f"# {_md(data.dataset)}: {_md(data.status)}, {resolution_text(data.resolution_A)}",
        "",
        "## Summary",
        "",
        *(f"- **{label}:** {_md(value)}" for label, value in summary_lines(data)),
    ]
    if data.error:
        out += ["", "## Failure", ""]
        if data.failed_at:
            out.append(f"Failed at **{_md(data.failed_at)}**.")
            out.append("")
        out.append(f"Reason: {_md(data.error)}")

    out += [
        "",
        "## Stages",
        "",
        "| Stage | Queue | Instance | GPUs | Wall time | Cost |",
        "|---|---|---|--:|--:|--:|",
    ]
    for r in data.rows:
        out.append(
            f"| {_md(r.title)} | {_md(r.queue)} | {_md(instance_cell(r))} | {r.gpus} | "
            f"{_md(wall_cell(r))} | {cost_cell(r)} |"
        )
    out.append(f"| **Total** | | | | **{fmt_duration(total_wall(data)) or '—'}** | **{total_money(data)}** |")

    if data.nodes:
        out += [
            "",
            "## GPU nodes",
            "",
            "The nodes the cluster launched (ParallelCluster's describeClusterInstances), as billed.",
            "",
            "| " + " | ".join(NODE_HEADER) + " |",
            "|---|---|---|---|---|--:|--:|",
            *("| " + " | ".join(_md(c) for c in cells) + " |" for cells in node_cells(data)),
        ]

    if data.decisions:
        out += ["", "## Automatic decisions", ""]
        for d in data.decisions:
            stage, kind, summary, figures = decision_parts(d)
            line = f"- **{_md(stage)}** ({_md(kind)}): {_md(summary or kind)}"
            if figures:
                line += f" ({_md(figures)})"
            out.append(line)

    if data.results:
        out += ["", "## Results", "", *(f"- {_md_link(label, uri)}" for label, uri in data.results)]

    out += ["", "## Timeline", "", "![Stage timeline](timeline.png)", ""]
    return "\n".join(out)
