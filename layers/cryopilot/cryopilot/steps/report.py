"""Write a run's report next to its results and remember where it is (the Report step).

The rendering is :mod:`cryopilot.domain.report`; this module gathers what it needs (the run record, its
plan, the instance types of the queues and their prices), stores the three files under
``runs/<run id>/report/`` in the results bucket and records their locations and the run's cost on
the run record, which the final mail then links and quotes: ``cost_usd`` is the GPU nodes'
estimated bill (node launch and Slurm's idle time included, :func:`cryopilot.domain.billing.node_bill`),
``stage_cost_usd`` what the stages' own run time costs, ``storage_cost_usd`` the run's FSx for Lustre
file system (its capacity × the catalogue's rate per GB-month for its tier × its life: from the
cluster's request to now plus the catalogue's cluster deletion time).
"""

from collections.abc import Callable
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from cryopilot.adapters import aws, campaigns, runs
from cryopilot.adapters.observability import logger
from cryopilot.adapters.settings import get_settings
from cryopilot.core import clock
from cryopilot.core.errors import ReportError
from cryopilot.domain import billing
from cryopilot.domain.campaign import ReferenceSource, campaign_prefix, final_particles, judge_repeat
from cryopilot.domain.catalogue import Catalogue, CostingError, UnknownInstanceType
from cryopilot.domain.clusterconfig.scaling import SCALEDOWN_IDLE_SECONDS
from cryopilot.domain.record import RunRecord
from cryopilot.domain.reference import RepeatThresholds
from cryopilot.domain.report import campaign as campaign_page
from cryopilot.domain.report.data import report_data_from_run
from cryopilot.domain.report.render import render_all
from cryopilot.domain.storage import DEPLOYMENT_TYPE, SHARED_SNAPSHOT_GIB

CONTENT_TYPES = {
    "report.md": "text/markdown; charset=utf-8",
    "report.html": "text/html; charset=utf-8",
    "timeline.png": "image/png",
}


class ReportStep(BaseModel):
    html_uri: str
    markdown_uri: str
    png_uri: str
    cost_usd: float | None = None


def _price_lookup() -> Callable[[str], float | None] | None:
    """Hourly prices from the instance catalogue (with the deployment's overrides)."""
    catalogue = Catalogue.for_deployment(get_settings().price_overrides)

    def price(instance_type: str) -> float | None:
        try:
            return float(catalogue.price(instance_type))
        except UnknownInstanceType:
            return None

    return price


def _spot_share() -> tuple[float, float] | None:
    """The catalogue's (cheapest, dearest) Spot price as a share of On-Demand."""
    share = Catalogue.for_deployment(get_settings().price_overrides).spot
    return (share.low, share.high) if share is not None else None


def _round(value: float | None) -> float | None:
    return round(value, 2) if value is not None else None


def storage_cost(run: RunRecord) -> float | None:
    """The FSx file system's cost (None when the run has no storage plan or no cluster request)."""
    gib, tier, requested = run.fsx_storage_gib, run.fsx_throughput_mb_per_tib, run.cluster_requested_at
    if not gib or not tier or not requested:
        return None
    settings = get_settings()
    catalogue = Catalogue.for_deployment(settings.price_overrides)
    try:
        rate = catalogue.fsx_price(DEPLOYMENT_TYPE, tier, settings.region).usd_per_gb_month
    except CostingError:
        return None
    start = datetime.fromisoformat(requested).timestamp()
    life = clock.now() - start + catalogue.timings.cluster_delete_seconds.value
    return billing.storage_cost(gib, rate, life / 3600)


def snapshot_cost(run: RunRecord) -> float | None:
    """The /shared snapshot's cost over the stack's SnapshotRetentionDays (30 days when it keeps
    them: a month's worth), for :data:`SHARED_SNAPSHOT_GIB`; None without a cluster or a price."""
    if not run.cluster_requested_at:
        return None
    settings = get_settings()
    try:
        rate = Catalogue.for_deployment(settings.price_overrides).snapshot_price(settings.region)
    except CostingError:
        return None
    days = settings.snapshot_retention_days or 30
    return billing.storage_cost(SHARED_SNAPSHOT_GIB, rate.usd_per_gb_month, days * 24)


def storage_summary(run: RunRecord, fsx: float | None, snapshot: float | None) -> str | None:
    """The report's Storage line: the FSx file system, the data it held, the /shared snapshot."""
    if not run.fsx_storage_gib:
        return None
    text = f"FSx for Lustre {run.fsx_storage_gib:,} GiB at {run.fsx_throughput_mb_per_tib} MB/s/TiB"
    if fsx is not None:
        text += f", about ${fsx:,.0f}"
    if run.data_bytes is not None:
        text += f"; data {run.data_bytes / 1024**3:,.1f} GiB in {run.data_objects or 0:,} objects"
    if snapshot is not None:
        days = get_settings().snapshot_retention_days
        kept = f"kept {days} days" if days else "kept until deleted by hand"
        text += f"; /shared snapshot ({SHARED_SNAPSHOT_GIB} GiB, {kept}) about ${snapshot:,.2f}"
    return text + " (estimated)"


def export_summary(run: RunRecord) -> str | None:
    """The report's Exported line: what went to the results bucket, and what did not."""
    results = run.results or {}
    if not results.get("uri"):
        return None
    text = f"results ({len(results.get('files') or [])} files) to {results['uri']}"
    if results.get("project_uri"):
        return text + f"; the whole cryoSPARC project to {results['project_uri']}"
    return text + "; not the cryoSPARC project (deleted with the FSx file system)"


def instance_types(gpu8_instance_type: str | None) -> dict[str, str]:
    """Instance type per queue: the placement's gpu8 type when the run recorded one."""
    return get_settings().queue_instance_types(gpu8_instance_type or None)


