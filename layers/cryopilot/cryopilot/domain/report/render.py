"""All of a run's report files at once."""

from __future__ import annotations

from cryopilot.domain.report.data import ReportData
from cryopilot.domain.report.html import render_html
from cryopilot.domain.report.markdown import render_markdown
from cryopilot.domain.report.png import render_gantt_png


def render_all(data: ReportData) -> dict[str, bytes]:
    """The report's files: ``report.md``, ``report.html`` and ``timeline.png``."""
    png = "timeline.png"
    return {
        "report.md": render_markdown(data).encode("utf-8"),
        "report.html": render_html(data, png_name=png).encode("utf-8"),
        png: render_gantt_png(data),
    }
