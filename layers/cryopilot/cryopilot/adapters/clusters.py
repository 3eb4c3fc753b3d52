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
from cryopilot.core.status import (
    CLUSTER_CREATE_MAY_BE_PENDING,
    CLUSTER_DELETE_AWAITS_CREATE,
    CREATE_OUTCOME_WINDOW_SECONDS,
)
from cryopilot.domain.record import RunRecord

#: The record fields the cluster steps read (a projection: the record grows with every stage).
CLUSTER_FIELDS = [
    "dataset",
    "cluster_name",
    "cluster_state",
    "cluster_requested_epoch",
    "data_s3_uri",
    "placement_attempt",
    "abandoned_clusters",
    "layout",
    "spot_queues",
    "data_bytes",
    "fsx_storage_gib",
    "reference",
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
    return PClusterClient(settings.pcluster_api_url, settings.region, credentials=aws.credentials())


def request_deletion(run_id: str) -> Deletion:
    """Ask ParallelCluster to delete the run's cluster (and any a capacity fallback abandoned),
    and note it on the run record. Shared by the delete step and the cleanup function.

    A 404 while the run's create may still be in flight is not "deleted": the record then says
    :data:`CLUSTER_DELETE_AWAITS_CREATE`, and :func:`settle_pending_create` (the deletion checks,
    the cleanup function, the janitor) looks again until the create's outcome is known."""
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
        if run.cluster_state in CLUSTER_CREATE_MAY_BE_PENDING and not create_outcome_known(run):
            if store.update_run_if_cluster_state(
                run_id,
                CLUSTER_CREATE_MAY_BE_PENDING,
                cluster_state=CLUSTER_DELETE_AWAITS_CREATE,
                delete_requested_at=clock.now_iso(),
            ):
                logger.info(
                    "no cluster yet, its create may be in flight: deletion pending",
                    extra={"run_id": run_id, "cluster": name},
                )
                return Deletion(name=name, status=CLUSTER_DELETE_AWAITS_CREATE)
            # the create recorded its answer in the meantime: ask again, knowing it
            return request_deletion(run_id)
        _record_deleted(run_id)
        return Deletion(name=name, status="DELETED", deleted=True)
    fields: dict[str, Any] = {"cluster_state": status, "delete_requested_at": clock.now_iso()}
    if run.status == "SUCCEEDED":
        # the map is exported and mailed: a failure from here on is the deletion's, not the export's
        fields["current_step"] = "delete_cluster"
    store.update_run(run_id, **fields)
    logger.info("cluster deletion requested", extra={"run_id": run_id, "cluster": name})
    return Deletion(name=name, status=status)


def create_outcome_known(run: RunRecord, now: float | None = None) -> bool:
    """True when the run's create can no longer make a cluster: its request is older than
    :data:`CREATE_OUTCOME_WINDOW_SECONDS` (a record without the time is treated as old)."""
    requested = run.cluster_requested_epoch
    now = clock.now() if now is None else now
    return requested is None or now - requested > CREATE_OUTCOME_WINDOW_SECONDS


def settle_pending_create(run_id: str) -> Deletion:
    """For a run whose deletion waits on its create (:data:`CLUSTER_DELETE_AWAITS_CREATE`): look
    again. The cluster appeared → its deletion is requested now; still no cluster and the create
    can no longer make one → none was created (``NOT_CREATED``: nothing left to delete); otherwise
    the deletion stays pending."""
    store = runs.store()
    run = store.get_run(run_id, CLUSTER_FIELDS) or RunRecord(run_id=run_id)
    name = run.cluster_name
    if not name or run.cluster_state != CLUSTER_DELETE_AWAITS_CREATE:
        return Deletion(name=name, status=run.cluster_state or "NOT_CREATED")
    try:
        api().describe_cluster(name)
    except ClusterNotFoundError:
        if create_outcome_known(run):
            # the create never made it: there was nothing to delete
            store.update_run(run_id, cluster_state="NOT_CREATED")
            return Deletion(name=name, status="NOT_CREATED", deleted=True)
        return Deletion(name=name, status=CLUSTER_DELETE_AWAITS_CREATE)
    logger.info("the cluster of a cancelled create appeared: deleting it", extra={"run_id": run_id})
    return request_deletion(run_id)


def _record_deleted(run_id: str) -> None:
    runs.store().update_run(
        run_id, cluster_state="DELETED", cluster_deleted=True, cluster_deleted_at=clock.now_iso()
    )
