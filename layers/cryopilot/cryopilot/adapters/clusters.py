"""The run's cluster as ParallelCluster holds it: the API client and the request to delete it.

The cluster step and the cleanup function share these; the steps themselves stay in ``steps/``.
What a cluster is built from (its configuration, its placements) is in :mod:`.cluster_config`, which
only the cluster step and the operator CLI load.
"""

from typing import Any

from pydantic import BaseModel

from cryopilot.adapters import aws, runs
from cryopilot.adapters.observability import logger
from cryopilot.adapters.pcluster import PClusterClient
from cryopilot.adapters.settings import get_settings
from cryopilot.core import clock
from cryopilot.core.errors import ClusterNotFoundError
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
    "data_bytes",
    "fsx_storage_gib",
    "fsx_throughput_mb_per_tib",
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
