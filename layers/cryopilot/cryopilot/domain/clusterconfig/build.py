"""The cluster for one run: :func:`build_cluster_config` and :func:`render_yaml`.

Slurm, a private head node, the gpu8, gpu4 and gpu1 queues, an EBS ``/shared`` volume and an FSx for
Lustre ``/fsx`` file system linked to the run's data and results prefixes.
"""

from __future__ import annotations

import math

# Tag keys cryopilot puts on every cluster resource (the janitor and cost reports read them).
from cryopilot.core.naming import TAG_DATASET, TAG_RUN_ID, TAG_STACK
from cryopilot.core.queues import GPU1_QUEUE, GPU4_QUEUE, GPU8_QUEUE
from cryopilot.core.spot import spot_queue
from cryopilot.domain.capacity import resource_name
from cryopilot.domain.catalogue import Catalogue
from cryopilot.domain.clusterconfig.models import (
    AdditionalIamPolicy,
    CloudWatchLogs,
    ClusterConfig,
    ComputeResource,
    ComputeSettings,
    CustomAction,
    CustomActions,
    DataRepositoryAssociation,
    DevSettings,
    EbsSettings,
    Efa,
    EphemeralVolume,
    FsxLustreSettings,
    HeadNode,
    HeadNodeImds,
    HeadNodeLocalStorage,
    HeadNodeNetworking,
    HeadNodeSsh,
    Iam,
    Image,
    Logs,
    Monitoring,
    PlacementGroup,
    QueueLocalStorage,
    QueueNetworking,
    RootVolume,
    S3Access,
    Scheduling,
    SharedStorage,
    SlurmQueue,
    SlurmSettings,
    Tag,
    Timeouts,
    TopLevelImds,
)
from cryopilot.domain.clusterconfig.mounts import (
    FSX_DATA_PATH,
    FSX_MOUNT_DIR,
    FSX_PROJECT_DIR,
    FSX_PROJECTS_PATH,
    FSX_REFERENCE_PATH,
    FSX_RESULTS_PATH,
    PROJECT_PREFIX,
    RESULTS_PREFIX,
    SCRATCH_MOUNT_DIR,
    SHARED_MOUNT_DIR,
)
from cryopilot.domain.clusterconfig.params import ClusterParams, ClusterRequest, split_s3_uri

#: Name of the head-node setup script inside the bootstrap prefix.
HEADNODE_SETUP_SCRIPT = "headnode-setup.sh"

SSM_CORE_POLICY_ARN = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"

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


def fsx_capacity_gib(
    params: ClusterParams, dataset_size_gib: int | None, model_gib: int | None = None
) -> int:
    """FSx capacity: the run's storage model's (``model_gib``, :mod:`cryopilot.domain.storage`:
    data, micrographs, particle stacks and headroom) when it has one; else the stack's size, grown to
    hold the dataset plus half again for the work. Never below the stack's size.

    Lazy loading from S3 fills the file system as files are read, so the whole dataset plus the
    particle stacks and results must fit. PERSISTENT_2 sizes are 1200 GiB or multiples of 2400 GiB.
    """
    need = params.fsx_storage_gib
    if model_gib:
        need = max(need, model_gib)
    elif dataset_size_gib:
        need = max(need, math.ceil(dataset_size_gib * 1.5))
    if need <= 1200:
        return 1200
    return math.ceil(need / 2400) * 2400


def _resource_name(instance_type: str) -> str:
    """``p4d.24xlarge`` → ``p4d-24xlarge`` (a valid compute-resource name; the stage step reads the
    Slurm node names with the same rule)."""
    return resource_name(instance_type)


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


def queue_compute_types(params: ClusterParams) -> dict[str, list[str]]:
    """Instance types of each GPU queue's compute resources, in order of preference: the queue's
    type, then its fallback types (each once)."""
    return {
        GPU8_QUEUE: list(dict.fromkeys([params.gpu8_instance_type, *params.gpu8_fallback_instance_types])),
        GPU4_QUEUE: list(dict.fromkeys([params.gpu4_instance_type, *params.gpu4_fallback_instance_types])),
        GPU1_QUEUE: list(dict.fromkeys([params.gpu1_instance_type, *params.gpu1_fallback_instance_types])),
    }


#: ``DynamicNodePriority`` of a queue's first compute resource; each next one gets a step more.
#: ParallelCluster (>= 3.7) writes it as the Slurm ``Weight`` of the resource's dynamic nodes, and Slurm
#: allocates the lowest weight first (ParallelCluster user guide, Scheduling section,
#: ``ComputeResources`` / ``DynamicNodePriority``; default 1000, static nodes 1): the order of
#: preference of the compute resources is therefore explicit, not left to the order of the list.
DYNAMIC_NODE_PRIORITY_BASE = 1000
DYNAMIC_NODE_PRIORITY_STEP = 100


def _compute_resources(
    instance_types: list[str], max_nodes: int, *, static_nodes: int = 0, efa: bool = False
) -> list[ComputeResource]:
    """One compute resource per instance type, in order of preference.

    One ``InstanceType`` per compute resource and several compute resources per queue (valid in every
    ParallelCluster 3.x) rather than one resource listing several ``Instances`` (3.3+), which must all
    have the same vCPUs and GPUs: p4d.24xlarge (96 vCPUs) and p5.48xlarge (192) could not share one.
    Separate resources also keep fast insufficient-capacity fail-over per type: ParallelCluster disables
    the resource whose node failed to launch and requeues the job on the next one. Static nodes (the
    white paper's layout) are kept on the preferred type only.
    """
    return [
        ComputeResource(
            name=_resource_name(itype),
            instance_type=itype,
            min_count=static_nodes if i == 0 else 0,
            max_count=max_nodes,
            efa=Efa(enabled=True) if efa and itype in EFA_INSTANCE_TYPES else None,
            dynamic_node_priority=DYNAMIC_NODE_PRIORITY_BASE + i * DYNAMIC_NODE_PRIORITY_STEP,
        )
        for i, itype in enumerate(instance_types)
    ]


