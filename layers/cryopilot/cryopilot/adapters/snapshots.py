"""The EBS snapshots of the runs' /shared volumes (cryoSPARC's install and database).

ParallelCluster snapshots the /shared volume when its cluster is deleted (``DeletionPolicy:
Snapshot``). The volume carries the run's tags (the cluster configuration's ``Tags`` are
propagated to all the cluster resources: ParallelCluster user guide, Tags section), but whether
the snapshot made at deletion carries them is not documented. So the controller finds the run's
volumes by tag while the cluster lives, and after the deletion finds the snapshots by their
``VolumeId`` (EC2 DescribeSnapshots, filter ``volume-id``) and tags them itself. The janitor then
knows this stack's snapshots by tag and deletes those older than ``SnapshotRetentionDays``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryopilot.core.naming import TAG_DATASET, TAG_RUN_ID, TAG_STACK


@dataclass(frozen=True)
class Snapshot:
    snapshot_id: str
    volume_id: str
    started: float  # epoch seconds
    size_gib: int
    run_id: str | None = None

    def as_record(self) -> dict[str, Any]:
        return {
            "id": self.snapshot_id,
            "volume_id": self.volume_id,
            "started": self.started,
            "gib": self.size_gib,
        }


def _epoch(value: Any) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    return float(value)


def _snapshot(doc: dict[str, Any]) -> Snapshot:
    tags = {t.get("Key"): t.get("Value") for t in doc.get("Tags") or []}
    return Snapshot(
        snapshot_id=str(doc["SnapshotId"]),
        volume_id=str(doc.get("VolumeId") or ""),
        started=_epoch(doc["StartTime"]),
        size_gib=int(doc.get("VolumeSize") or 0),
        run_id=tags.get(TAG_RUN_ID),
    )


def run_volume_ids(ec2: Any, run_id: str) -> list[str]:
    """The EBS volumes of the run's cluster (the /shared volume and the head node's root volume)."""
    ids: list[str] = []
    pages = ec2.get_paginator("describe_volumes").paginate(
        Filters=[{"Name": f"tag:{TAG_RUN_ID}", "Values": [run_id]}]
    )
    for page in pages:
        ids += [str(v["VolumeId"]) for v in page.get("Volumes", [])]
    return sorted(ids)


def tag_snapshots_of(
    ec2: Any,
    volume_ids: list[str],
    *,
    stack: str,
    run_id: str,
    dataset: str | None,
    not_before: float | None = None,
) -> list[Snapshot]:
    """The snapshots this account made of ``volume_ids`` since ``not_before`` (the cluster's
    deletion: the snapshot its DeletionPolicy takes, not a backup someone else made of the volume
    while it lived), tagged as this stack's and the run's."""
    found: list[Snapshot] = []
    pages = ec2.get_paginator("describe_snapshots").paginate(
        OwnerIds=["self"], Filters=[{"Name": "volume-id", "Values": volume_ids}]
    )
    for page in pages:
        found += [_snapshot(s) for s in page.get("Snapshots", [])]
    if not_before is not None:
        found = [s for s in found if s.started >= not_before]
    if found:
        tags = [{"Key": TAG_STACK, "Value": stack}, {"Key": TAG_RUN_ID, "Value": run_id}]
        if dataset:
            tags.append({"Key": TAG_DATASET, "Value": dataset})
        ec2.create_tags(Resources=[s.snapshot_id for s in found], Tags=tags)
    return found


def stack_snapshots(ec2: Any, stack: str) -> list[Snapshot]:
    """Every snapshot tagged as this stack's."""
    found: list[Snapshot] = []
    pages = ec2.get_paginator("describe_snapshots").paginate(
        OwnerIds=["self"], Filters=[{"Name": f"tag:{TAG_STACK}", "Values": [stack]}]
    )
    for page in pages:
        found += [_snapshot(s) for s in page.get("Snapshots", [])]
    return found


def delete_snapshot(ec2: Any, snapshot_id: str) -> None:
    ec2.delete_snapshot(SnapshotId=snapshot_id)
