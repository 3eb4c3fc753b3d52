"""The cluster configuration's schema: ParallelCluster 3.x sections as frozen pydantic models.

Field names are snake_case and dump as PascalCase (:meth:`ClusterConfig.to_dict`); unknown fields are
refused, as ParallelCluster refuses them.
"""

import re
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_pascal

#: The API's generated models also refuse names shorter than 5 characters (``ClusterInfoSummary``).
_QUEUE_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,24}$")


class _Cfg(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_pascal, populate_by_name=True, extra="forbid", frozen=True, defer_build=True
    )


class Tag(_Cfg):
    key: str
    value: str


class Image(_Cfg):
    os: str
    custom_ami: str | None = None


class TopLevelImds(_Cfg):
    imds_support: Literal["v1.0", "v2.0"] = "v2.0"


class HeadNodeImds(_Cfg):
    secured: bool = True


class HeadNodeNetworking(_Cfg):
    subnet_id: str
    additional_security_groups: list[str] | None = None


class HeadNodeSsh(_Cfg):
    key_name: str | None = None
    allowed_ips: str | None = None


class RootVolume(_Cfg):
    size: int | None = None
    encrypted: bool | None = None
    volume_type: str | None = None


class EphemeralVolume(_Cfg):
    mount_dir: str


class HeadNodeLocalStorage(_Cfg):
    root_volume: RootVolume | None = None


class QueueLocalStorage(_Cfg):
    root_volume: RootVolume | None = None
    ephemeral_volume: EphemeralVolume | None = None


class CustomAction(_Cfg):
    script: str
    args: list[str] | None = None


class CustomActions(_Cfg):
    on_node_start: CustomAction | None = None
    on_node_configured: CustomAction | None = None


class AdditionalIamPolicy(_Cfg):
    policy: str


class S3Access(_Cfg):
    bucket_name: str
    key_name: str | None = None
    enable_write_access: bool | None = None


class Iam(_Cfg):
    additional_iam_policies: list[AdditionalIamPolicy] | None = None
    s3_access: list[S3Access] | None = Field(default=None, alias="S3Access")


class HeadNode(_Cfg):
    instance_type: str
    networking: HeadNodeNetworking
    ssh: HeadNodeSsh | None = None
    local_storage: HeadNodeLocalStorage | None = None
    custom_actions: CustomActions | None = None
    iam: Iam | None = None
    imds: HeadNodeImds | None = None


class Efa(_Cfg):
    enabled: bool
    gdr_support: bool | None = None


class ComputeResource(_Cfg):
    name: str
    instance_type: str
    min_count: int = 0
    max_count: int
    efa: Efa | None = None
    disable_simultaneous_multithreading: bool | None = None
    #: Slurm node weight of the resource's dynamic nodes (ParallelCluster >= 3.7; lower is preferred).
    dynamic_node_priority: int | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _QUEUE_NAME_RE.match(value):
            raise ValueError(f"invalid compute resource name {value!r}")
        return value


class PlacementGroup(_Cfg):
    enabled: bool


class QueueNetworking(_Cfg):
    subnet_ids: list[str]
    placement_group: PlacementGroup | None = None
    additional_security_groups: list[str] | None = None


class ComputeSettings(_Cfg):
    local_storage: QueueLocalStorage | None = None


class SlurmQueue(_Cfg):
    name: str
    capacity_type: Literal["ONDEMAND", "SPOT", "CAPACITY_BLOCK"] = "ONDEMAND"
    compute_resources: list[ComputeResource]
    networking: QueueNetworking
    compute_settings: ComputeSettings | None = None
    custom_actions: CustomActions | None = None
    iam: Iam | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _QUEUE_NAME_RE.match(value) or value == "default":
            raise ValueError(f"invalid queue name {value!r}")
        return value


class SlurmSettings(_Cfg):
    scaledown_idletime: int


class Scheduling(_Cfg):
    scheduler: Literal["slurm"] = "slurm"
    slurm_settings: SlurmSettings
    slurm_queues: list[SlurmQueue]


class EbsSettings(_Cfg):
    volume_type: str | None = None
    size: int | None = None
    encrypted: bool | None = None
    deletion_policy: Literal["Delete", "Retain", "Snapshot"] | None = None


class DataRepositoryAssociation(_Cfg):
    name: str
    data_repository_path: str
    file_system_path: str
    batch_import_meta_data_on_create: bool | None = None
    auto_import_policy: list[Literal["NEW", "CHANGED", "DELETED"]] | None = None
    auto_export_policy: list[Literal["NEW", "CHANGED", "DELETED"]] | None = None


class FsxLustreSettings(_Cfg):
    storage_capacity: int
    deployment_type: Literal["SCRATCH_1", "SCRATCH_2", "PERSISTENT_1", "PERSISTENT_2"]
    per_unit_storage_throughput: int | None = None
    data_compression_type: Literal["LZ4"] | None = None
    deletion_policy: Literal["Delete", "Retain"] | None = None
    data_repository_associations: list[DataRepositoryAssociation] | None = None

    @model_validator(mode="after")
    def _dra_needs_persistent_2(self) -> Self:
        if self.data_repository_associations and self.deployment_type != "PERSISTENT_2":
            raise ValueError("data repository associations need DeploymentType PERSISTENT_2")
        return self


class SharedStorage(_Cfg):
    name: Annotated[str, Field(max_length=30)]
    storage_type: Literal["Ebs", "FsxLustre"]
    mount_dir: str
    ebs_settings: EbsSettings | None = None
    fsx_lustre_settings: FsxLustreSettings | None = None

    @model_validator(mode="after")
    def _settings_match_type(self) -> Self:
        if (self.storage_type == "Ebs") != (self.ebs_settings is not None) or (
            self.storage_type == "FsxLustre"
        ) != (self.fsx_lustre_settings is not None):
            raise ValueError("the settings section must match StorageType")
        return self


class CloudWatchLogs(_Cfg):
    enabled: bool = True
    retention_in_days: int | None = None
    deletion_policy: Literal["Delete", "Retain"] | None = None


class Logs(_Cfg):
    cloud_watch: CloudWatchLogs


class Monitoring(_Cfg):
    logs: Logs | None = None
    detailed_monitoring: bool | None = None


class Timeouts(_Cfg):
    head_node_bootstrap_timeout: int | None = None


class DevSettings(_Cfg):
    timeouts: Timeouts | None = None


class ClusterConfig(_Cfg):
    """A whole cluster configuration (the document ``createCluster`` takes)."""

    region: str
    image: Image
    imds: TopLevelImds | None = None
    head_node: HeadNode
    scheduling: Scheduling
    shared_storage: list[SharedStorage] | None = None
    monitoring: Monitoring | None = None
    tags: list[Tag] | None = None
    dev_settings: DevSettings | None = None

    def to_dict(self) -> dict[str, object]:
        """The configuration as ParallelCluster reads it: PascalCase keys, unset fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def queue(self, name: str) -> SlurmQueue:
        for queue in self.scheduling.slurm_queues:
            if queue.name == name:
                return queue
        raise KeyError(name)