def queue_gpus(params: ClusterParams) -> dict[str, int]:
    """GPUs per node of each GPU queue: the cryoSPARC lanes' sizes. From the instance catalogue; a
    type it does not list is taken to have the queue's nominal count (8, 4 or 1)."""
    catalogue = Catalogue.load()
    return {q: catalogue.queue_gpus(q, t) for q, t in queue_instance_types(params).items()}


def headnode_setup_args(request: ClusterRequest, params: ClusterParams) -> list[str]:
    """Arguments of ``headnode-setup.sh``: non-secret values only (the secret's ARN, not the licence)."""
    gpus = queue_gpus(params)
    gpus.update({spot_queue(q): gpus[q] for q in request.spot_queues})  # a Spot twin is a lane too
    lanes = ",".join(f"{q}:{n}" for q, n in gpus.items())
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
        "--project-dir",
        FSX_PROJECT_DIR,
        "--cache-dir",
        SCRATCH_MOUNT_DIR,
        "--insufficient-capacity-timeout",
        str(params.insufficient_capacity_timeout_seconds),
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

    gpu8_types = queue_compute_types(params)[GPU8_QUEUE]
    gpu8_efa = params.gpu8_efa_placement_group and any(t in EFA_INSTANCE_TYPES for t in gpu8_types)
    scratch = ComputeSettings(
        local_storage=QueueLocalStorage(
            root_volume=RootVolume(encrypted=True, volume_type="gp3"),
            ephemeral_volume=EphemeralVolume(mount_dir=SCRATCH_MOUNT_DIR),
        )
    )
    gpu8 = SlurmQueue(
        name=GPU8_QUEUE,
        compute_resources=_compute_resources(
            gpu8_types,
            params.max_gpu8_nodes,
            static_nodes=request.gpu8_static_nodes,
            efa=params.gpu8_efa_placement_group,
        ),
        networking=QueueNetworking(
            subnet_ids=[subnet],
            placement_group=PlacementGroup(enabled=True) if gpu8_efa else None,
            additional_security_groups=extra_sgs,
        ),
        compute_settings=scratch,
    )

    def plain_queue(name: str, instance_types: list[str], max_nodes: int) -> SlurmQueue:
        """A queue scaling from zero, without EFA or placement group: one compute resource per type."""
        return SlurmQueue(
            name=name,
            compute_resources=_compute_resources(instance_types, max_nodes),
            networking=QueueNetworking(subnet_ids=[subnet], additional_security_groups=extra_sgs),
            compute_settings=scratch,
        )

    gpu4 = plain_queue(GPU4_QUEUE, queue_compute_types(params)[GPU4_QUEUE], params.max_gpu4_nodes)
    gpu1 = plain_queue(GPU1_QUEUE, queue_compute_types(params)[GPU1_QUEUE], params.max_gpu1_nodes)
    on_demand = [gpu8, gpu4, gpu1]
    # A queue's CapacityType covers all its compute resources, so Spot takes a twin queue: the same
    # compute resources (dynamic only) and networking, CapacityType SPOT, scaling from zero. Its
    # default Spot maximum price is the On-Demand price (user guide, SlurmQueues / CapacityType, SpotPrice).
    spot = [
        q.model_copy(
            update={
                "name": spot_queue(q.name),
                "capacity_type": "SPOT",
                "compute_resources": [r.model_copy(update={"min_count": 0}) for r in q.compute_resources],
            }
        )
        for q in on_demand
        if q.name in request.spot_queues
    ]

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
            storage_capacity=fsx_capacity_gib(params, request.dataset_size_gib, request.fsx_storage_gib),
            deployment_type="PERSISTENT_2",
            per_unit_storage_throughput=request.fsx_throughput_mb_per_tib or params.fsx_throughput_mb_per_tib,
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
                # The results and the project leave FSx by an export task the controller starts
                # and waits for (steps/export.py), not by auto-export: a task has an end and a
                # report. Two associations, because a task's paths must lie inside one, and the
                # project is exported only when the manifest asks (``export: project``).
                DataRepositoryAssociation(
                    name="results",
                    data_repository_path=f"{request.results_s3_uri}{RESULTS_PREFIX}",
                    file_system_path=FSX_RESULTS_PATH,
                ),
                DataRepositoryAssociation(
                    name="projects",
                    data_repository_path=f"{request.results_s3_uri}{PROJECT_PREFIX}",
                    file_system_path=FSX_PROJECTS_PATH,
                ),
                # A repeat run's reference (domain/campaign.py): read like the data, lazily, from
                # its own folder (the campaign's in the results bucket, or a map's elsewhere).
                *(
                    [
                        DataRepositoryAssociation(
                            name="reference",
                            data_repository_path=request.reference_s3_uri,
                            file_system_path=FSX_REFERENCE_PATH,
                            batch_import_meta_data_on_create=True,
                        )
                    ]
                    if request.reference_s3_uri
                    else []
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
            slurm_queues=[*on_demand, *spot],
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
    """The YAML text sent as ``clusterConfiguration``.

    PyYAML is loaded here, not with the module: of the Cluster function's actions only create,
    fallback and dryrun render a configuration, and the check and delete polls, most of its
    invocations, would pay its import at every cold start for nothing."""
    import yaml

    return yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=False, width=1000)
