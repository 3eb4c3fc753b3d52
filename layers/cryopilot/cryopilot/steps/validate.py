"""The Validate step: read and check the manifest, plan the stages, write the run record."""

from typing import Any

from botocore.exceptions import ClientError
from pydantic import BaseModel, ValidationError

from cryopilot.adapters import aws, campaigns, preflight, runs, subscriptions
from cryopilot.adapters.datasize import measure_prefix
from cryopilot.adapters.execution_input import ExecutionInput, RunSettings
from cryopilot.adapters.manifests import head_version
from cryopilot.adapters.observability import logger
from cryopilot.adapters.pricing import queue_nodes
from cryopilot.adapters.settings import get_settings
from cryopilot.core import clock
from cryopilot.core.errors import (
    CampaignReferenceError,
    EventError,
    ManifestError,
    PreflightError,
    RunLimitError,
    RunStoppedError,
    StorageLimitError,
)
from cryopilot.core.naming import cluster_name_for
from cryopilot.core.queues import GPU_QUEUES
from cryopilot.core.spot import is_spot_queue, spot_queue
from cryopilot.core.validation import clip, excerpt
from cryopilot.domain import campaign, limits, placement, storage
from cryopilot.domain.catalogue import Catalogue
from cryopilot.domain.clusterconfig.mounts import FSX_DATA_DIR
from cryopilot.domain.location import (
    ManifestLocation,
    check_key,
    check_version,
    manifest_prefix,
    run_id_problem,
)
from cryopilot.domain.manifest import (
    MAX_MANIFEST_BYTES,
    Manifest,
    check_dataset_folder,
    check_notify_domains,
    manifest_from_dict,
    parse_manifest,
    validation_message,
)
from cryopilot.domain.preflight import failed, failure_message
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
    #: the dataset, and its compound when the manifest names one (the "started" mail's subject)
    label: str = ""
    preset_reason: str = ""


def _location_from_uri(uri: str) -> ManifestLocation:
    bucket, _, key = uri[len("s3://") :].partition("/")
    return ManifestLocation(bucket=bucket, key=key)


def load_manifest(location: ManifestLocation) -> tuple[Manifest, ManifestLocation]:
    """Read and parse the manifest version at ``location``."""
    source = location.uri
    try:
        check_key(location.key)  # a manual start naming a key no manifest can have
        check_version(location)
        head = head_version(location)
    except EventError as exc:
        message = str(exc)
        raise ManifestError(message if message.startswith(source) else f"{source}: {message}") from None
    s3 = aws.client("s3")
    extra = {"VersionId": location.version_id} if location.version_id else {}
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
    # Not once the run is over: a run cancelled or superseded between its admission and its
    # start stays so.
    if not store.update_run_unless_over(
        run_id,
        status="RUNNING",
        current_step="validate",
        started_at=clock.now_iso(),
        started_epoch=clock.now(),
    ):
        raise RunStoppedError(f"run {run_id} was stopped before it started: nothing is done")
    problem = run_id_problem(run_id)
    if problem:  # a manual start's name: it goes into S3 keys, tags and the cluster's name
        raise ManifestError(f"execution name: {problem}")
    try:
        exec_input = ExecutionInput.model_validate(raw_input)
    except ValidationError as exc:
        raise ManifestError(f"execution input: {validation_message(exc)}") from None
    foreign = exec_input.bucket_problem(settings.input_bucket)
    if foreign:
        raise ManifestError(f"execution input: {foreign}")

    if exec_input.manifest_inline is not None:
        source, folder = "manifest_inline", None
        manifest = manifest_from_dict(exec_input.manifest_inline, source=source)
        data_uri = exec_input.data_s3_uri or ""
        # The document is the execution's input, which Step Functions keeps with the execution
        # (DescribeExecution, for the history's retention): the record points there, and copies
        # nothing of it but what the run needs.
        location_doc: dict[str, Any] = {
            "inline": True,
            "data_s3_uri": data_uri,
            "kept_in": "execution input",
        }
    else:
        location = exec_input.manifest or _location_from_uri(exec_input.manifest_s3_uri or "")
        manifest, location = load_manifest(location)
        source, folder = location.uri, location.dataset_folder
        data_uri = f"s3://{location.bucket}/{manifest_prefix(location.key)}"
        location_doc = location.model_dump()

    if manifest.campaign or manifest.compound:  # the failure mail of a refused reference names them
        store.update_run(run_id, campaign=manifest.campaign, compound=manifest.compound)
    reference = resolve_reference(manifest, source=source, data_uri=data_uri, run_id=run_id)
    preset_name, preset_reason = campaign.choose_preset(manifest, reference)
    manifest = manifest.model_copy(
        update={"pipeline": manifest.pipeline.model_copy(update={"preset": preset_name})}
    )
    stages = placement.plan(
        manifest,
        data_dir=f"{FSX_DATA_DIR}/",
        queue_types=settings.queue_instance_types(),
        gpu8_fallback_types=settings.fallback_gpu8_types,
        catalogue=Catalogue.for_deployment(settings.price_overrides),
        reference=None if reference is None else reference.inputs(data_uri=data_uri),
    )
    # who may receive the dataset's mails (and join its campaign): a manifest in the bucket speaks
    # for its folder only
    if folder is not None:
        check_dataset_folder(manifest, folder, source=source)
    check_notify_domains(manifest, settings.notify_domains, source=source)
    measured = data_uri.startswith("s3://")
    data = measure_prefix(aws.client("s3"), data_uri, manifest.input.glob) if measured else None
    fsx = storage.plan_for_manifest(manifest, stages, data, throughput=settings.fsx_throughput)
    cluster_name = cluster_name_for(run_id)
    titles = " → ".join(s.title for s in stages)
    store.put_plan(run_id, stages)
    store.update_run(
        run_id,
        **record_fields(
            manifest,
            stages,
            location_doc=location_doc,
            data_uri=data_uri,
            cluster_name=cluster_name,
            exec_input=exec_input,
        ),
        **storage_fields(fsx, data),
        **campaign_fields(manifest, stages, reference, data_uri=data_uri, preset_reason=preset_reason),
    )
    try:
        storage.check_limit(fsx, settings.max_fsx_tib)
    except StorageLimitError:
        store.update_run(run_id, current_step="validate")
        raise
    _check_cost_ceiling(run_id, manifest, stages)
    _preflight(run_id, manifest, data_uri, data, spot_queues(stages))
    store.put_context(run_id, **context_fields(manifest, exec_input, started_epoch=clock.now()))
    _subscribe(manifest)
    if manifest.campaign:
        campaigns.add_run(store, manifest.campaign, run_id)
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
        label=mail_label(manifest),
        preset_reason=preset_reason,
    )


