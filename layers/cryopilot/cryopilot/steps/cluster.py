"""The cluster steps of a run: create, wait until ready, delete, wait until gone."""

from typing import Any

from botocore.exceptions import ClientError
from pydantic import BaseModel, ValidationError

from cryopilot.adapters import aws, runs, snapshots
from cryopilot.adapters.cluster_config import config_yaml_for, placements
from cryopilot.adapters.clusters import CLUSTER_FIELDS, api, request_deletion, settle_pending_create
from cryopilot.adapters.observability import logger
from cryopilot.adapters.pcluster import ClusterInfo, FailedResource, raise_for_cluster_failure
from cryopilot.adapters.settings import get_settings
from cryopilot.core import clock
from cryopilot.core.errors import (
    CapacityError,
    ClusterConfigError,
    ClusterNotFoundError,
    ClusterTimeoutError,
    CryopilotError,
    PClusterApiError,
    RunStoppedError,
    TransientError,
    parse_error,
)
from cryopilot.core.naming import cluster_name_for
from cryopilot.core.status import (
    CLUSTER_CREATE_MAY_BE_PENDING,
    CLUSTER_CREATE_REQUESTED,
    CLUSTER_DELETE_AWAITS_CREATE,
)
from cryopilot.core.validation import validation_message
from cryopilot.domain import nodes
from cryopilot.domain.record import RunRecord


class ClusterStep(BaseModel):
    name: str | None
    status: str
    polls: int = 0
    ready: bool = False
    deleted: bool = False
    head_node_instance_id: str | None = None


def _require_run(run_id: str) -> RunRecord:
    run = runs.store().get_run(run_id, CLUSTER_FIELDS)
    if run is None:
        raise ClusterNotFoundError(f"run {run_id} has no record")
    return run


def create(run_id: str) -> ClusterStep:
    """Request the run's cluster; idempotent (a retried create adopts the cluster this run owns)."""
    settings = get_settings()
    store = runs.store()
    run = _require_run(run_id)
    name = run.cluster_name
    if not name:
        raise ClusterNotFoundError(f"run {run_id} has no cluster name")
    try:
        config = config_yaml_for(run, settings)
    except ValidationError as exc:  # Validate refuses what would fail here; kept one line if not
        store.update_run(run_id, current_step="create_cluster")
        raise ClusterConfigError(f"cluster configuration: {validation_message(exc)}") from None
    # Not once the run is over: a cancel or a supersede that came before this write found no
    # cluster to delete and asked for none, so a cluster made now would be left running.
    if not store.update_run_unless_over(
        run_id,
        current_step="create_cluster",
        cluster_state=CLUSTER_CREATE_REQUESTED,
        cluster_requested_at=clock.now_iso(),
        cluster_requested_epoch=clock.now(),
    ):
        raise RunStoppedError(f"run {run_id} was stopped before its cluster was requested: none is made")
    try:
        info = api().create_or_adopt(name, config, run_id)
    except CryopilotError as exc:
        if not isinstance(exc, TransientError):
            # ParallelCluster answered and made nothing: a deletion need not wait for this create
            store.update_run_if_cluster_state(
                run_id, CLUSTER_CREATE_MAY_BE_PENDING, cluster_state="NOT_CREATED"
            )
        raise
    if info.validation_messages:  # the validators' warnings of an accepted configuration
        logger.warning(
            "ParallelCluster accepted the configuration with warnings",
            extra={"run_id": run_id, "validation_messages": [m.line() for m in info.validation_messages]},
        )
    attempt = run.placement_attempt or 0
    label = placements(settings)[attempt].label
    if not store.update_run_if_cluster_state(
        run_id, (CLUSTER_CREATE_REQUESTED,), cluster_state=info.status, placement=label
    ):
        # a deletion was asked while this create was in flight (a cancel, a stop) and found no
        # cluster yet: the cluster this create made goes now
        deletion = request_deletion(run_id)
        logger.info("cluster created after its deletion was asked: deleted", extra={"run_id": run_id})
        return ClusterStep(name=name, status=deletion.status, deleted=deletion.deleted)
    return ClusterStep(name=name, status=info.status)