def repeat_verdict(run: RunRecord) -> dict[str, Any] | None:
    """How a repeat run's map compares with its reference (None without a reference)."""
    source = (run.reference or {}).get("source")
    if not source:
        return None
    thresholds = RepeatThresholds.model_validate(run.repeat_thresholds or {})
    verdict = judge_repeat(
        run.resolution_A, final_particles(run), ReferenceSource.model_validate(source), thresholds
    )
    return verdict.model_dump(mode="json")


def _campaign(run_id: str, name: str, *, succeeded: bool) -> None:
    """The campaign's side of a run's report: a run that succeeded becomes the campaign's reference
    when it has none and it did not do worse than a reference it was given
    (:func:`~cryopilot.adapters.campaigns.promote` decides; its files copied to the campaign's
    folder), and the campaign's page is written again with every run."""
    store = runs.store()
    bucket = get_settings().results_bucket
    s3 = aws.client("s3")
    if succeeded:
        item = store.get_run_item(run_id) or {}
        promoted = campaigns.promote(store, s3, bucket, {**item, "status": "SUCCEEDED"})
        if promoted is not None:
            logger.info("campaign reference", extra={"campaign": name, "run_id": run_id})
    members = campaigns.runs_of(store, name)
    members = [m.model_copy(update={"status": "SUCCEEDED"}) if m.run_id == run_id and succeeded else m
               for m in members]  # fmt: skip
    item = campaigns.get(store, name) or {}
    reference = item.get("reference")
    rows = campaign_page.rows_for(members, results_bucket=bucket, reference_run=item.get("reference_run_id"))
    prefix = campaign_prefix(name)
    types = {"campaign.md": "text/markdown; charset=utf-8", "campaign.html": "text/html; charset=utf-8",
             "campaign.png": "image/png"}  # fmt: skip
    for file_name, body in campaign_page.render_all(name, rows, reference).items():
        s3.put_object(Bucket=bucket, Key=prefix + file_name, Body=body, ContentType=types[file_name])


def write(run_id: str) -> ReportStep:
    store = runs.store()
    item = store.get_run_item(run_id)
    if item is None:
        raise ReportError(f"run {run_id} has no record; nothing to report")
    run = RunRecord.model_validate(item)
    plan = store.get_plan(run_id)
    succeeded = run.status == "RUNNING" and bool(run.export_finished_at)
    if succeeded:
        # the success path writes the report between the export and the final mail
        item = {**item, "status": "SUCCEEDED"}
    verdict = repeat_verdict(run) if succeeded else None
    if verdict is not None:
        item["repeat_verdict"] = verdict
    # the renderer takes the record and the plan as they are stored
    data = report_data_from_run(
        item,
        [p.model_dump(mode="json") for p in plan],
        prices=_price_lookup(),
        # the placement's gpu8 type is on the step context, not the record: the configured types
        instance_types=instance_types(None),
        idle_seconds=SCALEDOWN_IDLE_SECONDS,
        spot_share=_spot_share(),
    )
    fsx = storage_cost(run)
    snapshot = snapshot_cost(run)
    data = data.model_copy(
        update={"storage": storage_summary(run, fsx, snapshot), "exported": export_summary(run)}
    )
    files = render_all(data)
    bucket = get_settings().results_bucket
    prefix = f"runs/{run_id}/report/"
    s3 = aws.client("s3")
    for name, body in files.items():
        s3.put_object(
            Bucket=bucket,
            Key=prefix + name,
            Body=body,
            ContentType=CONTENT_TYPES.get(name, "binary/octet-stream"),
        )
    step = ReportStep(
        html_uri=f"s3://{bucket}/{prefix}report.html",
        markdown_uri=f"s3://{bucket}/{prefix}report.md",
        png_uri=f"s3://{bucket}/{prefix}timeline.png",
        cost_usd=_round(data.billed_usd if data.billed_usd is not None else data.cost_usd),
    )
    fields: dict[str, Any] = {
        "report": {"html": step.html_uri, "markdown": step.markdown_uri, "png": step.png_uri}
    }
    # The run's cost is the nodes' estimated bill (launch and idle included) when every compute
    # stage has an end; otherwise what the stages' own times cost (a lower bound).
    if step.cost_usd is not None:
        fields["cost_usd"] = step.cost_usd
        fields["cost_basis"] = (
            billing.NODE_LIFETIMES
            if data.billed_from_nodes
            else billing.NODES_BILLED
            if data.billed_usd is not None
            else billing.STAGE_TIME
        )
    if data.cost_usd is not None:
        fields["stage_cost_usd"] = _round(data.cost_usd)
    if fsx is not None:
        fields["storage_cost_usd"] = _round(fsx)
    if snapshot is not None:
        fields["snapshot_cost_usd"] = _round(snapshot)
    paid = data.billed_gpu_hours if data.billed_gpu_hours is not None else data.gpu_hours_paid
    if paid is not None:
        fields["gpu_hours_paid"] = round(paid, 2)
    if data.gpu_hours_busy is not None:
        fields["gpu_hours_busy"] = round(data.gpu_hours_busy, 2)
    if verdict is not None:
        fields["repeat_verdict"] = verdict
    if data.spot:
        fields["spot_summary"] = data.spot
    if data.spot_saved_usd is not None:
        fields["spot_saved_usd"] = [round(v, 2) for v in data.spot_saved_usd]
    store.update_run(run_id, **fields)
    if run.campaign:
        _campaign(run_id, run.campaign, succeeded=succeeded)
    logger.info("report written", extra={"uri": step.html_uri, "cost_usd": step.cost_usd})
    return step
