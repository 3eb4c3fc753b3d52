"""The Validate step: read and check the manifest, plan the stages, write the run record."""

import json
from typing import Any

from botocore.exceptions import ClientError
from pydantic import BaseModel, ValidationError

from cryopilot.adapters import aws, runs
from cryopilot.adapters.datasize import measure_prefix
from cryopilot.adapters.execution_input import ExecutionInput, RunSettings
from cryopilot.adapters.observability import logger
from cryopilot.adapters.pricing import queue_nodes
from cryopilot.adapters.settings import get_settings
from cryopilot.core import clock
from cryopilot.core.errors import EventError, ManifestError, RunLimitError, StorageLimitError
from cryopilot.core.naming import cluster_name_for
from cryopilot.domain import limits, placement, storage
from cryopilot.domain.catalogue import Catalogue
from cryopilot.domain.clusterconfig.mounts import FSX_DATA_DIR
from cryopilot.domain.location import ManifestLocation, check_key, manifest_prefix
from cryopilot.domain.manifest import (
    MAX_MANIFEST_BYTES,
    Manifest,
    manifest_from_dict,
    parse_manifest,
    validation_message,
)
from cryopilot.protocol.stage import PlannedStage


class ValidatedRun(BaseModel):
    """What Validate hands to the rest of the state machine (``$.run``)."""

    run_id: str
    dataset: str
    preset: str
    cluster_name: str
    stage_count: int
    stage_titles: str
    data_s3_uri: str
    settings: RunSettings


def _location_from_uri(uri: str) -> ManifestLocation:
    bucket, _, key = uri[len("s3://") :].partition("/")
    return ManifestLocation(bucket=bucket, key=key)


def load_manifest(location: ManifestLocation) -> tuple[Manifest, ManifestLocation]:
    """Read and parse the manifest version at ``location``."""
    source = location.uri
    try:
        check_key(location.key)
    except EventError as exc:  # a manual start naming a key no manifest can have
        raise ManifestError(f"{source}: {exc}") from None
    s3 = aws.client("s3")
    extra = {"VersionId": location.version_id} if location.version_id else {}
    try:
        head = s3.head_object(Bucket=location.bucket, Key=location.key, **extra)
    except ClientError as exc:
        code = exc.response["Error"]["Code"]
        if code in ("404", "NoSuchKey", "NotFound", "NoSuchVersion"):
            raise ManifestError(f"{source}: no such object (or version)") from None
        if code in ("403", "AccessDenied"):
            raise ManifestError(f"{source}: access denied") from None
        raise
    size = int(head.get("ContentLength", 0))
    if size > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{source}: is {size:,} bytes; a manifest may be at most 1 MB")
    body = s3.get_object(Bucket=location.bucket, Key=location.key, **extra)["Body"].read()
    pinned = location.model_copy(
        update={"version_id": head.get("VersionId") or location.version_id, "etag": head.get("ETag")}
    )
    return parse_manifest(body, source=source), pinned


