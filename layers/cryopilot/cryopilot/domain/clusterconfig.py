"""The ParallelCluster 3.x cluster configuration cryopilot sends, as pydantic models.

The configuration is built from two inputs:

* :class:`ClusterParams` — stack-level settings (subnets, instance types, buckets, sizes), the same
  for every run of one deployment;
* :class:`ClusterRequest` — what one run needs (run id, dataset, S3 prefixes, extra tags).

:func:`build_cluster_config` turns them into a :class:`ClusterConfig` and :func:`render_yaml` into
the YAML document the ParallelCluster API's ``createCluster`` takes (PascalCase keys, unset fields
left out). There are no string templates: every key is a model field, and every configuration this
module can produce is loaded with ``aws-parallelcluster``'s own ``ClusterSchema`` in the tests.

Targets ParallelCluster :data:`PCLUSTER_VERSION`. Facts checked against its schema and validators:

* cluster names: a letter, then letters, digits and hyphens, 5 to 60 characters
  (``PCLUSTER_NAME_REGEX``/``PCLUSTER_NAME_MAX_LENGTH``; the API's models add the minimum of 5);
* queue and compute-resource names: ``^[a-z][a-z0-9-]*$``, at most 25 characters;
  shared-storage names at most 30;
* FSx for Lustre data repository associations (DRAs) exist only for ``PERSISTENT_2`` file systems
  and exclude ``ImportPath``/``ExportPath``; ``PERSISTENT_2`` capacity is 1200 GiB or a multiple of
  2400 GiB and needs ``PerUnitStorageThroughput`` in {125, 250, 500, 1000};
* the head node's security group always gets an SSH ingress rule from ``HeadNode/Ssh/AllowedIps``
  (default ``0.0.0.0/0``, even without a key pair): cryopilot sets it to ``127.0.0.1/32`` so that rule
  admits nothing from the network — operators reach the head node through SSM.

The head node's ``OnNodeConfigured`` action runs ``headnode-setup.sh`` from the bootstrap prefix with
the arguments of :func:`headnode_setup_args`: non-secret values only. The script reads the cryoSPARC
licence from Secrets Manager itself, so the licence never appears in the configuration, the
CloudFormation stack, a process list or a log line.
"""

from __future__ import annotations

import ipaddress
import math
import re
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_pascal

# Tag keys cryopilot puts on every cluster resource (the janitor and cost reports read them).
from cryopilot.core.naming import CLUSTER_NAME_MAX_LENGTH, CLUSTER_NAME_RE, TAG_DATASET, TAG_RUN_ID, TAG_STACK
from cryopilot.core.queues import GPU1_QUEUE, GPU4_QUEUE, GPU8_QUEUE, NOMINAL_QUEUE_GPUS
from cryopilot.domain.catalogue import Catalogue

__all__ = [
    "TAG_DATASET",
    "TAG_RUN_ID",
    "TAG_STACK",
    "ClusterConfig",
    "ClusterParams",
    "ClusterRequest",
    "build_cluster_config",
    "capacity_fallbacks",
    "render_yaml",
]

#: The ParallelCluster version the configuration targets (and the API the stack deploys).
PCLUSTER_VERSION = "3.16.1"


#: Mount points on every node.
SHARED_MOUNT_DIR = "/shared"
FSX_MOUNT_DIR = "/fsx"
#: Where the dataset and the results appear inside the FSx file system (under :data:`FSX_MOUNT_DIR`).
FSX_DATA_PATH = "/data"
FSX_RESULTS_PATH = "/results"
#: Instance-store NVMe of compute nodes, mounted (RAID 0 when several) by ParallelCluster;
#: the cryoSPARC lanes use it as the particle cache (``--ssdpath``).
SCRATCH_MOUNT_DIR = "/scratch"

#: Name of the head-node setup script inside the bootstrap prefix.
HEADNODE_SETUP_SCRIPT = "headnode-setup.sh"

