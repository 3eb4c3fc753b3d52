"""What a report shows: :class:`ReportData`, taken from a run record and its plan by
:func:`report_data_from_run`.
"""

import math
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from cryopilot.core.queues import GPU_QUEUES
from cryopilot.core.spot import is_spot_queue, spot_queue
from cryopilot.domain import billing
from cryopilot.domain.billing import node_bill
from cryopilot.domain.nodes import queue_types
from cryopilot.domain.report.rows import GPUS_PER_NODE, MASTER_QUEUE, NodeRow, StageRow

_PLACEMENT_RE = re.compile(r"^\s*(?P<type>\S+)\s+in\s+(?P<subnet>subnet-[0-9a-zA-Z]+)\s*$")


class ReportData(BaseModel):
    """Everything a report shows, taken from one run record and its plan."""

    run_id: str
    dataset: str
    status: str
    preset: str | None = None
    preset_reason: str | None = None
    campaign: str | None = None
    compound: str | None = None
    #: a repeat run against its reference (``RepeatVerdict`` fields), when it has one
    repeat_verdict: dict[str, Any] | None = None
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
    capacity_events: list[str] = Field(
        default_factory=list, description="GPU capacity at node launch, as the polls saw it"
    )
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
    billed_from_nodes: bool = Field(
        default=False,
        description="billed_usd bills the nodes the run listed (describeClusterInstances), launch to end",
    )
    nodes: list[NodeRow] = Field(default_factory=list, description="the GPU nodes that ran")
    spot: str | None = Field(default=None, description="the stages that ran on Spot, and what Spot saved")
    spot_saved_usd: tuple[float, float] | None = Field(
        default=None, description="(least, most) Spot saved against the On-Demand bill of its nodes"
    )
    lower_bounds: bool = Field(
        default=False,
        description="a compute stage started but has no end time: cost and GPU-hours count the others only",
    )
    error: str | None = None
    failed_at: str | None = None
    results: list[tuple[str, str]] = Field(default_factory=list)
    storage: str | None = Field(default=None, description="the FSx file system, the data, the snapshot")
    exported: str | None = Field(default=None, description="what went to the results bucket")


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
    if started is not None and completed is not None and prices is not None and instance and nodes:
        price = _number(prices(instance))
        if price is not None:
            # the stage's own run time, priced by the one billing model (no launch, no idle)
            node = billing.NodeType(instance, per_node or 0, price)
            job = billing.Job(
                went=started.timestamp(), start=started.timestamp(), end=completed.timestamp(), nodes=nodes
            )
            cost = billing.run_time_cost(node, job)
    lost = next((x for x in rec.get("spot_interruptions") or [] if isinstance(x, Mapping)), None)
    return StageRow(
        lost_at=_when(lost.get("ended_at") or lost.get("at")) if lost else None,
        requeued_at=_when(lost.get("at")) if lost else None,
        resubmitted_on=str(rec["resubmitted_on"]) if rec.get("resubmitted_on") else None,
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


#: Id prefix of a node no listing saw (a Spot node reclaimed between two listings).
UNLISTED = "unlisted:"


def _node_lifetimes(
    listed: Mapping[str, Any],
    rows: Sequence[StageRow],
    prices: Callable[[str], float | None],
    idle_seconds: float,
    until: float,
    held: frozenset[str],
) -> tuple[list[NodeRow], tuple[float, float]] | None:
    """The nodes the run listed, each with the end it is billed to, and their bill (USD, GPU-hours):
    :func:`billing.lifetime_bill`, the stages' jobs placing each node's end. None when a node has
    no launch time or its type no price."""
    nodes = {
        str(k): v
        for k, v in listed.items()
        if isinstance(v, Mapping) and v.get("instance_type") and _number(v.get("launched_at")) is not None
    }
    if not nodes:
        return None
    jobs: dict[str, list[billing.Job]] = {}
    reclaimed: dict[str, list[float]] = {}
    for r in rows:
        if r.nodes is None or (r.submitted_at or r.started_at) is None:
            continue
        went = (r.submitted_at or r.started_at).timestamp()  # type: ignore[union-attr]
        end = r.completed_at.timestamp() if r.completed_at else until  # unended: up to the end
        start = r.started_at.timestamp() if r.started_at else went
        if r.lost_at is not None and r.requeued_at is not None and r.resubmitted_on:
            # two attempts: on Spot until its node was reclaimed, then On-Demand from the requeue
            lost = r.lost_at.timestamp()
            jobs.setdefault(r.queue, []).append(billing.Job(went=went, start=went, end=lost, nodes=r.nodes))
            reclaimed.setdefault(r.queue, []).append(lost)
            seen = any(
                n.get("queue") == r.queue and went - 1 <= float(n["launched_at"]) <= lost
                for n in nodes.values()
            )
            if not seen and r.instance_type:
                # a Spot node that came and went between two listings: launched when the stage
                # went to Slurm, reclaimed when its job died (an estimate; the report says so)
                nodes[f"{UNLISTED}{r.stage_id}"] = {
                    "instance_type": r.instance_type,
                    "queue": r.queue,
                    "launched_at": went,
                    "last_seen": lost,
                    "ended_by": lost,
                }
            went = r.requeued_at.timestamp()
            jobs.setdefault(r.resubmitted_on, []).append(
                billing.Job(went=went, start=max(start, went), end=end, nodes=r.nodes)
            )
            continue
        jobs.setdefault(r.queue, []).append(billing.Job(went=went, start=start, end=end, nodes=r.nodes))
    lives = billing.node_lives(
        nodes,
        prices=prices,
        jobs=jobs,
        idle_seconds=idle_seconds,
        until=until,
        held=held,
        reclaimed=reclaimed,
    )
    if lives is None:
        return None
    out = [
        NodeRow(
            listed=not node_id.startswith(UNLISTED),
            node_id=node_id,
            queue=life.queue,
            instance_type=life.instance_type,
            launched_at=datetime.fromtimestamp(life.launched_at, tz=UTC),
            ended_at=datetime.fromtimestamp(life.ended_at, tz=UTC),
            cost_usd=life.cost_usd,
        )
        for node_id, life in sorted(lives.items(), key=lambda kv: kv[1].launched_at)
    ]
    return out, billing.lifetime_bill(lives)


def _spot_summary(
    rows: Sequence[StageRow], nodes: Sequence[NodeRow], share: tuple[float, float] | None
) -> tuple[str | None, tuple[float, float] | None]:
    """Which stages ran on Spot (a Spot twin's lane), which of them were interrupted and finished
    On-Demand, and what Spot saved: the Spot nodes' bill at On-Demand rates × (1 − the share)."""
    on_spot = [r for r in rows if is_spot_queue(r.queue)]
    if not on_spot:
        return None, None
    names = [
        r.stage_id + (f" (interrupted; completed on {r.resubmitted_on})" if r.resubmitted_on else "")
        for r in on_spot
    ]
    text = "on Spot: " + ", ".join(names)
    billed = [n.cost_usd for n in nodes if is_spot_queue(n.queue) and n.cost_usd is not None]
    if not billed or share is None:
        return text, None
    full = sum(billed)
    low, high = share
    saved = (full * (1 - high), full * (1 - low))
    text += (
        f". Their Spot nodes: ${full:,.2f} at On-Demand rates (the bill counts them so); at Spot prices"
        f" of {low:.0%}–{high:.0%} of On-Demand they cost ${full * low:,.2f}–${full * high:,.2f},"
        f" saving ${saved[0]:,.2f}–${saved[1]:,.2f}"
    )
    return text, saved


def report_data_from_run(
    run: dict[str, Any],
    plan: list[dict[str, Any]],
    *,
    prices: Callable[[str], float | None] | None = None,
    results: Sequence[tuple[str, str]] = (),
    instance_types: Mapping[str, str] | None = None,
    idle_seconds: float | None = None,
    spot_share: tuple[float, float] | None = None,
) -> ReportData:
    """The report of ``run`` (a run record) following ``plan`` (its planned stages, in order).

    ``prices`` gives the hourly on-demand price of an instance type (None when unknown); without
    it no cost is shown. ``results`` are (label, URI) links; without them the record's exported
    results are listed. ``instance_types`` (queue → type, e.g. the stack's configured types) fills
    in the queues whose type the record does not say; the record's placement wins for gpu8.
    ``idle_seconds`` (Slurm's ScaledownIdletime) enables the estimate of the nodes' bill
    (:func:`node_bill`). ``spot_share``: the catalogue's (cheapest, dearest) Spot price as a share
    of On-Demand, for what the stages on Spot saved.
    """
    label, gpu8_type, subnet = _placement(run)
    types: dict[str, str] = {str(k): str(v) for k, v in (instance_types or {}).items() if v}
    if gpu8_type:
        types["gpu8"] = gpu8_type
    # the nodes seen win: a queue's type is its latest node's (a fail-over's type)
    seen = run.get("compute_nodes")
    if isinstance(seen, Mapping) and seen:
        types.update(queue_types(seen))
    # a Spot twin runs its queue's types
    row_types = {**{spot_queue(q): t for q, t in types.items() if q in GPU_QUEUES}, **types}

    stages = run.get("stages")
    records: Mapping[str, Any] = stages if isinstance(stages, Mapping) else {}
    planned = [p for p in plan if isinstance(p, Mapping) and p.get("id")]
    seen = {str(p["id"]) for p in planned}
    # stages recorded but not planned (e.g. a record without its plan) follow the plan's
    planned += [{"id": sid} for sid in records if sid not in seen]
    rows = []
    for p in planned:
        rec = records.get(str(p["id"]))
        rows.append(_row(p, rec if isinstance(rec, Mapping) else {}, row_types, prices))

    created = _when(run.get("created_at"))
    started = _when(run.get("started_epoch")) or _when(run.get("started_at")) or created
    finished = _when(run.get("finished_epoch")) or _when(run.get("finished_at"))
    status = str(run.get("status") or "UNKNOWN")
    structure_end = _when(run.get("export_finished_at")) or finished
    time_to_structure = _seconds(started, structure_end) if status == "SUCCEEDED" else None
    if finished is None and status == "SUCCEEDED":
        # the success path writes the report once the results are exported, before the run's
        # record is closed: the run's work finished then (the cluster is deleted after)
        finished = structure_end

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

    node_rows: list[NodeRow] = []
    bill_end = structure_end if status == "SUCCEEDED" else finished
    listed = run.get("compute_nodes")
    if (
        prices is not None
        and idle_seconds is not None
        and isinstance(listed, Mapping)
        and listed
        and bill_end
    ):
        held = frozenset({"gpu8"}) if run.get("layout") == "whitepaper" else frozenset()
        lives = _node_lifetimes(listed, rows, prices, idle_seconds, bill_end.timestamp(), held)
        if lives is not None:
            node_rows, lifetime = lives
            billed = lifetime

    spot_text, saved = _spot_summary(rows, node_rows, spot_share)

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
        preset_reason=str(run["preset_reason"]) if run.get("preset_reason") else None,
        campaign=str(run["campaign"]) if run.get("campaign") else None,
        compound=str(run["compound"]) if run.get("compound") else None,
        repeat_verdict=dict(run["repeat_verdict"])
        if isinstance(run.get("repeat_verdict"), Mapping)
        else None,
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
        capacity_events=[f"{e.get('stage')}: {e.get('note')}" for e in run.get("capacity_events") or []],
        rows=rows,
        decisions=decisions,
        cost_usd=cost,
        gpu_hours_paid=paid,
        gpu_hours_busy=busy,
        billed_usd=billed[0] if billed else None,
        billed_gpu_hours=billed[1] if billed else None,
        billed_from_nodes=bool(node_rows) and billed is not None,
        nodes=node_rows,
        spot=spot_text,
        spot_saved_usd=saved,
        lower_bounds=any(
            r.nodes is not None and r.started_at is not None and r.wall_seconds is None for r in rows
        ),
        error=error,
        failed_at=failed_at,
        results=list(results) or _default_results(run),
    )