def validate(execution_name: str, execution_arn: str, raw_input: Any) -> ValidatedRun:
    """Read and check the manifest, plan the stages, write the run record."""
    settings = get_settings()
    run_id = execution_name
    store = runs.store()
    store.create_run(run_id, execution_arn=execution_arn, current_step="validate", trigger="manual")
    store.update_run(
        run_id,
        status="RUNNING",
        current_step="validate",
        started_at=clock.now_iso(),
        started_epoch=clock.now(),
    )
    try:
        exec_input = ExecutionInput.model_validate(raw_input)
    except ValidationError as exc:
        raise ManifestError(f"execution input: {validation_message(exc)}") from None

    if exec_input.manifest_inline is not None:
        manifest = manifest_from_dict(exec_input.manifest_inline, source="manifest_inline")
        data_uri = exec_input.data_s3_uri or ""
        location_doc: dict[str, Any] = {"inline": True, "data_s3_uri": data_uri}
    else:
        location = exec_input.manifest or _location_from_uri(exec_input.manifest_s3_uri or "")
        if location.bucket != settings.input_bucket:
            raise ManifestError(
                f"{location.uri}: is not in this stack's input bucket {settings.input_bucket}"
            )
        manifest, location = load_manifest(location)
        data_uri = f"s3://{location.bucket}/{manifest_prefix(location.key)}"
        location_doc = location.model_dump()

    stages = placement.plan(
        manifest,
        data_dir=f"{FSX_DATA_DIR}/",
        queue_types=settings.queue_instance_types(),
        catalogue=Catalogue.for_deployment(settings.price_overrides),
    )
    measured = data_uri.startswith("s3://")
    data = measure_prefix(aws.client("s3"), data_uri, manifest.input.glob) if measured else None
    fsx = storage.plan_for_manifest(manifest, stages, data, throughput=settings.fsx_throughput)
    cluster_name = cluster_name_for(run_id)
    titles = " → ".join(s.title for s in stages)
    store.put_plan(run_id, stages)
    store.update_run(
        run_id,
        dataset=manifest.dataset,
        manifest=location_doc,
        manifest_doc=manifest.model_dump(mode="json"),
        preset=manifest.preset_name,
        layout=manifest.pipeline.layout,
        stages={s.id: {"title": s.title, "lane": s.lane, "gpus": s.gpus, "state": "pending"} for s in stages},
        cluster_name=cluster_name,
        data_s3_uri=data_uri,
        notify=manifest.notify,
        trigger=exec_input.trigger,
        settings=exec_input.settings.model_dump(),
        data_bytes=None if data is None else data.bytes,
        data_objects=None if data is None else data.objects,
        fsx_storage_gib=fsx.capacity_gib,
        fsx_throughput_mb_per_tib=fsx.throughput_mb_per_tib,
        storage=storage.storage_record(fsx, data),
        current_step="validated",
    )
    try:
        storage.check_limit(fsx, settings.max_fsx_tib)
    except StorageLimitError:
        store.update_run(run_id, current_step="validate")
        raise
    _check_cost_ceiling(run_id, manifest, stages)
    store.put_context(
        run_id,
        settings=exec_input.settings.model_dump(),
        limits=manifest.limits.model_dump(exclude_none=True),
        preset=manifest.preset_name,
        started_epoch=clock.now(),
        costs={},
    )
    _subscribe(manifest)
    logger.info(
        "manifest valid", extra={"run_id": run_id, "dataset": manifest.dataset, "stages": len(stages)}
    )
    return ValidatedRun(
        run_id=run_id,
        dataset=manifest.dataset,
        preset=manifest.preset_name,
        cluster_name=cluster_name,
        stage_count=len(stages),
        stage_titles=titles,
        data_s3_uri=data_uri,
        settings=exec_input.settings,
    )


def _check_cost_ceiling(run_id: str, manifest: Manifest, plan: list[PlannedStage]) -> None:
    """A manifest whose cost ceiling is below the whole run's estimate fails here, before any
    cluster exists (:class:`RunLimitError`); later stages are checked as the run goes."""
    if manifest.limits.max_cost_usd is None:
        return
    settings = get_settings()
    try:
        limits.check_cost(
            {"max_cost_usd": manifest.limits.max_cost_usd},
            {},
            plan,
            preset=manifest.preset_name,
            nodes=queue_nodes(settings),
            catalogue=Catalogue.for_deployment(settings.price_overrides),
        )
    except RunLimitError:
        runs.store().update_run(run_id, current_step="validate")
        raise


def _subscribe(manifest: Manifest) -> None:
    """Subscribe the manifest's extra addresses to this dataset's mails (SNS filter policy on the
    ``dataset`` attribute). SNS asks each new address to confirm once."""
    if not manifest.notify:
        return
    sns = aws.client("sns")
    topic = get_settings().topic_arn
    existing = set()
    for page in sns.get_paginator("list_subscriptions_by_topic").paginate(TopicArn=topic):
        existing |= {s["Endpoint"] for s in page.get("Subscriptions", []) if s.get("Protocol") == "email"}
    for address in manifest.notify:
        if address in existing:
            continue
        sns.subscribe(
            TopicArn=topic,
            Protocol="email",
            Endpoint=address,
            Attributes={"FilterPolicy": json.dumps({"dataset": [manifest.dataset]})},
        )
