"""A report per run: Markdown, a self-contained HTML page and a PNG timeline (Gantt chart).

Pure rendering: :func:`report_data_from_run` turns a run record and its plan (as ``runs.get_run``
and ``runs.get_plan`` return them) into a :class:`ReportData`, and the ``render_*`` functions turn
that into bytes. Nothing here reads AWS or the clock; the caller stores the files wherever it likes.

The stage table has the shape of the white paper's Table 1 (stage, queue, instance, GPUs, wall
time) with a cost column: a stage's wall hours × the nodes its GPUs need × the hourly price of the
queue's instance type. Stages on the cryoSPARC master (no queue) run on the head node, which is
paid for the whole run anyway, so they carry no cost of their own.
"""

from __future__ import annotations

import html
import io
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from cryopilot.core.formatting import fmt_duration
from cryopilot.core.queues import NOMINAL_QUEUE_GPUS
from cryopilot.domain.billing import NODES_BILLED, cost_text, node_bill

__all__ = [
    "GPUS_PER_NODE",
    "MASTER_QUEUE",
    "NODES_BILLED",
    "ReportData",
    "StageRow",
    "cost_text",
    "node_bill",
    "render_all",
    "render_gantt_png",
    "render_html",
    "render_markdown",
    "report_data_from_run",
]

#: GPUs of one node of each compute queue.
GPUS_PER_NODE: dict[str, int] = dict(NOMINAL_QUEUE_GPUS)

#: The "queue" of the stages that run on the cryoSPARC master (plan ``lane`` is null).
MASTER_QUEUE = "master"

#: Lane order and colours of the timeline; other queues follow in order of appearance.
_QUEUE_ORDER = ("gpu8", "gpu4", "gpu1", MASTER_QUEUE)
_QUEUE_COLOURS = {"gpu8": "#3b6fb6", "gpu4": "#4f9d5d", "gpu1": "#e08a2c", MASTER_QUEUE: "#8c8c8c"}
_OTHER_COLOURS = ("#4a9e5c", "#9b59b6", "#c0392b", "#16a085")

_PLACEMENT_RE = re.compile(r"^\s*(?P<type>\S+)\s+in\s+(?P<subnet>subnet-[0-9a-zA-Z]+)\s*$")
_LINK_SCHEMES = ("https://", "http://")


class StageRow(BaseModel):
    """One planned stage as it ran (or did not)."""

    stage_id: str
    title: str
    queue: str = Field(description="gpu8, gpu1, ... or 'master' for stages on the cryoSPARC master")
    instance_type: str | None = None
    gpus: int = 0
    nodes: int | None = Field(default=None, description="nodes the stage's GPUs need (compute queues)")
    state: str = "pending"
    submitted_at: datetime | None = Field(
        default=None, description="when its job(s) went to Slurm: its nodes, if new, launch from here"
    )
    started_at: datetime | None = None
    completed_at: datetime | None = None
    wall_seconds: float | None = None
    cost_usd: float | None = None
    gpu_hours: float | None = Field(default=None, description="GPUs used × wall hours")
    num_particles: int | None = None
    num_micrographs: int | None = None
    resolution_A: float | None = None


class ReportData(BaseModel):
    """Everything a report shows, taken from one run record and its plan."""

    run_id: str
    dataset: str
    status: str
    preset: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    cluster_ready_at: datetime | None = None
    finished_at: datetime | None = None
    time_to_structure_seconds: float | None = None
    elapsed_seconds: float | None = Field(default=None, description="run start to finish, any status")
    resolution_A: float | None = None
    cluster_name: str | None = None
    placement: str | None = Field(default=None, description="where the cluster went, as recorded")
    subnet_id: str | None = None
    instance_types: dict[str, str] = Field(default_factory=dict, description="queue → instance type")
    placements_tried: list[str] = Field(default_factory=list, description="placements with no capacity")
    rows: list[StageRow] = Field(default_factory=list)
    decisions: list[dict[str, Any]] = Field(default_factory=list)
    cost_usd: float | None = None
    gpu_hours_paid: float | None = Field(default=None, description="GPUs of the nodes × wall hours")
    gpu_hours_busy: float | None = Field(default=None, description="GPUs used × wall hours")
    billed_usd: float | None = Field(
        default=None,
        description="the GPU nodes' bill, estimated from the stage times: launch and Slurm's idle "
        "time included (see :func:`node_bill`)",
    )
    billed_gpu_hours: float | None = Field(default=None, description="GPUs of the nodes × hours billed")
    lower_bounds: bool = Field(
        default=False,
        description="a compute stage started but has no end time: cost and GPU-hours count the others only",
    )
    error: str | None = None
    failed_at: str | None = None
    results: list[tuple[str, str]] = Field(default_factory=list)


