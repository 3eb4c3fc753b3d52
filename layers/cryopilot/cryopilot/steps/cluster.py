"""The cluster steps of a run: create, wait until ready, delete, wait until gone."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from cryopilot.adapters import aws, runs
from cryopilot.adapters.observability import logger
from cryopilot.adapters.settings import Settings, get_settings
from cryopilot.core import clock
from cryopilot.core.errors import (
    CapacityError,
    ClusterNotFoundError,
    ClusterTimeoutError,
)
from cryopilot.domain.record import RunRecord


class ClusterStep(BaseModel):
    name: str | None
    status: str
    polls: int = 0
    ready: bool = False
    deleted: bool = False
    head_node_instance_id: str | None = None


@aws.cached_factory
def api() -> Any:
    """The ParallelCluster API client (built once per Lambda container)."""
    from cryopilot.adapters.pcluster import PClusterClient

    settings = get_settings()
    return PClusterClient(settings.pcluster_api_url, settings.region)


def cluster_params(settings: Settings) -> Any:
    from cryopilot.domain.clusterconfig.params import ClusterParams

    subnets = settings.compute_subnets or [settings.head_node_subnet_id]
    return ClusterParams(
        region=settings.region,
        head_node_subnet_id=settings.head_node_subnet_id,
        compute_subnet_ids=subnets,
        head_node_instance_type=settings.head_node_instance_type,
        gpu8_instance_type=settings.gpu8_instance_type,
        gpu4_instance_type=settings.gpu4_instance_type,
        gpu1_instance_type=settings.gpu1_instance_type,
        licence_secret_arn=settings.licence_secret_arn,
        bootstrap_s3_uri=f"s3://{settings.artifacts_bucket}/headnode/",
        results_s3_uri=f"s3://{settings.results_bucket}/",
        gpu8_fallback_instance_types=settings.fallback_gpu8_types,
        head_node_policy_arns=settings.head_node_policies,
    )


def placements(settings: Settings) -> list[Any]:
    """Where the cluster may go, in order: the configured placement, then the capacity fallbacks."""
    from cryopilot.domain.clusterconfig.params import capacity_fallbacks

    return list(capacity_fallbacks(cluster_params(settings)))


_CLUSTER_FIELDS = [
    "dataset",
    "cluster_name",
    "cluster_state",
    "data_s3_uri",
    "placement_attempt",
    "abandoned_clusters",
    "layout",
]


def _require_run(run_id: str) -> RunRecord:
    run = runs.store().get_run(run_id, _CLUSTER_FIELDS)
    if run is None:
        raise ClusterNotFoundError(f"run {run_id} has no record")
    return run


def config_yaml_for(run: RunRecord | Mapping[str, Any], settings: Settings) -> str:
    """The configuration for the run's current placement (``placement_attempt``, 0 = as configured).
    ``run``: its record, or the record's fields (run_id, dataset, cluster_name, data_s3_uri)."""
    from cryopilot.domain.clusterconfig.build import build_cluster_config, render_yaml
    from cryopilot.domain.clusterconfig.params import ClusterRequest

    if not isinstance(run, RunRecord):
        run = RunRecord.model_validate(run)
    request = ClusterRequest(
        run_id=run.run_id,
        dataset=run.dataset,
        cluster_name=run.cluster_name,
        data_s3_uri=run.data_s3_uri,
        results_s3_uri=f"s3://{settings.results_bucket}/runs/{run.run_id}/",
        stack_name=settings.stack_name,
        gpu8_static_nodes=1 if run.layout == "whitepaper" else 0,
    )
    placement = placements(settings)[run.placement_attempt or 0]
    return str(render_yaml(build_cluster_config(request, placement.params)))


def create(run_id: str) -> ClusterStep:
    """Request the run's cluster; idempotent (a retried create adopts the cluster this run owns)."""
    settings = get_settings()
    store = runs.store()
    run = _require_run(run_id)
    name = run.cluster_name
    if not name:
        raise ClusterNotFoundError(f"run {run_id} has no cluster name")
    store.update_run(
        run_id,
        current_step="create_cluster",
        cluster_state="CREATE_REQUESTED",
        cluster_requested_at=clock.now_iso(),
    )
    info = api().create_or_adopt(name, config_yaml_for(run, settings), run_id)
    attempt = run.placement_attempt or 0
    store.update_run(run_id, cluster_state=info.status, placement=placements(settings)[attempt].label)
    return ClusterStep(name=name, status=info.status)


