"""What a cluster is built from: the deployment's settings, one run's request, the fallbacks.

:class:`ClusterParams` holds the stack-level settings, :class:`ClusterRequest` what one run needs;
both are validated here, before anything is sent. :func:`capacity_fallbacks` lists the placements
the cluster step tries in turn when EC2 has no capacity.
"""

import ipaddress
import re
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cryopilot.core.naming import CLUSTER_NAME_MAX_LENGTH, CLUSTER_NAME_RE
from cryopilot.domain.clusterconfig.scaling import (
    INSUFFICIENT_CAPACITY_TIMEOUT_SECONDS,
    SCALEDOWN_IDLE_MINUTES,
)
from cryopilot.domain.clusterconfig.version import PCLUSTER_VERSION
from cryopilot.domain.location import S3_FOLDER_RE

_SUBNET_RE = re.compile(r"^subnet-[0-9a-f]{8}(?:[0-9a-f]{9})?$")
_SG_RE = re.compile(r"^sg-[0-9a-f]{8}(?:[0-9a-f]{9})?$")
_AMI_RE = re.compile(r"^ami-[0-9a-f]{8}(?:[0-9a-f]{9})?$")
_INSTANCE_TYPE_RE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9-]+$")
_REGION_RE = re.compile(r"^[a-z]{2}(?:-[a-z]+)+-\d$")
_SECRET_ARN_RE = re.compile(r"^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:[A-Za-z0-9/_+=.@-]+$")
_POLICY_ARN_RE = re.compile(r"^arn:aws[a-z-]*:iam::(?:aws|\d{12}):policy/[A-Za-z0-9/_+=,.@-]+$")
_TAG_RE = re.compile(r"^[\w .:/=+\-@]*$")
_RESERVED_TAG_PREFIXES = ("aws:", "parallelcluster:")
_SUPPORTED_OSES = ("alinux2023", "ubuntu2204", "ubuntu2404", "rhel8", "rocky8", "rhel9", "rocky9")


def _s3_prefix(value: str, what: str) -> str:
    if not S3_FOLDER_RE.fullmatch(value):
        raise ValueError(f"{what} must look like s3://bucket/prefix/ (ending in '/'), got {value!r}")
    return value


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b/`` → ``("bucket", "a/b/")``."""
    match = S3_FOLDER_RE.fullmatch(uri)
    if not match:
        raise ValueError(f"not an S3 prefix: {uri!r}")
    return match.group(1), match.group(2)


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


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
        default_factory=lambda: ["p4de.24xlarge", "p5.48xlarge"],
        description="further compute resources of the gpu8 queue, in order of preference: ParallelCluster"
        " fails a job over to them when a node of the first cannot launch for capacity",
    )
    gpu4_fallback_instance_types: list[str] = Field(
        default_factory=lambda: ["g5.12xlarge"],
        description="further compute resources of the gpu4 queue, in order of preference",
    )
    gpu1_fallback_instance_types: list[str] = Field(
        default_factory=lambda: ["g6e.2xlarge"],
        description="further compute resources of the gpu1 queue, in order of preference",
    )
    insufficient_capacity_timeout_seconds: Annotated[int, Field(ge=60, le=86400)] = Field(
        default=INSUFFICIENT_CAPACITY_TIMEOUT_SECONDS,
        description="how long ParallelCluster keeps a compute resource disabled after an insufficient"
        " capacity error at node launch (clustermgtd's insufficient_capacity_timeout)",
    )
    max_gpu8_nodes: Annotated[int, Field(ge=1, le=1000)] = 4
    max_gpu4_nodes: Annotated[int, Field(ge=1, le=1000)] = 4
    max_gpu1_nodes: Annotated[int, Field(ge=1, le=1000)] = 8
    scaledown_idletime_minutes: Annotated[int, Field(ge=1, le=1440)] = SCALEDOWN_IDLE_MINUTES
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

    @field_validator(
        "gpu8_fallback_instance_types", "gpu4_fallback_instance_types", "gpu1_fallback_instance_types"
    )
    @classmethod
    def _fallback_types(cls, value: list[str]) -> list[str]:
        bad = [t for t in value if not _INSTANCE_TYPE_RE.match(t)]
        if bad:
            raise ValueError(f"not EC2 instance types: {bad}")
        if len(set(value)) != len(value):
            raise ValueError("fallback instance types have duplicates")
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

    def with_gpu8_instance_type(self, instance_type: str) -> Self:
        """The same settings with another multi-GPU instance type."""
        return self.model_validate({**self.model_dump(), "gpu8_instance_type": instance_type})

    def with_primary_subnet(self, subnet_id: str) -> Self:
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
    """Placements to try in order when the cluster's creation fails for capacity: the configured
    one, then each other compute subnet.

    Only the head node can make a creation fail for capacity: the GPU queues scale from zero
    (``MinCount: 0``), so a missing GPU type shows only when Slurm launches a node for a job, and
    ParallelCluster's fast insufficient-capacity fail-over then moves the job to the queue's next
    compute resource (the ``gpu*_fallback_instance_types``) inside the same cluster. Other
    instance types are therefore no cluster-level placement.
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
    fsx_storage_gib: Annotated[int, Field(ge=1200)] | None = Field(
        default=None, description="FSx capacity the run's storage model chose (1200 or a multiple of 2400)"
    )
    fsx_throughput_mb_per_tib: Literal[125, 250, 500, 1000] | None = Field(
        default=None, description="FSx throughput tier the run's storage model chose"
    )
    reference_s3_uri: str | None = Field(
        default=None,
        description="s3://bucket/prefix/ of a repeat run's reference files (linked read-only into"
        " /fsx/reference), when they are not in the dataset's folder",
    )
    tags: dict[str, str] = Field(default_factory=dict, description="extra tags for every resource")
    gpu8_static_nodes: Annotated[int, Field(ge=0, le=1)] = Field(
        default=0,
        description="gpu8 nodes kept up for the whole run (1 reproduces the white paper's layout: one"
        " p4d node held from cluster creation to deletion); 0 = the queue scales to zero",
    )
    spot_queues: list[Literal["gpu8", "gpu4", "gpu1"]] = Field(
        default_factory=list,
        description="GPU queues some of whose stages may run on Spot (the manifest's capacity:"
        " spot-where-safe): each gets a Spot twin, <queue>-spot (core.spot)",
    )

    @field_validator("fsx_storage_gib")
    @classmethod
    def _fsx_size(cls, value: int | None) -> int | None:
        if value is not None and value != 1200 and value % 2400:
            raise ValueError("FSx for Lustre PERSISTENT_2 capacity is 1200 GiB or a multiple of 2400 GiB")
        return value

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

    @field_validator("reference_s3_uri")
    @classmethod
    def _reference(cls, value: str | None) -> str | None:
        return None if value is None else _s3_prefix(value, "reference_s3_uri")

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
    def _no_overlap(self) -> Self:
        # Two data repository associations of one file system must not have nested S3 paths.
        a, b = self.data_s3_uri, self.results_s3_uri
        if a.startswith(b) or b.startswith(a):
            raise ValueError("data_s3_uri and results_s3_uri must not contain one another")
        ref = self.reference_s3_uri
        for other, name in ((a, "data_s3_uri"), (b, "results_s3_uri")):
            if ref is not None and (ref.startswith(other) or other.startswith(ref)):
                raise ValueError(f"reference_s3_uri and {name} must not contain one another")
        return self