#: Longest label a "started" mail's subject carries (SNS subjects are under 100 characters).
MAX_LABEL_CHARS = 60


def mail_label(manifest: Manifest) -> str:
    """The dataset, and its compound in brackets when the manifest names one, at most
    :data:`MAX_LABEL_CHARS` long."""
    if not manifest.compound:
        return manifest.dataset
    return clip(f"{manifest.dataset} ({manifest.compound})", MAX_LABEL_CHARS)


def spot_queues(stages: list[PlannedStage]) -> list[str]:
    """The GPU queues whose Spot twin some stage is planned on (``capacity: spot-where-safe``)."""
    lanes = {s.lane for s in stages if is_spot_queue(s.lane)}
    return [q for q in GPU_QUEUES if spot_queue(q) in lanes]


def record_fields(
    manifest: Manifest,
    stages: list[PlannedStage],
    *,
    location_doc: dict[str, Any],
    data_uri: str,
    cluster_name: str,
    exec_input: ExecutionInput,
) -> dict[str, Any]:
    """What Validate writes on the run record: where the manifest is and what the run needs from
    it, never the manifest itself (every value in here is bounded by the manifest's rules)."""
    return {
        "dataset": manifest.dataset,
        "manifest": location_doc,
        "preset": manifest.preset_name,
        "layout": manifest.pipeline.layout,
        "capacity": manifest.pipeline.capacity,
        "spot_queues": spot_queues(stages),
        "stages": {
            s.id: {"title": s.title, "lane": s.lane, "gpus": s.gpus, "state": "pending"} for s in stages
        },
        "cluster_name": cluster_name,
        "data_s3_uri": data_uri,
        "notify": manifest.notify,
        "trigger": exec_input.trigger,
        "settings": exec_input.settings.model_dump(),
        "export_mode": manifest.export,
        "current_step": "validated",
    }