def fallback(run_id: str, error: Any = None) -> ClusterStep:
    """After a capacity failure: abandon (delete) the failed cluster and move the run to the next
    placement, or raise :class:`CapacityError` when every placement has been tried."""
    settings = get_settings()
    store = runs.store()
    run = _require_run(run_id)
    options = placements(settings)
    attempt = run.placement_attempt or 0
    failed = run.cluster_name
    if not failed:
        raise ClusterNotFoundError(f"run {run_id} has no cluster name")
    _, reason = parse_error(error) if error is not None else ("CapacityError", "no capacity")
    # the abandoned cluster's volumes too: its deletion snapshots its /shared volume like any
    volumes = _volume_ids(run_id, known=run.volume_ids)
    api().delete_cluster(failed, missing_ok=True)
    store.append_to(
        run_id, "placements_tried", {"label": options[attempt].label, "cluster": failed, "reason": reason}
    )
    abandoned = [*run.abandoned_clusters, failed]
    if attempt + 1 >= len(options):
        store.update_run(
            run_id, abandoned_clusters=abandoned, cluster_state="DELETE_IN_PROGRESS", volume_ids=volumes
        )
        tried = ", ".join(o.label for o in options)
        raise CapacityError(f"no capacity in any placement tried ({tried}): {reason}", cluster_name=failed)
    nxt = attempt + 1
    name = cluster_name_for(f"{run_id}-p{nxt}")
    store.update_run(
        run_id,
        placement_attempt=nxt,
        cluster_name=name,
        cluster_state="NOT_CREATED",
        abandoned_clusters=abandoned,
        current_step="capacity_fallback",
        volume_ids=volumes,
    )
    logger.info("capacity fallback", extra={"run_id": run_id, "failed": failed, "next": options[nxt].label})
    return ClusterStep(name=name, status="NOT_CREATED")


def check(run_id: str, polls: int, max_polls: int) -> ClusterStep:
    store = runs.store()
    run = _require_run(run_id)
    name = run.cluster_name
    if not name:
        raise ClusterNotFoundError(f"run {run_id} has no cluster name")
    polls += 1
    info = api().describe_cluster(name)
    if info.status != run.cluster_state:
        store.update_run(run_id, cluster_state=info.status)
    raise_for_cluster_failure(info, _failed_resources(info))
    if info.status == "CREATE_COMPLETE" and not info.head_node_instance_id:
        # describeCluster leaves headNode out when its EC2 call fails (throttled, say) or finds no
        # head node pending or running (ParallelCluster 3.16 ``cluster_operations_controller``
        # ``describe_cluster``): not ready yet, look again at the next check
        logger.warning(
            "cluster complete but no head node reported", extra={"run_id": run_id, "cluster": name}
        )
    elif info.status == "CREATE_COMPLETE":
        store.update_run(
            run_id,
            head_node_instance_id=info.head_node_instance_id,
            cluster_ready_at=clock.now_iso(),
            current_step="cluster_ready",
            volume_ids=_volume_ids(run_id, known=run.volume_ids),
        )
        placement = placements(get_settings())[run.placement_attempt or 0]
        store.put_context(
            run_id,
            head_node_instance_id=info.head_node_instance_id,
            gpu8_instance_type=placement.params.gpu8_instance_type,
            cluster_name=name,
        )
        return ClusterStep(
            name=name,
            status=info.status,
            polls=polls,
            ready=True,
            head_node_instance_id=info.head_node_instance_id,
        )
    if polls >= max_polls:
        raise ClusterTimeoutError(f"cluster {name} still {info.status} after {polls} checks")
    return ClusterStep(name=name, status=info.status, polls=polls)


def _failed_resources(info: ClusterInfo) -> list[FailedResource]:
    """A failed creation's failed resources, where EC2's own error shows (none for any other
    status). Throttled: the check is retried; any other API error leaves the failures alone."""
    if info.status != "CREATE_FAILED":
        return []
    try:
        return api().failed_resources(info.name)
    except (PClusterApiError, ClusterNotFoundError) as exc:
        logger.warning(
            "cannot read the failed cluster's stack events", extra={"cluster": info.name, "error": str(exc)}
        )
        return []


