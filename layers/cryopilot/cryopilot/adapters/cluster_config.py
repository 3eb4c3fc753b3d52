"""What the run's cluster is built from: the deployment's cluster parameters, the placements a
cluster may take (the configured one, then the capacity fallbacks) and the configuration sent to
ParallelCluster for a run.

Only the cluster step and the operator CLI load this (it brings in the configuration's schema and
YAML); deleting a cluster needs none of it (:mod:`.clusters`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from cryopilot.adapters.settings import Settings
from cryopilot.domain.clusterconfig.build import build_cluster_config, render_yaml
from cryopilot.domain.clusterconfig.params import (
    CapacityFallback,
    ClusterParams,
    ClusterRequest,
    capacity_fallbacks,
)
from cryopilot.domain.record import RunRecord


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
        gpu4_fallback_instance_types=settings.fallback_gpu4_types,
        gpu1_fallback_instance_types=settings.fallback_gpu1_types,
        insufficient_capacity_timeout_seconds=settings.insufficient_capacity_timeout_seconds,
        head_node_policy_arns=settings.head_node_policies,
    )


def placements(settings: Settings) -> list[CapacityFallback]:
    """Where the cluster may go, in order: the configured placement, then the capacity fallbacks."""
    return list(capacity_fallbacks(cluster_params(settings)))


def config_yaml_for(run: RunRecord | Mapping[str, Any], settings: Settings) -> str:
    """The configuration for the run's current placement (``placement_attempt``, 0 = as configured).
    ``run``: its record, or the record's fields (run_id, dataset, cluster_name, data_s3_uri, and the
    FSx size and throughput Validate chose with the storage model)."""
    if not isinstance(run, RunRecord):
        run = RunRecord.model_validate(run)
    request = ClusterRequest(
        run_id=run.run_id,
        dataset=run.dataset,
        cluster_name=run.cluster_name,
        data_s3_uri=run.data_s3_uri,
        results_s3_uri=f"s3://{settings.results_bucket}/runs/{run.run_id}/",
        stack_name=settings.stack_name,
        dataset_size_gib=None if run.data_bytes is None else math.ceil(run.data_bytes / 1024**3),
        fsx_storage_gib=run.fsx_storage_gib,
        fsx_throughput_mb_per_tib=run.fsx_throughput_mb_per_tib,
        gpu8_static_nodes=1 if run.layout == "whitepaper" else 0,
        reference_s3_uri=(run.reference or {}).get("association_uri"),
        spot_queues=run.spot_queues,
    )
    placement = placements(settings)[run.placement_attempt or 0]
    return str(render_yaml(build_cluster_config(request, placement.params)))