def resolve_reference(
    manifest: Manifest, *, source: str, data_uri: str, run_id: str
) -> campaign.ReferenceSource | None:
    """The run's reference: the manifest's ``reference`` (an earlier run, or a map in one of the
    stack's buckets), else its campaign's, else none. A reference that cannot be used is one
    :class:`CampaignReferenceError` naming the field and the rule: an unknown or unfinished run, a
    pixel size beyond :data:`~cryopilot.domain.reference.PIXEL_SIZE_TOLERANCE` of the data's, a map
    too large to resample, a file missing from S3. The class averages' pixel size is read from their
    header."""
    settings = get_settings()
    store = runs.store()
    spec = manifest.reference
    ref: campaign.ReferenceSource | None
    if spec is None:
        if not manifest.campaign:
            return None
        ref = campaigns.reference_of(store, manifest.campaign)
        where = f"{source}: campaign {manifest.campaign}"
        if ref is None:
            return None
    elif spec.run is not None:
        where = f"{source}: reference.run"
        item = store.get_run_item(spec.run, campaigns.RUN_FIELDS)
        if item is None:
            raise CampaignReferenceError(f"{where}: no run {spec.run!r} in this stack's run table")
        if item.get("status") != "SUCCEEDED":
            raise CampaignReferenceError(
                f"{where}: run {spec.run} has not succeeded (status {item.get('status')}); only a run"
                " that made its map can be a reference"
            )
        if not item.get("map_pixel_size_A"):
            raise CampaignReferenceError(
                f"{where}: run {spec.run} recorded no map pixel size (it predates campaigns): name its"
                " map with reference.map and pixel_size_A instead"
            )
        folder = f"s3://{settings.results_bucket}/runs/{spec.run}/results/"
        ref = campaign.reference_from_run(item, folder_uri=folder, kind="run")
        if ref is None:
            raise CampaignReferenceError(f"{where}: run {spec.run} exported no map to be a reference")
    else:
        where = f"{source}: reference.map"
        assert spec.map is not None  # the manifest's rule: with map, its pixel_size_A
        assert spec.pixel_size_A is not None
        folder, _, map_name = spec.map.rpartition("/")
        folder += "/"
        bucket = folder.removeprefix("s3://").partition("/")[0]
        if bucket not in (settings.input_bucket, settings.results_bucket):
            raise CampaignReferenceError(
                f"{where}: must be in this stack's input bucket {settings.input_bucket} or results"
                f" bucket {settings.results_bucket} (got {excerpt(spec.map)})"
            )
        own_results = f"s3://{settings.results_bucket}/runs/{run_id}/"
        for inside, what in ((data_uri, "the dataset's folder"), (own_results, "the run's results folder")):
            if inside and inside.startswith(folder):
                raise CampaignReferenceError(
                    f"{where}: its folder {folder} holds {what}: put the reference in a folder of its own"
                )
        ref = campaign.ReferenceSource(
            kind="map",
            folder_uri=folder,
            map=map_name,
            mask=None if spec.mask is None else spec.mask.rpartition("/")[2],
            templates=None if spec.templates is None else spec.templates.rpartition("/")[2],
            pixel_size_A=spec.pixel_size_A,
        )
    campaign.check_pixel_size(ref, manifest.acquisition.pixel_size_A, where=where)
    campaigns.check_files_exist(aws.client("s3"), ref, where=where)
    if ref.box_pix is None:  # a map solved elsewhere: its box is in its header
        ref = campaigns.read_box(aws.client("s3"), ref, where=where)
    campaign.check_resample_box(ref, manifest.acquisition.pixel_size_A, where=where)
    return campaigns.read_templates_pixel_size(aws.client("s3"), ref, where=where)


def campaign_fields(
    manifest: Manifest,
    stages: list[PlannedStage],
    reference: campaign.ReferenceSource | None,
    *,
    data_uri: str,
    preset_reason: str,
) -> dict[str, Any]:
    """What Validate writes on the run record about its campaign, its reference and its map."""
    pixel, box = campaign.map_geometry(manifest, stages)
    fields: dict[str, Any] = {
        "campaign": manifest.campaign,
        "compound": manifest.compound,
        "preset_reason": preset_reason,
        "map_pixel_size_A": pixel,
        "map_box_pix": box,
    }
    if reference is not None:
        fields["reference"] = {
            "source": reference.model_dump(exclude_none=True),
            "inputs": reference.inputs(data_uri=data_uri).model_dump(exclude_none=True),
            "association_uri": reference.folder_uri if reference.needs_association(data_uri) else None,
        }
        fields["repeat_thresholds"] = manifest.repeat.model_dump()
    return fields