SSM_CORE_POLICY_ARN = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"

#: The API's generated models also refuse names shorter than 5 characters (``ClusterInfoSummary``).
_QUEUE_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,24}$")
_SUBNET_RE = re.compile(r"^subnet-[0-9a-f]{8}(?:[0-9a-f]{9})?$")
_SG_RE = re.compile(r"^sg-[0-9a-f]{8}(?:[0-9a-f]{9})?$")
_AMI_RE = re.compile(r"^ami-[0-9a-f]{8}(?:[0-9a-f]{9})?$")
_INSTANCE_TYPE_RE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9-]+$")
_REGION_RE = re.compile(r"^[a-z]{2}(?:-[a-z]+)+-\d$")
_S3_PREFIX_RE = re.compile(r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/((?:[^/\s]+/)*)$")
_SECRET_ARN_RE = re.compile(r"^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:[A-Za-z0-9/_+=.@-]+$")
_POLICY_ARN_RE = re.compile(r"^arn:aws[a-z-]*:iam::(?:aws|\d{12}):policy/[A-Za-z0-9/_+=,.@-]+$")
_TAG_RE = re.compile(r"^[\w .:/=+\-@]*$")
_RESERVED_TAG_PREFIXES = ("aws:", "parallelcluster:")
_SUPPORTED_OSES = ("alinux2023", "ubuntu2204", "ubuntu2404", "rhel8", "rocky8", "rhel9", "rocky9")

#: Multi-GPU instance types known to support EFA (an EFA flag on any other type is left out).
EFA_INSTANCE_TYPES = frozenset(
    {
        "p3dn.24xlarge",
        "p4d.24xlarge",
        "p4de.24xlarge",
        "p5.48xlarge",
        "p5e.48xlarge",
        "p5en.48xlarge",
        "g5.48xlarge",
        "g6.48xlarge",
        "g6e.48xlarge",
    }
)


# --- inputs --------------------------------------------------------------------------------------


def _s3_prefix(value: str, what: str) -> str:
    if not _S3_PREFIX_RE.match(value):
        raise ValueError(f"{what} must look like s3://bucket/prefix/ (ending in '/'), got {value!r}")
    return value


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b/`` → ``("bucket", "a/b/")``."""
    match = _S3_PREFIX_RE.match(uri)
    if not match:
        raise ValueError(f"not an S3 prefix: {uri!r}")
    return match.group(1), match.group(2)


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClusterParams(_Input):
    """Stack-level settings, the same for every run of one deployment."""

    region: str
    head_node_subnet_id: str
    compute_subnet_ids: Annotated[list[str], Field(min_length=1)] = Field(
        description="subnets for the compute queues, in order of preference; the first is used"
    )
    head_node_instance_type: str = "m6i.2xlarge"
    gpu8_instance_type: str = "p4d.24xlarge"
    gpu4_instance_type: str = "g6e.12xlarge"
    gpu1_instance_type: str = "p5.4xlarge"
    gpu8_fallback_instance_types: list[str] = Field(
        default_factory=lambda: ["g6e.48xlarge", "p5.48xlarge"],
        description="multi-GPU types tried, in order, when the gpu8 type has no capacity in any subnet",
    )
    max_gpu8_nodes: Annotated[int, Field(ge=1, le=1000)] = 4
    max_gpu4_nodes: Annotated[int, Field(ge=1, le=1000)] = 4
    max_gpu1_nodes: Annotated[int, Field(ge=1, le=1000)] = 8
    scaledown_idletime_minutes: Annotated[int, Field(ge=1, le=1440)] = 5
    shared_volume_size_gib: Annotated[int, Field(ge=35, le=16384)] = 500
    fsx_storage_gib: Annotated[int, Field(ge=1200)] = 1200
    fsx_throughput_mb_per_tib: Literal[125, 250, 500, 1000] = 500
    licence_secret_arn: str = Field(description="ARN of the Secrets Manager secret holding the licence")
    bootstrap_s3_uri: str = Field(description="s3://bucket/prefix/ holding the head-node scripts and agent")
    results_s3_uri: str = Field(description="s3://bucket/prefix/ under which each run's results go")
    additional_security_group_ids: list[str] | None = None
    head_node_policy_arns: list[str] = Field(
        default_factory=list,
        description="extra managed policies for the head node (the stack passes the one that may read"
        " the licence secret)",
    )
    os: str = "alinux2023"
    custom_ami: str | None = None
    cryosparc_version: Annotated[str, Field(pattern=r"^\d+\.\d+(?:\.\d+)?(?:\+\d+)?$")] = Field(
        default="5.0.3",
        description="CryoSPARC version installed on the head node; its major.minor must match the"
        " cryosparc-tools client the controller uses",
    )
    head_node_bootstrap_timeout_seconds: Annotated[int, Field(ge=1800, le=10800)] = 3600
    ssh_allowed_cidr: str = Field(
        default="127.0.0.1/32",
        description="source of the head node's SSH rule; the default admits nothing (use SSM)",
    )
    gpu8_efa_placement_group: bool = Field(
        default=True,
        description="EFA and a cluster placement group on the gpu8 queue (when the type has EFA)",
    )
    log_retention_days: Literal[1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365] = 14

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        if not _REGION_RE.match(value):
            raise ValueError(f"not an AWS region: {value!r}")
        return value

    @field_validator("head_node_subnet_id")
    @classmethod
    def _subnet(cls, value: str) -> str:
        if not _SUBNET_RE.match(value):
            raise ValueError(f"not a subnet id: {value!r}")
        return value

    @field_validator("compute_subnet_ids")
    @classmethod
    def _subnets(cls, value: list[str]) -> list[str]:
        bad = [s for s in value if not _SUBNET_RE.match(s)]
        if bad:
            raise ValueError(f"not subnet ids: {bad}")
        if len(set(value)) != len(value):
            raise ValueError("compute_subnet_ids has duplicates")
        return value

    @field_validator(
        "head_node_instance_type", "gpu8_instance_type", "gpu4_instance_type", "gpu1_instance_type"
    )
    @classmethod
    def _instance_type(cls, value: str) -> str:
        if not _INSTANCE_TYPE_RE.match(value):
            raise ValueError(f"not an EC2 instance type: {value!r}")
        return value

    @field_validator("gpu8_fallback_instance_types")
    @classmethod
    def _fallback_types(cls, value: list[str]) -> list[str]:
        bad = [t for t in value if not _INSTANCE_TYPE_RE.match(t)]
        if bad:
            raise ValueError(f"not EC2 instance types: {bad}")
        return value

    @field_validator("fsx_storage_gib")
    @classmethod
    def _fsx_size(cls, value: int) -> int:
        if value != 1200 and value % 2400:
            raise ValueError("FSx for Lustre PERSISTENT_2 capacity is 1200 GiB or a multiple of 2400 GiB")
        return value

    @field_validator("licence_secret_arn")
    @classmethod
    def _secret_arn(cls, value: str) -> str:
        if not _SECRET_ARN_RE.match(value):
            raise ValueError(
                "licence_secret_arn must be the ARN of a Secrets Manager secret (never a licence)"
            )
        return value

    @field_validator("bootstrap_s3_uri")
    @classmethod
    def _bootstrap(cls, value: str) -> str:
        return _s3_prefix(value, "bootstrap_s3_uri")

    @field_validator("results_s3_uri")
    @classmethod
    def _results(cls, value: str) -> str:
        return _s3_prefix(value, "results_s3_uri")

    @field_validator("additional_security_group_ids")
    @classmethod
    def _sgs(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            bad = [s for s in value if not _SG_RE.match(s)]
            if bad:
                raise ValueError(f"not security group ids: {bad}")
        return value or None

    @field_validator("head_node_policy_arns")
    @classmethod
    def _policies(cls, value: list[str]) -> list[str]:
        bad = [p for p in value if not _POLICY_ARN_RE.match(p)]
        if bad:
            raise ValueError(f"not IAM policy ARNs: {bad}")
        return value

    @field_validator("os")
    @classmethod
    def _os(cls, value: str) -> str:
        if value not in _SUPPORTED_OSES:
            raise ValueError(
                f"os must be one of {', '.join(_SUPPORTED_OSES)} (ParallelCluster {PCLUSTER_VERSION})"
            )
        return value

    @field_validator("custom_ami")
    @classmethod
    def _ami(cls, value: str | None) -> str | None:
        if value is not None and not _AMI_RE.match(value):
            raise ValueError(f"not an AMI id: {value!r}")
        return value

    @field_validator("ssh_allowed_cidr")
    @classmethod
    def _cidr(cls, value: str) -> str:
        if value.startswith("pl-") and re.fullmatch(r"pl-[0-9a-f]{8,17}", value):
            return value
        try:
            network = ipaddress.IPv4Network(value, strict=False)
        except ValueError:
            raise ValueError(f"not a CIDR or prefix list: {value!r}") from None
        if network.prefixlen < 8:  # /0 is the whole internet; anything that wide is as bad
            raise ValueError(f"the head node must not accept SSH from anywhere ({value} is too wide)")
        return value

    # -- variants used by the capacity fallback --------------------------------------------------

    def with_gpu8_instance_type(self, instance_type: str) -> ClusterParams:
        """The same settings with another multi-GPU instance type."""
        return self.model_validate({**self.model_dump(), "gpu8_instance_type": instance_type})

    def with_primary_subnet(self, subnet_id: str) -> ClusterParams:
        """The same settings with ``subnet_id`` (one of the compute subnets) tried first."""
        if subnet_id not in self.compute_subnet_ids:
            raise ValueError(f"{subnet_id} is not one of the compute subnets")
        rest = [s for s in self.compute_subnet_ids if s != subnet_id]
        return self.model_validate({**self.model_dump(), "compute_subnet_ids": [subnet_id, *rest]})


class CapacityFallback(_Input):
    """One placement the capacity fallback may try: a label for the mail and the settings to use."""

    label: str
    params: ClusterParams


def capacity_fallbacks(params: ClusterParams) -> list[CapacityFallback]:
    """Placements to try in order: the configured one, each other compute subnet, each fallback type.

    Other instance types are tried in the preferred (first) subnet.
    """
    plans = [
        CapacityFallback(
            label=f"{params.gpu8_instance_type} in {params.compute_subnet_ids[0]}", params=params
        )
    ]
    for subnet in params.compute_subnet_ids[1:]:
        plans.append(
            CapacityFallback(
                label=f"{params.gpu8_instance_type} in {subnet}", params=params.with_primary_subnet(subnet)
            )
        )
    for instance_type in params.gpu8_fallback_instance_types:
        if instance_type == params.gpu8_instance_type:
            continue
        plans.append(
            CapacityFallback(
                label=f"{instance_type} in {params.compute_subnet_ids[0]}",
                params=params.with_gpu8_instance_type(instance_type),
            )
        )
    return plans


class ClusterRequest(_Input):
    """What one run needs from its cluster."""

    run_id: Annotated[str, Field(min_length=1, max_length=128)]
    dataset: Annotated[str, Field(min_length=1, max_length=128)]
    cluster_name: str
    data_s3_uri: str = Field(
        description="s3://bucket/prefix/ of the dataset (linked read-only into /fsx/data)"
    )
    results_s3_uri: str = Field(description="s3://bucket/prefix/ this run's results are exported to")
    stack_name: Annotated[str, Field(min_length=1, max_length=128)]
    dataset_size_gib: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="size of the dataset, to size the FSx file system"
    )
    tags: dict[str, str] = Field(default_factory=dict, description="extra tags for every resource")
    gpu8_static_nodes: Annotated[int, Field(ge=0, le=1)] = Field(
        default=0,
        description="gpu8 nodes kept up for the whole run (1 reproduces the white paper's layout: one"
        " p4d node held from cluster creation to deletion); 0 = the queue scales to zero",
    )

    @field_validator("cluster_name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not CLUSTER_NAME_RE.match(value):
            raise ValueError(
                "cluster_name must start with a letter, contain only letters, digits and hyphens and be"
                f" 5 to {CLUSTER_NAME_MAX_LENGTH} characters long"
            )
        return value

    @field_validator("data_s3_uri")
    @classmethod
    def _data(cls, value: str) -> str:
        return _s3_prefix(value, "data_s3_uri")

    @field_validator("results_s3_uri")
    @classmethod
    def _results(cls, value: str) -> str:
        return _s3_prefix(value, "results_s3_uri")

    @field_validator("run_id", "dataset", "stack_name")
    @classmethod
    def _tag_value(cls, value: str) -> str:
        if not _TAG_RE.match(value):
            raise ValueError(f"{value!r} cannot be a tag value")
        return value

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: dict[str, str]) -> dict[str, str]:
        for key, val in value.items():
            if not key or len(key) > 128 or not _TAG_RE.match(key):
                raise ValueError(f"invalid tag key {key!r}")
            if key.lower().startswith(_RESERVED_TAG_PREFIXES) or key.startswith("cryopilot:"):
                raise ValueError(f"tag key {key!r} is reserved")
            if len(val) > 256 or not _TAG_RE.match(val):
                raise ValueError(f"invalid value for tag {key!r}")
        return value

    @model_validator(mode="after")
    def _no_overlap(self) -> ClusterRequest:
        # Two data repository associations of one file system must not have nested S3 paths.
        a, b = self.data_s3_uri, self.results_s3_uri
        if a.startswith(b) or b.startswith(a):
            raise ValueError("data_s3_uri and results_s3_uri must not contain one another")
        return self


def fsx_capacity_gib(params: ClusterParams, dataset_size_gib: int | None) -> int:
    """FSx capacity: the stack's size, grown to hold the dataset plus half again for the work.

    Lazy loading from S3 fills the file system as files are read, so the whole dataset plus the
    particle stacks and results must fit. PERSISTENT_2 sizes are 1200 GiB or multiples of 2400 GiB.
    """
    need = params.fsx_storage_gib
    if dataset_size_gib:
        need = max(need, math.ceil(dataset_size_gib * 1.5))
    if need <= 1200:
        return 1200
    return math.ceil(need / 2400) * 2400


# --- the configuration (ParallelCluster 3.x keys) ------------------------------------------------


class _Cfg(BaseModel):
    model_config = ConfigDict(alias_generator=to_pascal, populate_by_name=True, extra="forbid", frozen=True)


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
    def _dra_needs_persistent_2(self) -> FsxLustreSettings:
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
    def _settings_match_type(self) -> SharedStorage:
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

    def tag_dict(self) -> dict[str, str]:
        return {t.key: t.value for t in self.tags or []}


# --- building ------------------------------------------------------------------------------------


def _resource_name(instance_type: str) -> str:
    """``p4d.24xlarge`` → ``p4d-24xlarge`` (a valid compute-resource name)."""
    name = re.sub(r"[^a-z0-9-]", "-", instance_type.lower())[:25].rstrip("-")
    return name if name[:1].isalpha() else f"c{name}"[:25]


def _s3_access(uri: str, *, write: bool) -> S3Access:
    bucket, prefix = split_s3_uri(uri)
    return S3Access(bucket_name=bucket, key_name=f"{prefix}*" if prefix else None, enable_write_access=write)


def queue_instance_types(params: ClusterParams) -> dict[str, str]:
    """Instance type of each GPU queue."""
    return {
        GPU8_QUEUE: params.gpu8_instance_type,
        GPU4_QUEUE: params.gpu4_instance_type,
        GPU1_QUEUE: params.gpu1_instance_type,
    }


def queue_gpus(params: ClusterParams) -> dict[str, int]:
    """GPUs per node of each GPU queue: the cryoSPARC lanes' sizes. From the instance catalogue; a
    type it does not list is taken to have the queue's nominal count (8, 4 or 1)."""
    catalogue = Catalogue.load()
    return {
        q: catalogue.instances[t].gpus if t in catalogue.instances else NOMINAL_QUEUE_GPUS[q]
        for q, t in queue_instance_types(params).items()
    }


def headnode_setup_args(request: ClusterRequest, params: ClusterParams) -> list[str]:
    """Arguments of ``headnode-setup.sh``: non-secret values only (the secret's ARN, not the licence)."""
    lanes = ",".join(f"{q}:{n}" for q, n in queue_gpus(params).items())
    return [
        "--region",
        params.region,
        "--licence-secret-arn",
        params.licence_secret_arn,
        "--cryosparc-version",
        params.cryosparc_version,
        "--bootstrap-uri",
        params.bootstrap_s3_uri,
        "--results-uri",
        request.results_s3_uri,
        "--run-id",
        request.run_id,
        "--lanes",
        lanes,
        "--shared-dir",
        SHARED_MOUNT_DIR,
        "--data-dir",
        FSX_MOUNT_DIR + FSX_DATA_PATH,
        "--results-dir",
        FSX_MOUNT_DIR + FSX_RESULTS_PATH,
        "--cache-dir",
        SCRATCH_MOUNT_DIR,
    ]


def _tags(request: ClusterRequest) -> list[Tag]:
    tags = {
        TAG_RUN_ID: request.run_id,
        TAG_DATASET: request.dataset,
        TAG_STACK: request.stack_name,
        **request.tags,
    }
    return [Tag(key=k, value=v) for k, v in tags.items()]


def build_cluster_config(request: ClusterRequest, params: ClusterParams) -> ClusterConfig:
    """The cluster for one run: Slurm, a private head node, gpu8, gpu4 and gpu1 queues, /shared and /fsx."""
    subnet = params.compute_subnet_ids[0]
    extra_sgs = params.additional_security_group_ids
    head_policies = [SSM_CORE_POLICY_ARN, *params.head_node_policy_arns]

    head_node = HeadNode(
        instance_type=params.head_node_instance_type,
        networking=HeadNodeNetworking(
            subnet_id=params.head_node_subnet_id, additional_security_groups=extra_sgs
        ),
        ssh=HeadNodeSsh(allowed_ips=params.ssh_allowed_cidr),
        local_storage=HeadNodeLocalStorage(
            root_volume=RootVolume(size=80, encrypted=True, volume_type="gp3")
        ),
        custom_actions=CustomActions(
            on_node_configured=CustomAction(
                script=params.bootstrap_s3_uri + HEADNODE_SETUP_SCRIPT,
                args=headnode_setup_args(request, params),
            )
        ),
        iam=Iam(
            additional_iam_policies=[AdditionalIamPolicy(policy=p) for p in dict.fromkeys(head_policies)],
            s3_access=[
                _s3_access(params.bootstrap_s3_uri, write=False),
                _s3_access(request.data_s3_uri, write=False),
                _s3_access(request.results_s3_uri, write=True),
            ],
        ),
        imds=HeadNodeImds(secured=True),
    )

    gpu8_efa = params.gpu8_efa_placement_group and params.gpu8_instance_type in EFA_INSTANCE_TYPES
    scratch = ComputeSettings(
        local_storage=QueueLocalStorage(
            root_volume=RootVolume(encrypted=True, volume_type="gp3"),
            ephemeral_volume=EphemeralVolume(mount_dir=SCRATCH_MOUNT_DIR),
        )
    )
    gpu8 = SlurmQueue(
        name=GPU8_QUEUE,
        compute_resources=[
            ComputeResource(
                name=_resource_name(params.gpu8_instance_type),
                instance_type=params.gpu8_instance_type,
                min_count=request.gpu8_static_nodes,
                max_count=params.max_gpu8_nodes,
                efa=Efa(enabled=True) if gpu8_efa else None,
            )
        ],
        networking=QueueNetworking(
            subnet_ids=[subnet],
            placement_group=PlacementGroup(enabled=True) if gpu8_efa else None,
            additional_security_groups=extra_sgs,
        ),
        compute_settings=scratch,
    )

    def plain_queue(name: str, instance_type: str, max_nodes: int) -> SlurmQueue:
        """A queue of one instance type scaling from zero, without EFA or placement group."""
        return SlurmQueue(
            name=name,
            compute_resources=[
                ComputeResource(
                    name=_resource_name(instance_type),
                    instance_type=instance_type,
                    min_count=0,
                    max_count=max_nodes,
                )
            ],
            networking=QueueNetworking(subnet_ids=[subnet], additional_security_groups=extra_sgs),
            compute_settings=scratch,
        )

    gpu4 = plain_queue(GPU4_QUEUE, params.gpu4_instance_type, params.max_gpu4_nodes)
    gpu1 = plain_queue(GPU1_QUEUE, params.gpu1_instance_type, params.max_gpu1_nodes)

    shared = SharedStorage(
        name="shared",
        storage_type="Ebs",
        mount_dir=SHARED_MOUNT_DIR,
        ebs_settings=EbsSettings(
            volume_type="gp3", size=params.shared_volume_size_gib, encrypted=True, deletion_policy="Snapshot"
        ),
    )
    fsx = SharedStorage(
        name="fsx",
        storage_type="FsxLustre",
        mount_dir=FSX_MOUNT_DIR,
        fsx_lustre_settings=FsxLustreSettings(
            storage_capacity=fsx_capacity_gib(params, request.dataset_size_gib),
            deployment_type="PERSISTENT_2",
            per_unit_storage_throughput=params.fsx_throughput_mb_per_tib,
            data_compression_type="LZ4",
            deletion_policy="Delete",
            data_repository_associations=[
                DataRepositoryAssociation(
                    name="data",
                    data_repository_path=request.data_s3_uri,
                    file_system_path=FSX_DATA_PATH,
                    batch_import_meta_data_on_create=True,
                    auto_import_policy=["NEW", "CHANGED", "DELETED"],
                ),
                DataRepositoryAssociation(
                    name="results",
                    data_repository_path=request.results_s3_uri,
                    file_system_path=FSX_RESULTS_PATH,
                    auto_export_policy=["NEW", "CHANGED"],
                ),
            ],
        ),
    )

    return ClusterConfig(
        region=params.region,
        image=Image(os=params.os, custom_ami=params.custom_ami),
        imds=TopLevelImds(imds_support="v2.0"),
        head_node=head_node,
        scheduling=Scheduling(
            slurm_settings=SlurmSettings(scaledown_idletime=params.scaledown_idletime_minutes),
            slurm_queues=[gpu8, gpu4, gpu1],
        ),
        shared_storage=[shared, fsx],
        monitoring=Monitoring(
            logs=Logs(
                cloud_watch=CloudWatchLogs(
                    enabled=True, retention_in_days=params.log_retention_days, deletion_policy="Retain"
                )
            )
        ),
        tags=_tags(request),
        dev_settings=DevSettings(
            timeouts=Timeouts(head_node_bootstrap_timeout=params.head_node_bootstrap_timeout_seconds)
        ),
    )


def render_yaml(config: ClusterConfig) -> str:
    """The YAML text sent as ``clusterConfiguration``."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=False, width=1000)