def fallback(run_id: str, error: Any = None) -> ClusterStep:
    """After a capacity failure: abandon (delete) the failed cluster and move the run to the next
    placement, or raise :class:`CapacityError` when every placement has been tried."""
    from cryopilot.core.naming import cluster_name_for
    from cryopilot.steps.notify import parse_error

    settings = get_settings()
    store = runs.store()
    run = _require_run(run_id)
    options = placements(settings)
    attempt = run.placement_attempt or 0
    failed = run.cluster_name
    if not failed:
        raise ClusterNotFoundError(f"run {run_id} has no cluster name")
    _, reason = parse_error(error) if error is not None else ("CapacityError", "no capacity")
    api().delete_cluster(failed, missing_ok=True)
    store.append_to(
        run_id, "placements_tried", {"label": options[attempt].label, "cluster": failed, "reason": reason}
    )
    abandoned = [*run.abandoned_clusters, failed]
    if attempt + 1 >= len(options):
        store.update_run(run_id, abandoned_clusters=abandoned, cluster_state="DELETE_IN_PROGRESS")
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
    )
    logger.info("capacity fallback", extra={"run_id": run_id, "failed": failed, "next": options[nxt].label})
    return ClusterStep(name=name, status="NOT_CREATED")


def check(run_id: str, polls: int, max_polls: int) -> ClusterStep:
    from cryopilot.adapters.pcluster import raise_for_cluster_failure

    store = runs.store()
    run = _require_run(run_id)
    name = run.cluster_name
    if not name:
        raise ClusterNotFoundError(f"run {run_id} has no cluster name")
    polls += 1
    info = api().describe_cluster(name)
    if info.status != run.cluster_state:
        store.update_run(run_id, cluster_state=info.status)
    raise_for_cluster_failure(info)
    if info.status == "CREATE_COMPLETE":
        if not info.head_node_instance_id:
            raise ClusterTimeoutError(f"cluster {name} is complete but reports no head node")
        store.update_run(
            run_id,
            head_node_instance_id=info.head_node_instance_id,
            cluster_ready_at=clock.now_iso(),
            current_step="cluster_ready",
        )
        placement = placements(get_settings())[run.placement_attempt or 0]
        store.put_context(
            run_id,
            head_node_instance_id=info.head_node_instance_id,
            gpu8_instance_type=placement.params.gpu8_instance_type,
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


def delete(run_id: str) -> ClusterStep:
    store = runs.store()
    run = store.get_run(run_id, [*_CLUSTER_FIELDS, "status"]) or RunRecord(run_id=run_id)
    for abandoned in run.abandoned_clusters:
        # clusters left behind by a capacity fallback: make sure their deletion is requested
        api().delete_cluster(abandoned, missing_ok=True)
    name = run.cluster_name
    if not name or run.cluster_state in (None, "NOT_CREATED"):
        return ClusterStep(name=name, status="NOT_CREATED", deleted=True)
    try:
        info = api().delete_cluster(name)
        status = info.status if info is not None else "DELETE_IN_PROGRESS"
    except ClusterNotFoundError:
        store.update_run(
            run_id, cluster_state="DELETED", cluster_deleted=True, cluster_deleted_at=clock.now_iso()
        )
        return ClusterStep(name=name, status="DELETED", deleted=True)
    fields: dict[str, Any] = {"cluster_state": status, "delete_requested_at": clock.now_iso()}
    if run.status == "SUCCEEDED":
        # the map is exported and mailed: a failure from here on is the deletion's, not the export's
        fields["current_step"] = "delete_cluster"
    store.update_run(run_id, **fields)
    logger.info("cluster deletion requested", extra={"run_id": run_id, "cluster": name})
    return ClusterStep(name=name, status=status)


def check_deleted(run_id: str, polls: int, max_polls: int) -> ClusterStep:
    from cryopilot.adapters.pcluster import raise_for_cluster_failure

    store = runs.store()
    run = store.get_run(run_id, _CLUSTER_FIELDS) or RunRecord(run_id=run_id)
    name = run.cluster_name
    polls += 1
    if not name:
        return ClusterStep(name=None, status="NOT_CREATED", polls=polls, deleted=True)
    try:
        info = api().describe_cluster(name)
    except ClusterNotFoundError:
        store.update_run(
            run_id, cluster_state="DELETED", cluster_deleted=True, cluster_deleted_at=clock.now_iso()
        )
        return ClusterStep(name=name, status="DELETED", polls=polls, deleted=True)
    if info.status != run.cluster_state:
        store.update_run(run_id, cluster_state=info.status)
    if info.status == "DELETE_FAILED":
        raise_for_cluster_failure(info)
    if polls >= max_polls:
        raise ClusterTimeoutError(f"cluster {name} still {info.status} after {polls} deletion checks")
    return ClusterStep(name=name, status=info.status, polls=polls)
