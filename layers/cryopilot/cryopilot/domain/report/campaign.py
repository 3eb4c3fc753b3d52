"""A campaign's page: every run of the campaign, one row each, and a chart of resolution and time per
compound. The Report step writes it (``campaigns/<campaign>/campaign.{md,html,png}`` in the results
bucket) each time a run of the campaign writes its report; ``cryopilot campaign NAME`` prints the
same rows."""

import html
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from cryopilot.core.formatting import fmt_duration
from cryopilot.domain.campaign import final_particles, median, time_to_structure
from cryopilot.domain.record import RunRecord
from cryopilot.domain.report.png import render_campaign_png


class CampaignRow(BaseModel):
    run_id: str
    compound: str | None = None
    dataset: str | None = None
    status: str
    started: datetime | None = None
    preset: str | None = None
    resolution_A: float | None = None
    particles: int | None = None
    time_to_structure_seconds: float | None = None
    cost_usd: float | None = None
    map_uri: str | None = None
    report_uri: str | None = None
    reference: bool = False
    problems: list[str] = []


def rows_for(
    runs: Sequence[RunRecord], *, results_bucket: str, reference_run: str | None
) -> list[CampaignRow]:
    """One row per run, in the order given (oldest first)."""
    rows = []
    for run in runs:
        results = run.results or {}
        map_key = next((f.get("key") for f in results.get("files") or [] if f.get("kind") == "map"), None)
        started = datetime.fromtimestamp(run.started_epoch, tz=UTC) if run.started_epoch else None
        rows.append(
            CampaignRow(
                run_id=run.run_id,
                compound=run.compound,
                dataset=run.dataset,
                status=run.status,
                started=started,
                preset=run.preset,
                resolution_A=run.resolution_A,
                particles=final_particles(run),
                time_to_structure_seconds=time_to_structure(run),
                cost_usd=run.cost_usd,
                map_uri=f"s3://{results_bucket}/{map_key}" if map_key else None,
                report_uri=(run.report or {}).get("html"),
                reference=run.run_id == reference_run,
                problems=list((run.repeat_verdict or {}).get("problems") or []),
            )
        )
    return rows


def _cells(row: CampaignRow) -> list[str]:
    return [
        row.compound or "—",
        row.started.strftime("%Y-%m-%d") if row.started else "—",
        row.status + (" (reference)" if row.reference else "") + (" ⚠" if row.problems else ""),
        row.preset or "—",
        f"{row.resolution_A:.2f} Å" if row.resolution_A is not None else "—",
        f"{row.particles:,}" if row.particles is not None else "—",
        fmt_duration(row.time_to_structure_seconds) if row.time_to_structure_seconds is not None else "—",
        f"${row.cost_usd:,.0f}" if row.cost_usd is not None else "—",
    ]


HEADERS = ["compound", "date", "status", "preset", "resolution", "particles", "time to structure", "cost"]


def summary(rows: Sequence[CampaignRow]) -> list[str]:
    done = [r for r in rows if r.status == "SUCCEEDED"]
    res = median([r.resolution_A for r in done])
    tts = median([r.time_to_structure_seconds for r in done])
    parts = [f"{len(rows)} run(s), {len(done)} succeeded"]
    if res is not None:
        parts.append(f"median resolution {res:.2f} Å")
    if tts is not None:
        parts.append(f"median time to structure {fmt_duration(tts)}")
    return parts


def render_text(campaign: str, rows: Sequence[CampaignRow], reference: dict[str, Any] | None) -> str:
    """The rows as a plain-text table (the CLI)."""
    table = [HEADERS, *(_cells(r) for r in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADERS))]
    out = [f"campaign {campaign}: " + ", ".join(summary(rows))]
    if reference:
        out.append(f"reference: run {reference.get('run_id')} ({reference.get('folder_uri')})")
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in table]
    for r in rows:
        out += [f"  {r.compound or r.run_id}: {p}" for p in r.problems]
        links = [f"map {r.map_uri}" if r.map_uri else "", f"report {r.report_uri}" if r.report_uri else ""]
        if any(links):
            out.append(f"  {r.run_id}: " + "; ".join(x for x in links if x))
    return "\n".join(out) + "\n"


def render_markdown(campaign: str, rows: Sequence[CampaignRow], reference: dict[str, Any] | None) -> str:
    out = [f"# Campaign {campaign}", "", "; ".join(summary(rows)), ""]
    if reference:
        out += [f"Reference: run {reference.get('run_id')}, `{reference.get('folder_uri')}`", ""]
    out += ["| " + " | ".join([*HEADERS, "map", "report"]) + " |", "|" + "---|" * (len(HEADERS) + 2)]
    for r in rows:
        links = [
            f"[map]({r.map_uri})" if r.map_uri else "—",
            f"[report]({r.report_uri})" if r.report_uri else "—",
        ]
        out.append("| " + " | ".join([*(c.replace("|", "\\|") for c in _cells(r)), *links]) + " |")
    problems = [f"- {r.compound or r.run_id}: {p}" for r in rows for p in r.problems]
    if problems:
        out += ["", "## Warnings", "", *problems]
    out += ["", "![resolution and time per compound](campaign.png)", ""]
    return "\n".join(out)


def render_html(campaign: str, rows: Sequence[CampaignRow], reference: dict[str, Any] | None) -> str:
    h = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Campaign {h(campaign)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px}.warn{color:#b00}</style>",
        "</head><body>",
        f"<h1>Campaign {h(campaign)}</h1>",
        f"<p>{h('; '.join(summary(rows)))}</p>",
    ]
    if reference:
        out.append(
            f"<p>Reference: run {h(str(reference.get('run_id')))},"
            f" <code>{h(str(reference.get('folder_uri')))}</code></p>"
        )
    out.append(
        "<table><thead><tr>"
        + "".join(f"<th>{h(c)}</th>" for c in [*HEADERS, "map", "report"])
        + "</tr></thead><tbody>"
    )
    for r in rows:
        links = [
            f'<a href="{h(r.map_uri)}">map</a>' if r.map_uri else "—",
            f'<a href="{h(r.report_uri)}">report</a>' if r.report_uri else "—",
        ]
        out.append(
            "<tr>"
            + "".join(f"<td>{h(c)}</td>" for c in _cells(r))
            + "".join(f"<td>{c}</td>" for c in links)
            + "</tr>"
        )
    out.append("</tbody></table>")
    problems = [f"{r.compound or r.run_id}: {p}" for r in rows for p in r.problems]
    if problems:
        out += ["<h2>Warnings</h2><ul>", *(f'<li class="warn">{h(p)}</li>' for p in problems), "</ul>"]
    out += ['<p><img src="campaign.png" alt="resolution and time per compound"></p>', "</body></html>"]
    return "\n".join(out)


def render_all(
    campaign: str, rows: Sequence[CampaignRow], reference: dict[str, Any] | None
) -> dict[str, bytes]:
    """The page's files: ``campaign.md``, ``campaign.html`` and ``campaign.png``."""
    points = [
        (r.compound or r.run_id, r.resolution_A, r.time_to_structure_seconds)
        for r in rows
        if r.status == "SUCCEEDED"
    ]
    return {
        "campaign.md": render_markdown(campaign, rows, reference).encode("utf-8"),
        "campaign.html": render_html(campaign, rows, reference).encode("utf-8"),
        "campaign.png": render_campaign_png(campaign, points),
    }
