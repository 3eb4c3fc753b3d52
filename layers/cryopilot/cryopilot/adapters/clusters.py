"""The run's cluster as ParallelCluster holds it: the API client, where a cluster may go (the
deployment's parameters and their capacity fallbacks), and the request to delete it.

The cluster step and the cleanup function share these; the steps themselves stay in ``steps/``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from cryopilot.adapters import aws, runs
from cryopilot.adapters.observability import logger
from cryopilot.adapters.pcluster import PClusterClient
from cryopilot.adapters.settings import Settings, get_settings
from cryopilot.core import clock
from cryopilot.core.errors import ClusterNotFoundError
from cryopilot.domain.clusterconfig.build import build_cluster_config, render_yaml
from cryopilot.domain.clusterconfig.params import (
    CapacityFallback,
    ClusterParams,
    ClusterRequest,
    capacity_fallbacks,
)
from cryopilot.domain.record import RunRecord

#: The record fields the cluster steps read (a projection: the record grows with every stage).
CLUSTER_FIELDS = [
    "dataset",
    "cluster_name",
    "cluster_state",
    "data_s3_uri",
    "placement_attempt",
    "abandoned_clusters",
    "layout",
]


class Deletion(BaseModel):
    name: str | None
    status: str
    deleted: bool = False


@aws.cached_factory
def api() -> PClusterClient:
    """The ParallelCluster API client (built once per Lambda container)."""
    settings = get_settings()
    return PClusterClient(settings.pcluster_api_url, settings.region)


def cluster_params(settings: Settings) -> ClusterParams:
    """The deployment's cluster parameters (the stack's subnets, instance types, buckets)."""
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


def placements(settings: Settings) -> list[CapacityFallback]:
    """Where the cluster may go, in order: the configured placement, then the capacity fallbacks."""
    return list(capacity_fallbacks(cluster_params(settings)))


def config_yaml_for(run: RunRecord | Mapping[str, Any], settings: Settings) -> str:
    """The configuration for the run's current placement (``placement_attempt``, 0 = as configured).
    ``run``: its record, or the record's fields (run_id, dataset, cluster_name, data_s3_uri)."""
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


def request_deletion(run_id: str) -> Deletion:
    """Ask ParallelCluster to delete the run's cluster (and any a capacity fallback abandoned),
    and note it on the run record. Shared by the delete step and the cleanup function."""
    store = runs.store()
    run = store.get_run(run_id, [*CLUSTER_FIELDS, "status"]) or RunRecord(run_id=run_id)
    for abandoned in run.abandoned_clusters:
        # clusters left behind by a capacity fallback: make sure their deletion is requested
        api().delete_cluster(abandoned, missing_ok=True)
    name = run.cluster_name
    if not name or run.cluster_state in (None, "NOT_CREATED"):
        return Deletion(name=name, status="NOT_CREATED", deleted=True)
    try:
        info = api().delete_cluster(name)
        status = info.status if info is not None else "DELETE_IN_PROGRESS"
    except ClusterNotFoundError:
        store.update_run(
            run_id, cluster_state="DELETED", cluster_deleted=True, cluster_deleted_at=clock.now_iso()
        )
        return Deletion(name=name, status="DELETED", deleted=True)
    fields: dict[str, Any] = {"cluster_state": status, "delete_requested_at": clock.now_iso()}
    if run.status == "SUCCEEDED":
        # the map is exported and mailed: a failure from here on is the deletion's, not the export's
        fields["current_step"] = "delete_cluster"
    store.update_run(run_id, **fields)
    logger.info("cluster deletion requested", extra={"run_id": run_id, "cluster": name})
    return Deletion(name=name, status=status)