# --- building --------------------------------------------------------------------------------------


def _when(value: Any) -> datetime | None:
    """A UTC datetime from epoch seconds or an ISO string; None for anything else."""
    if value is None or isinstance(value, bool):
        return None
    try:
        if isinstance(value, int | float):
            return datetime.fromtimestamp(float(value), tz=UTC)
        if isinstance(value, str) and value.strip():
            text = value.strip()
            try:
                return datetime.fromtimestamp(float(text), tz=UTC)
            except ValueError:
                pass
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        return None
    return None


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _int(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None else None


def _placement(run: Mapping[str, Any]) -> tuple[str | None, str | None, str | None]:
    """(label, gpu8 instance type, subnet) from the record's ``placement`` ("<type> in <subnet>")."""
    label = run.get("placement")
    if not isinstance(label, str) or not label.strip():
        return None, None, None
    m = _PLACEMENT_RE.match(label)
    if not m:
        return label, None, None
    return label, m.group("type"), m.group("subnet")


def _default_results(run: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Links to the exported results recorded by the Export step (``results.uri``, ``results.files``)."""
    results = run.get("results")
    if not isinstance(results, Mapping) or not isinstance(results.get("uri"), str):
        return []
    uri: str = results["uri"]
    links = [("Results folder", uri)]
    bucket = uri[len("s3://") :].split("/", 1)[0] if uri.startswith("s3://") else None
    for f in results.get("files") or []:
        if not isinstance(f, Mapping) or not f.get("key") or bucket is None:
            continue
        size = _int(f.get("size"))
        kind = str(f.get("kind") or "file").replace("_", " ")
        label = kind + (f" ({size:,} bytes)" if size is not None else "")
        links.append((label, f"s3://{bucket}/{f['key']}"))
    return links


def _row(
    planned: Mapping[str, Any],
    rec: Mapping[str, Any],
    instance_types: Mapping[str, str],
    prices: Callable[[str], float | None] | None,
) -> StageRow:
    stage_id = str(planned.get("id") or rec.get("id") or "?")
    title = planned.get("title") or planned.get("name") or rec.get("title") or stage_id
    lane = planned.get("queue") or planned.get("lane") or rec.get("lane")
    queue = str(lane) if lane else MASTER_QUEUE
    gpus = _int(planned.get("gpus"))
    if gpus is None:
        gpus = _int(rec.get("gpus")) or 0
    per_node = GPUS_PER_NODE.get(queue)
    nodes = max(1, math.ceil(gpus / per_node)) if per_node else None
    instance = instance_types.get(queue) if queue != MASTER_QUEUE else None
    submitted = _when(rec.get("submitted_at"))
    started = _when(rec.get("started_at"))
    completed = _when(rec.get("completed_at"))
    wall = _seconds(started, completed)
    cost: float | None = None
    if wall is not None and prices is not None and instance and nodes is not None:
        price = _number(prices(instance))
        if price is not None:
            cost = wall / 3600 * nodes * price
    return StageRow(
        stage_id=stage_id,
        title=str(title),
        queue=queue,
        instance_type=instance,
        gpus=gpus,
        nodes=nodes,
        state=str(rec.get("state") or "pending"),
        submitted_at=submitted,
        started_at=started,
        completed_at=completed,
        wall_seconds=wall,
        cost_usd=cost,
        gpu_hours=wall / 3600 * gpus if wall is not None else None,
        num_particles=_int(rec.get("num_particles")),
        num_micrographs=_int(rec.get("num_micrographs")),
        resolution_A=_number(rec.get("resolution_A")),
    )


def report_data_from_run(
    run: dict[str, Any],
    plan: list[dict[str, Any]],
    *,
    prices: Callable[[str], float | None] | None = None,
    results: Sequence[tuple[str, str]] = (),
    instance_types: Mapping[str, str] | None = None,
    idle_seconds: float | None = None,
) -> ReportData:
    """The report of ``run`` (a run record) following ``plan`` (its planned stages, in order).

    ``prices`` gives the hourly on-demand price of an instance type (None when unknown); without
    it no cost is shown. ``results`` are (label, URI) links; without them the record's exported
    results are listed. ``instance_types`` (queue → type, e.g. the stack's configured types) fills
    in the queues whose type the record does not say; the record's placement wins for gpu8.
    ``idle_seconds`` (Slurm's ScaledownIdletime) enables the estimate of the nodes' bill
    (:func:`node_bill`).
    """
    label, gpu8_type, subnet = _placement(run)
    types: dict[str, str] = {str(k): str(v) for k, v in (instance_types or {}).items() if v}
    if gpu8_type:
        types["gpu8"] = gpu8_type

    stages = run.get("stages")
    records: Mapping[str, Any] = stages if isinstance(stages, Mapping) else {}
    planned = [p for p in plan if isinstance(p, Mapping) and p.get("id")]
    seen = {str(p["id"]) for p in planned}
    # stages recorded but not planned (e.g. a record without its plan) follow the plan's
    planned += [{"id": sid} for sid in records if sid not in seen]
    rows = []
    for p in planned:
        rec = records.get(str(p["id"]))
        rows.append(_row(p, rec if isinstance(rec, Mapping) else {}, types, prices))

    created = _when(run.get("created_at"))
    started = _when(run.get("started_epoch")) or _when(run.get("started_at")) or created
    finished = _when(run.get("finished_epoch")) or _when(run.get("finished_at"))
    status = str(run.get("status") or "UNKNOWN")
    structure_end = _when(run.get("export_finished_at")) or finished
    time_to_structure = _seconds(started, structure_end) if status == "SUCCEEDED" else None

    resolution = _number(run.get("resolution_A"))
    if resolution is None:
        resolution = next((r.resolution_A for r in reversed(rows) if r.resolution_A is not None), None)

    timed = [r for r in rows if r.wall_seconds is not None]
    compute = [r for r in timed if r.nodes is not None]
    busy = sum(r.gpu_hours or 0.0 for r in timed) if timed else None
    paid = (
        sum((r.wall_seconds or 0.0) / 3600 * (r.nodes or 0) * GPUS_PER_NODE[r.queue] for r in compute)
        if compute
        else None
    )
    # no total unless every timed compute stage has a cost (a stage that started without an end
    # makes the total a lower bound: ReportData.lower_bounds)
    cost = (
        sum(r.cost_usd or 0.0 for r in compute)
        if prices is not None and compute and all(r.cost_usd is not None for r in compute)
        else None
    )

    # a compute stage that went to Slurm and has no end: its nodes' time is not known
    unended = any(
        r.nodes is not None and (r.started_at or r.submitted_at) and r.completed_at is None for r in rows
    )
    billed: tuple[float, float] | None = None
    if prices is not None and idle_seconds is not None and compute and not unended:
        held = frozenset({"gpu8"}) if run.get("layout") == "whitepaper" else frozenset()
        billed = node_bill(
            compute,
            prices=prices,
            idle_seconds=idle_seconds,
            held=held,
            held_from=_when(run.get("cluster_ready_at")),
            until=structure_end if status == "SUCCEEDED" else finished,
        )

    error_doc = run.get("error")
    error: str | None = None
    failed_at: str | None = None
    if isinstance(error_doc, Mapping):
        etype = str(error_doc.get("type") or "Error")
        error = f"{etype}: {error_doc.get('message') or 'unknown reason'}"
        step = str(error_doc.get("step") or "")
        if step:
            where = step.removeprefix("stage:")
            failed_at = next((r.title for r in rows if r.stage_id == where), where)
    elif error_doc:
        error = str(error_doc)

    decisions = [dict(d) for d in run.get("decisions") or [] if isinstance(d, Mapping)]
    tried = [
        str(t.get("label"))
        for t in run.get("placements_tried") or []
        if isinstance(t, Mapping) and t.get("label")
    ]
    return ReportData(
        run_id=str(run.get("run_id") or "?"),
        dataset=str(run.get("dataset") or run.get("run_id") or "?"),
        status=status,
        preset=str(run["preset"]) if run.get("preset") else None,
        created_at=created,
        started_at=started,
        cluster_ready_at=_when(run.get("cluster_ready_at")),
        finished_at=finished,
        time_to_structure_seconds=time_to_structure,
        elapsed_seconds=_seconds(started, finished),
        resolution_A=resolution,
        cluster_name=str(run["cluster_name"]) if run.get("cluster_name") else None,
        placement=label,
        subnet_id=subnet,
        instance_types=types,
        placements_tried=tried,
        rows=rows,
        decisions=decisions,
        cost_usd=cost,
        gpu_hours_paid=paid,
        gpu_hours_busy=busy,
        billed_usd=billed[0] if billed else None,
        billed_gpu_hours=billed[1] if billed else None,
        lower_bounds=any(
            r.nodes is not None and r.started_at is not None and r.wall_seconds is None for r in rows
        ),
        error=error,
        failed_at=failed_at,
        results=list(results) or _default_results(run),
    )


# --- formatting ------------------------------------------------------------------------------------


def _money(value: float | None) -> str:
    return f"${value:,.2f}" if value is not None else "—"


def _total_money(data: ReportData) -> str:
    if data.cost_usd is None:
        return "—"
    return ("at least " if data.lower_bounds else "") + _money(data.cost_usd)


def _hours(value: float | None) -> str:
    return f"{value:,.1f}" if value is not None else "—"


def _resolution(value: float | None) -> str:
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


def _decision_parts(decision: Mapping[str, Any]) -> tuple[str, str, str, str]:
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


def _wall_cell(row: StageRow) -> str:
    if row.wall_seconds is not None:
        return fmt_duration(row.wall_seconds)
    return row.state


def _instance_cell(row: StageRow) -> str:
    if row.queue == MASTER_QUEUE:
        return "head node"
    return row.instance_type or "—"


def _cost_cell(row: StageRow) -> str:
    return _money(row.cost_usd) if row.cost_usd is not None else "—"


def _total_wall(data: ReportData) -> float | None:
    walls = [r.wall_seconds for r in data.rows if r.wall_seconds is not None]
    return sum(walls) if walls else None


def _summary_lines(data: ReportData) -> list[tuple[str, str]]:
    """(label, value) pairs of the summary, as plain text."""
    lines: list[tuple[str, str]] = []
    at_least = "at least " if data.lower_bounds else ""
    if data.time_to_structure_seconds is not None:
        lines.append(("Time to structure", fmt_duration(data.time_to_structure_seconds)))
    elif data.elapsed_seconds is not None:
        lines.append(("Elapsed", fmt_duration(data.elapsed_seconds)))
    if data.resolution_A is not None:
        lines.append(("Resolution", f"{_resolution(data.resolution_A)} (gold-standard FSC 0.143)"))
    cost = _total_money(data) if data.cost_usd is not None else "unknown"
    if data.billed_usd is not None:
        lines.append(
            (
                "GPU nodes billed",
                f"about {_money(data.billed_usd)} for {_hours(data.billed_gpu_hours)} GPU-hours (estimated "
                "from the stage times: node launch and Slurm's idle time included; head node not included)",
            )
        )
    lines.append(("Compute cost", f"{cost} (stage wall time × nodes × hourly price; head node not included)"))
    lines.append(
        (
            "GPU-hours",
            f"{at_least}{_hours(data.gpu_hours_busy)} used, {at_least}{_hours(data.gpu_hours_paid)} paid "
            "(whole nodes)",
        )
    )
    if data.preset:
        lines.append(("Preset", data.preset))
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
    return lines


# --- Markdown --------------------------------------------------------------------------------------

_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|#])")


def _md(text: str) -> str:
    """Free text made inert in Markdown (and in table cells)."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def _md_link(label: str, uri: str) -> str:
    if uri.startswith(_LINK_SCHEMES) and not re.search(r"[\s()<>]", uri):
        return f"[{_md(label)}]({uri})"
    return f"{_md(label)}: `{uri.replace('`', '')}`"


def render_markdown(data: ReportData) -> str:
    """The report as Markdown (the timeline is ``timeline.png`` next to it)."""
    out = [
        f"# {_md(data.dataset)}: {_md(data.status)}, {_resolution(data.resolution_A)}",
        "",
        "## Summary",
        "",
        *(f"- **{label}:** {_md(value)}" for label, value in _summary_lines(data)),
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
            f"| {_md(r.title)} | {_md(r.queue)} | {_md(_instance_cell(r))} | {r.gpus} | "
            f"{_md(_wall_cell(r))} | {_cost_cell(r)} |"
        )
    out.append(
        f"| **Total** | | | | **{fmt_duration(_total_wall(data)) or '—'}** | **{_total_money(data)}** |"
    )

    if data.decisions:
        out += ["", "## Automatic decisions", ""]
        for d in data.decisions:
            stage, kind, summary, figures = _decision_parts(d)
            line = f"- **{_md(stage)}** ({_md(kind)}): {_md(summary or kind)}"
            if figures:
                line += f" ({_md(figures)})"
            out.append(line)

    if data.results:
        out += ["", "## Results", "", *(f"- {_md_link(label, uri)}" for label, uri in data.results)]

    out += ["", "## Timeline", "", "![Stage timeline](timeline.png)", ""]
    return "\n".join(out)


# --- HTML ------------------------------------------------------------------------------------------

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
    if uri.startswith(_LINK_SCHEMES):
        return f'<a href="{_h(uri)}">{_h(label)}</a>'
    return f"{_h(label)}: <code>{_h(uri)}</code>"


def render_html(data: ReportData, *, png_name: str = "timeline.png") -> str:
    """The report as one self-contained HTML page (inline CSS; the timeline is ``png_name``)."""
    status_class = re.sub(r"[^A-Za-z0-9_-]", "", data.status)
    title = f"{data.dataset}: {data.status}, {_resolution(data.resolution_A)}"
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
        f"{_h(_resolution(data.resolution_A))}</h1>",
        "<h2>Summary</h2>",
        "<dl>",
        *(f"<dt>{_h(label)}</dt><dd>{_h(value)}</dd>" for label, value in _summary_lines(data)),
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
            f"<tr><td>{_h(r.title)}</td><td>{_h(r.queue)}</td><td>{_h(_instance_cell(r))}</td>"
            f'<td class="num">{r.gpus}</td><td class="num">{_h(_wall_cell(r))}</td>'
            f'<td class="num">{_h(_cost_cell(r))}</td></tr>'
        )
    out += [
        f'<tr class="total"><td>Total</td><td></td><td></td><td></td>'
        f'<td class="num">{_h(fmt_duration(_total_wall(data)) or "—")}</td>'
        f'<td class="num">{_h(_total_money(data))}</td></tr>',
        "</tbody>",
        "</table>",
    ]

    if data.decisions:
        out += ["<h2>Automatic decisions</h2>", "<ul>"]
        for d in data.decisions:
            stage, kind, summary, figures = _decision_parts(d)
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


# --- timeline --------------------------------------------------------------------------------------


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
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    started = [r for r in data.rows if r.started_at is not None]
    firsts = [r.started_at for r in started if r.started_at is not None]
    origin = data.started_at or data.created_at
    if firsts and (origin is None or origin > min(firsts)):
        origin = min(firsts)

    title = f"{data.dataset} · {data.status}"
    if data.resolution_A is not None:
        title += f" · {_resolution(data.resolution_A)}"

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
    ax.set_ylim(-0.8, len(lanes) - 0.2)
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


def render_all(data: ReportData) -> dict[str, bytes]:
    """The report's files: ``report.md``, ``report.html`` and ``timeline.png``."""
    png = "timeline.png"
    return {
        "report.md": render_markdown(data).encode("utf-8"),
        "report.html": render_html(data, png_name=png).encode("utf-8"),
        png: render_gantt_png(data),
    }
