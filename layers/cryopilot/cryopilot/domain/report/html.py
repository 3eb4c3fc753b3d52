"""The report as one self-contained HTML page (inline CSS, no script)."""

from __future__ import annotations

import html
import re
from typing import Any

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

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:2em auto;
max-width:60em;padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;width:100%;font-size:.92em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f2f2f2}td.num{text-align:right;white-space:nowrap}
tr.total td{font-weight:bold;background:#fafafa}
dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dt{font-weight:bold}dd{margin:0}
.status{display:inline-block;padding:.1em .5em;border-radius:.3em;background:#ddd}
.status.SUCCEEDED{background:#cdeccd}.status.FAILED{background:#f6c8c8}
.failure{border-left:4px solid #c0392b;background:#fdf0ef;padding:.5em 1em}
.figures{color:#555;font-size:.9em}img{max-width:100%;height:auto}
"""


def _h(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _html_link(label: str, uri: str) -> str:
    if uri.startswith(LINK_SCHEMES):
        return f'<a href="{_h(uri)}">{_h(label)}</a>'
    return f"{_h(label)}: <code>{_h(uri)}</code>"


def render_html(data: ReportData, *, png_name: str = "timeline.png") -> str:
    """The report as one self-contained HTML page (inline CSS; the timeline is ``png_name``)."""
    status_class = re.sub(r"[^A-Za-z0-9_-]", "", data.status)
    title = f"{data.dataset}: {data.status}, {resolution_text(data.resolution_A)}"
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_h(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        f'<h1>{_h(data.dataset)} <span class="status {status_class}">{_h(data.status)}</span> '
        f"{_h(resolution_text(data.resolution_A))}</h1>",
        "<h2>Summary</h2>",
        "<dl>",
        *(f"<dt>{_h(label)}</dt><dd>{_h(value)}</dd>" for label, value in summary_lines(data)),
        "</dl>",
    ]
    if data.error:
        out += ["<h2>Failure</h2>", '<div class="failure">']
        if data.failed_at:
            out.append(f"<p>Failed at <strong>{_h(data.failed_at)}</strong>.</p>")
        out += [f"<p>Reason: {_h(data.error)}</p>", "</div>"]

    out += [
        "<h2>Stages</h2>",
        "<table>",
        "<thead><tr><th>Stage</th><th>Queue</th><th>Instance</th><th>GPUs</th><th>Wall time</th>"
        "<th>Cost</th></tr></thead>",
        "<tbody>",
    ]
    for r in data.rows:
        out.append(
            f"<tr><td>{_h(r.title)}</td><td>{_h(r.queue)}</td><td>{_h(instance_cell(r))}</td>"
            f'<td class="num">{r.gpus}</td><td class="num">{_h(wall_cell(r))}</td>'
            f'<td class="num">{_h(cost_cell(r))}</td></tr>'
        )
    out += [
        f'<tr class="total"><td>Total</td><td></td><td></td><td></td>'
        f'<td class="num">{_h(fmt_duration(total_wall(data)) or "—")}</td>'
        f'<td class="num">{_h(total_money(data))}</td></tr>',
        "</tbody>",
        "</table>",
    ]

    if data.nodes:
        out += [
            "<h2>GPU nodes</h2>",
            "<table>",
            "<thead><tr>" + "".join(f"<th>{_h(h)}</th>" for h in NODE_HEADER) + "</tr></thead>",
            "<tbody>",
            *(
                "<tr>"
                + "".join(
                    f'<td class="num">{_h(c)}</td>' if i >= 5 else f"<td>{_h(c)}</td>"
                    for i, c in enumerate(cells)
                )
                + "</tr>"
                for cells in node_cells(data)
            ),
            "</tbody>",
            "</table>",
        ]

    if data.decisions:
        out += ["<h2>Automatic decisions</h2>", "<ul>"]
        for d in data.decisions:
            stage, kind, summary, figures = decision_parts(d)
            item = f"<li><strong>{_h(stage)}</strong> ({_h(kind)}): {_h(summary or kind)}"
            if figures:
                item += f'<br><span class="figures">{_h(figures)}</span>'
            out.append(item + "</li>")
        out.append("</ul>")

    if data.results:
        out += [
            "<h2>Results</h2>",
            "<ul>",
            *(f"<li>{_html_link(lbl, uri)}</li>" for lbl, uri in data.results),
        ]
        out.append("</ul>")

    out += [
        "<h2>Timeline</h2>",
        f'<p><img src="{_h(png_name)}" alt="{_h("Stage timeline of " + data.dataset)}"></p>',
        "</body>",
        "</html>",
        "",
    ]
    return "\n".join(out)