def _volume_ids(run_id: str, known: list[str]) -> list[str]:
    """The run's clusters' EBS volumes (``known`` and those tagged with the run now), so that the
    janitor can find each /shared volume's snapshot once its cluster is deleted; ``known`` (a
    snapshot not found is then kept until deleted by hand) if EC2 will not say."""
    try:
        return sorted(set(known) | set(snapshots.run_volume_ids(aws.client("ec2"), run_id)))
    except ClientError as exc:
        logger.warning(
            "cannot list the cluster's volumes: its /shared snapshot will not be retired",
            extra={"run_id": run_id, "error": exc.response.get("Error", {}).get("Code")},
        )
        return list(known)


def check_deleted(run_id: str, polls: int, max_polls: int) -> ClusterStep:
    store = runs.store()
    run = store.get_run(run_id, CLUSTER_FIELDS) or RunRecord(run_id=run_id)
    name = run.cluster_name
    polls += 1
    if not name:
        return ClusterStep(name=None, status="NOT_CREATED", polls=polls, deleted=True)
    if run.cluster_state == CLUSTER_DELETE_AWAITS_CREATE:
        settled = settle_pending_create(run_id)
        if settled.status == CLUSTER_DELETE_AWAITS_CREATE or settled.deleted:
            if not settled.deleted and polls >= max_polls:
                raise ClusterTimeoutError(
                    f"cluster {name}: its create may still be in flight after {polls} deletion checks"
                )
            return ClusterStep(name=name, status=settled.status, polls=polls, deleted=settled.deleted)
        run = store.get_run(run_id, CLUSTER_FIELDS) or run
    try:
        info = api().describe_cluster(name)
    except ClusterNotFoundError:
        seen = store.get_run(run_id, ["compute_nodes"])
        closed = nodes.close(seen.compute_nodes, clock.now()) if seen and seen.compute_nodes else None
        store.update_run(
            run_id,
            cluster_state="DELETED",
            cluster_deleted=True,
            cluster_deleted_at=clock.now_iso(),
            **({"compute_nodes": closed} if closed else {}),
        )
        return ClusterStep(name=name, status="DELETED", polls=polls, deleted=True)
    if info.status != run.cluster_state:
        store.update_run(run_id, cluster_state=info.status)
    if info.status == "DELETE_FAILED":
        raise_for_cluster_failure(info)
    if polls >= max_polls:
        raise ClusterTimeoutError(f"cluster {name} still {info.status} after {polls} deletion checks")
    return ClusterStep(name=name, status=info.status, polls=polls)


def delete(run_id: str) -> ClusterStep:
    outcome = request_deletion(run_id)
    return ClusterStep(name=outcome.name, status=outcome.status, deleted=outcome.deleted)


class DryRun(BaseModel):
    """What ParallelCluster said of a configuration sent with ``dryrun=true``."""

    ok: bool
    status: str
    cluster_name: str | None = None
    message: str = ""
    warnings: list[str] = []


def dryrun(run_fields: dict[str, Any]) -> DryRun:
    """``cryopilot smoke``: the configuration a run of ``run_fields`` (run_id, dataset,
    cluster_name, data_s3_uri, FSx size) would get, sent to the ParallelCluster API with
    ``dryrun=true``. The API validates it and answers 412 when the create would succeed; nothing is
    created and nothing is written, so nothing costs."""
    settings = get_settings()
    try:
        run = RunRecord.model_validate(run_fields)
        config = config_yaml_for(run, settings)
    except ValidationError as exc:
        return DryRun(ok=False, status="INVALID", message=validation_message(exc))
    name = run.cluster_name
    try:
        info = api().create_cluster(str(name), config, dryrun=True)
    except ClusterConfigError as exc:
        errors = [str(e.get("message")) for e in exc.details.get("validation_errors") or []]
        first = str(exc).splitlines()[0]
        return DryRun(ok=False, status="REJECTED", cluster_name=name, message="; ".join([first, *errors]))
    except CryopilotError as exc:
        return DryRun(
            ok=False, status=type(exc).__name__, cluster_name=name, message=str(exc).splitlines()[0]
        )
    warnings = [m.line() for m in info.validation_messages]
    return DryRun(ok=info.status == "DRYRUN_OK", status=info.status, cluster_name=name, warnings=warnings)