def storage_fields(fsx: storage.StoragePlan, data: storage.DataSize | None) -> dict[str, Any]:
    """What Validate writes on the run record about the data it measured and the FSx it sized."""
    return {
        "data_bytes": None if data is None else data.bytes,
        "data_objects": None if data is None else data.objects,
        "fsx_storage_gib": fsx.capacity_gib,
        "fsx_throughput_mb_per_tib": fsx.throughput_mb_per_tib,
        "storage": storage.storage_record(fsx, data),
    }


def context_fields(manifest: Manifest, exec_input: ExecutionInput, *, started_epoch: float) -> dict[str, Any]:
    """What Validate writes on the run's step context."""
    return {
        "settings": exec_input.settings.model_dump(),
        "limits": manifest.limits.model_dump(exclude_none=True),
        "preset": manifest.preset_name,
        "started_epoch": started_epoch,
        "costs": {},
    }


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


def _data_inputs(manifest: Manifest, data_uri: str, data: storage.DataSize) -> preflight.DataInputs:
    return preflight.DataInputs(
        uri=data_uri,
        glob=manifest.input.glob,
        expected_files=manifest.input.expected_files,
        gain_reference=manifest.acquisition.gain_reference,
        measured=data,
    )


def _preflight(
    run_id: str,
    manifest: Manifest,
    data_uri: str,
    data: storage.DataSize | None,
    spot: list[str] | None = None,
) -> None:
    """The preflight checks (:mod:`cryopilot.adapters.preflight`), recorded on the run; a failed
    one ends the run here (:class:`PreflightError`), before any cluster exists. ``spot``: the
    queues whose Spot twin the run uses (their Spot quotas are checked too)."""
    inputs = None if data is None else _data_inputs(manifest, data_uri, data)
    results = preflight.run_checks(get_settings(), inputs, spot or ())
    store = runs.store()
    store.update_run(run_id, preflight=preflight.results_doc(results))
    if failed(results):
        store.update_run(run_id, current_step="validate")
        raise PreflightError(failure_message(results))


def preflight_checks(raw_input: Any) -> dict[str, Any]:
    """``cryopilot preflight``: the checks a run's Validate makes, run by the Validate function with
    its own role, and nothing written. ``raw_input``: None (the stack's checks only) or an
    execution's input naming a manifest (its data is checked too)."""
    settings = get_settings()
    inputs = None
    if raw_input:
        try:
            exec_input = ExecutionInput.model_validate(raw_input)
        except ValidationError as exc:
            raise ManifestError(f"preflight input: {validation_message(exc)}") from None
        foreign = exec_input.bucket_problem(settings.input_bucket)
        if foreign:
            raise ManifestError(f"preflight input: {foreign}")
        if exec_input.manifest_inline is not None:
            manifest = manifest_from_dict(exec_input.manifest_inline, source="manifest_inline")
            data_uri = exec_input.data_s3_uri or ""
        else:
            location = exec_input.manifest or _location_from_uri(exec_input.manifest_s3_uri or "")
            manifest, location = load_manifest(location)
            data_uri = f"s3://{location.bucket}/{manifest_prefix(location.key)}"
        if data_uri.startswith("s3://"):
            data = measure_prefix(aws.client("s3"), data_uri, manifest.input.glob)
            inputs = _data_inputs(manifest, data_uri, data)
    results = preflight.run_checks(settings, inputs)
    return {"ok": not failed(results), "checks": preflight.results_doc(results)}


def _subscribe(manifest: Manifest) -> None:
    """Subscribe the manifest's extra addresses to this dataset's mails, keeping the datasets each
    already receives (:mod:`cryopilot.adapters.subscriptions`). SNS asks each new address to
    confirm once."""
    if not manifest.notify:
        return
    sns = aws.client("sns")
    topic = get_settings().topic_arn
    for address in dict.fromkeys(manifest.notify):
        try:
            subscriptions.subscribe(sns, topic, address, manifest.dataset)
        except ClientError as exc:
            code = exc.response["Error"]["Code"]
            if code == "InvalidParameter":  # SNS checks the address itself
                raise ManifestError(
                    f"notify: SNS refuses the address {excerpt(address)} (InvalidParameter)"
                ) from None
            if code not in subscriptions.LIMIT_CODES:
                raise
            raise ManifestError(
                f"notify: {address} cannot be subscribed: the stack's topic is at an SNS limit"
                f" ({exc.response['Error']['Code']}); an operator must remove subscriptions"
            ) from None
