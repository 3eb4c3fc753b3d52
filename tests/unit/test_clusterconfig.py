"""The cluster configuration: every variant cryopilot can generate loads with ParallelCluster's schema."""

from __future__ import annotations

import os
import re
from typing import Any

import pytest
import yaml
from cryopilot.core.naming import cluster_name_for
from cryopilot.core.queues import GPU8_QUEUE
from cryopilot.domain.clusterconfig.build import (
    SSM_CORE_POLICY_ARN,
    build_cluster_config,
    fsx_capacity_gib,
    render_yaml,
)
from cryopilot.domain.clusterconfig.models import ClusterConfig, DataRepositoryAssociation, FsxLustreSettings
from cryopilot.domain.clusterconfig.params import ClusterParams, ClusterRequest, capacity_fallbacks
from cryopilot.domain.location import (
    NAME_PATTERN,
    RUN_ID_PATTERN,
    data_uri_problem,
    foreign_bucket,
    run_id_for,
    run_id_problem,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tests.conftest import make_cluster_request

os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

# pinned dev requirements (pcluster, its validators), imported outright: missing, they fail the run
import marshmallow
import pcluster.schemas.cluster_schema as cluster_schema
import pcluster.validators.cluster_validators as cluster_validators
import pcluster.validators.fsx_validators as fsx_validators

SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:cryopilot/cryosparc-licence-AbCdEf"
SUBNETS = ["subnet-0aaaaaaaaaaaaaaa1", "subnet-0bbbbbbbbbbbbbbb2", "subnet-0ccccccccccccccc3"]


def make_params(**overrides: Any) -> ClusterParams:
    values: dict[str, Any] = {
        "region": "us-east-1",
        "head_node_subnet_id": "subnet-0123456789abcdef0",
        "compute_subnet_ids": SUBNETS,
        "licence_secret_arn": SECRET_ARN,
        "bootstrap_s3_uri": "s3://cryopilot-assets-123456789012/bootstrap/",
        "results_s3_uri": "s3://cryopilot-results-123456789012/runs/",
    }
    values.update(overrides)
    return ClusterParams(**values)


def schema_load(text: str, cluster_name: str) -> Any:
    """Load a rendered configuration exactly as ParallelCluster's API does before validating it."""
    return cluster_schema.ClusterSchema(cluster_name=cluster_name).load(yaml.safe_load(text))


def offline_validator_failures(loaded: Any) -> list[str]:
    """Run the ParallelCluster validators that need no AWS call on a loaded configuration."""
    failures: list[str] = []
    for storage in loaded.shared_storage or []:
        if getattr(storage, "shared_storage_type", None) != "fsx":
            continue
        runs = [
            fsx_validators.FsxDraValidator().execute(
                data_repository_associations=storage.data_repository_associations,
                import_path=storage.import_path,
                export_path=storage.export_path,
            ),
            fsx_validators.FsxPersistentOptionsValidator().execute(
                deployment_type=storage.deployment_type,
                kms_key_id=storage.kms_key_id,
                per_unit_storage_throughput=storage.per_unit_storage_throughput,
            ),
            fsx_validators.FsxStorageTypeOptionsValidator().execute(
                fsx_storage_type=storage.fsx_storage_type,
                deployment_type=storage.deployment_type,
                per_unit_storage_throughput=storage.per_unit_storage_throughput,
                drive_cache_type=storage.drive_cache_type,
            ),
            fsx_validators.FsxStorageCapacityValidator().execute(
                storage_capacity=storage.storage_capacity,
                deployment_type=storage.deployment_type,
                fsx_storage_type=storage.fsx_storage_type,
                per_unit_storage_throughput=storage.per_unit_storage_throughput,
                file_system_id=storage.file_system_id,
                backup_id=storage.backup_id,
            ),
        ]
        failures += [f.message for run in runs for f in run]
    for queue in loaded.scheduling.queues:
        failures += [f.message for f in cluster_validators.NameValidator().execute(name=queue.name)]
        for resource in queue.compute_resources:
            failures += [f.message for f in cluster_validators.NameValidator().execute(name=resource.name)]
    return failures


def check(request: ClusterRequest, params: ClusterParams) -> tuple[ClusterConfig, dict[str, Any]]:
    config = build_cluster_config(request, params)
    text = render_yaml(config)
    loaded = schema_load(text, request.cluster_name)
    assert offline_validator_failures(loaded) == []
    return config, yaml.safe_load(text)


VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "defaults": ({}, {}),
    "all-optional-settings": (
        {
            "additional_security_group_ids": ["sg-0123456789abcdef0", "sg-01234567"],
            "custom_ami": "ami-0123456789abcdef0",
            "os": "ubuntu2204",
            "head_node_policy_arns": ["arn:aws:iam::123456789012:policy/cryopilot-headnode"],
            "max_gpu8_nodes": 2,
            "max_gpu1_nodes": 16,
            "scaledown_idletime_minutes": 10,
            "shared_volume_size_gib": 1000,
            "fsx_storage_gib": 4800,
            "fsx_throughput_mb_per_tib": 1000,
            "ssh_allowed_cidr": "10.0.0.0/16",
            "log_retention_days": 90,
        },
        {"dataset_size_gib": 1900, "tags": {"project": "glp1r", "cost-center": "cryo-em"}},
    ),
    "no-efa-placement": ({"gpu8_efa_placement_group": False}, {}),
    "gpu8-type-without-efa": ({"gpu8_instance_type": "g6e.24xlarge"}, {}),
    "single-subnet-no-fallback-types": (
        {"compute_subnet_ids": SUBNETS[:1], "gpu8_fallback_instance_types": []},
        {},
    ),
    "rocky9-gpu1-g5": ({"os": "rocky9", "gpu1_instance_type": "g5.2xlarge"}, {}),
    "spot-where-safe-on-every-queue": ({}, {"spot_queues": ["gpu8", "gpu4", "gpu1"]}),
    "spot-gpu1-only": ({"gpu1_fallback_instance_types": []}, {"spot_queues": ["gpu1"]}),
    "gpu8-fails-over-to-a-type-without-efa": (
        {"gpu8_fallback_instance_types": ["g6e.48xlarge", "p5.48xlarge"], "gpu1_fallback_instance_types": []},
        {"gpu8_static_nodes": 1},
    ),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_loads_with_the_parallelcluster_schema(variant: str) -> None:
    param_overrides, request_overrides = VARIANTS[variant]
    params = make_params(**param_overrides)
    config, document = check(make_cluster_request(**request_overrides), params)
    assert document["Region"] == "us-east-1"
    assert config.to_dict() == document


@pytest.mark.parametrize("index", range(len(capacity_fallbacks(make_params()))))
def test_every_capacity_fallback_loads_with_the_parallelcluster_schema(index: int) -> None:
    plan = capacity_fallbacks(make_params())[index]
    config, _document = check(make_cluster_request(), plan.params)
    gpu8 = config.queue(GPU8_QUEUE)
    assert gpu8.compute_resources[0].instance_type == plan.params.gpu8_instance_type
    assert gpu8.networking.subnet_ids == [plan.params.compute_subnet_ids[0]]
    assert plan.params.gpu8_instance_type in plan.label
    assert plan.params.compute_subnet_ids[0] in plan.label


def test_spot_where_safe_adds_a_spot_twin_of_each_queue_it_uses() -> None:
    request = make_cluster_request(spot_queues=["gpu8", "gpu1"], gpu8_static_nodes=1)
    _config, document = check(request, make_params())
    queues = {q["Name"]: q for q in document["Scheduling"]["SlurmQueues"]}
    assert list(queues) == ["gpu8", "gpu4", "gpu1", "gpu8-spot", "gpu1-spot"]
    assert queues["gpu8"].get("CapacityType", "ONDEMAND") == "ONDEMAND"
    for name in ("gpu8", "gpu1"):
        twin = queues[f"{name}-spot"]
        assert twin["CapacityType"] == "SPOT"
        assert [r["InstanceType"] for r in twin["ComputeResources"]] == [
            r["InstanceType"] for r in queues[name]["ComputeResources"]
        ]
        assert all(r.get("MinCount", 0) == 0 for r in twin["ComputeResources"])  # never a static Spot node
    assert "gpu4-spot" not in queues


def test_capacity_fallbacks_try_other_subnets_only() -> None:
    # Other GPU types are compute resources of the same cluster (ParallelCluster fails jobs over to
    # them at node launch): the delete-and-recreate fallback is only for what makes a creation fail,
    # the head node's capacity or subnet.
    plans = capacity_fallbacks(make_params(gpu8_fallback_instance_types=["g6e.48xlarge", "p4d.24xlarge"]))
    assert [(p.params.gpu8_instance_type, p.params.compute_subnet_ids[0]) for p in plans] == [
        ("p4d.24xlarge", SUBNETS[0]),
        ("p4d.24xlarge", SUBNETS[1]),
        ("p4d.24xlarge", SUBNETS[2]),
    ]
    assert sorted(plans[1].params.compute_subnet_ids) == sorted(SUBNETS)


def test_each_gpu_queue_lists_its_compute_resources_in_order_of_preference() -> None:
    _, doc = check(make_cluster_request(gpu8_static_nodes=1), make_params())
    queues = {q["Name"]: q for q in doc["Scheduling"]["SlurmQueues"]}
    resources = {
        name: [(cr["Name"], cr["InstanceType"], cr["DynamicNodePriority"]) for cr in q["ComputeResources"]]
        for name, q in queues.items()
    }
    assert resources == {
        "gpu8": [
            ("p4d-24xlarge", "p4d.24xlarge", 1000),
            ("p4de-24xlarge", "p4de.24xlarge", 1100),
            ("p5-48xlarge", "p5.48xlarge", 1200),
        ],
        "gpu4": [("g6e-12xlarge", "g6e.12xlarge", 1000), ("g5-12xlarge", "g5.12xlarge", 1100)],
        "gpu1": [("p5-4xlarge", "p5.4xlarge", 1000), ("g6e-2xlarge", "g6e.2xlarge", 1100)],
    }
    gpu8 = queues["gpu8"]["ComputeResources"]
    assert [cr["MinCount"] for cr in gpu8] == [1, 0, 0]  # the white paper's static node: preferred type only
    assert all(cr["Efa"] == {"Enabled": True} for cr in gpu8)
    assert all(cr["MinCount"] == 0 for q in ("gpu4", "gpu1") for cr in queues[q]["ComputeResources"])


def test_the_head_node_sets_the_insufficient_capacity_timeout() -> None:
    _, doc = check(make_cluster_request(), make_params(insufficient_capacity_timeout_seconds=900))
    args = doc["HeadNode"]["CustomActions"]["OnNodeConfigured"]["Args"]
    assert args[args.index("--insufficient-capacity-timeout") + 1] == "900"


def test_variant_helpers() -> None:
    params = make_params()
    other = params.with_gpu8_instance_type("p5.48xlarge")
    assert other.gpu8_instance_type == "p5.48xlarge"
    assert params.gpu8_instance_type == "p4d.24xlarge"  # frozen originals stay as they were
    assert params.with_primary_subnet(SUBNETS[2]).compute_subnet_ids == [SUBNETS[2], SUBNETS[0], SUBNETS[1]]
    with pytest.raises(ValueError, match="not one of the compute subnets"):
        params.with_primary_subnet("subnet-0ddddddddddddddd4")
    with pytest.raises(ValidationError):
        params.with_gpu8_instance_type("not a type")


def test_content_of_the_default_cluster() -> None:
    request = make_cluster_request()
    _, doc = check(request, make_params())

    head = doc["HeadNode"]
    assert head["Networking"] == {"SubnetId": "subnet-0123456789abcdef0"}  # private subnet, no ElasticIp
    assert "KeyName" not in head["Ssh"]
    assert head["Ssh"]["AllowedIps"] == "127.0.0.1/32"  # the SSH rule admits nothing: use SSM
    assert head["Imds"] == {"Secured": True}
    assert doc["Imds"] == {"ImdsSupport": "v2.0"}
    assert {"Policy": "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"} in head["Iam"][
        "AdditionalIamPolicies"
    ]
    access = {a["BucketName"]: a for a in head["Iam"]["S3Access"]}
    assert access["cryopilot-assets-123456789012"] == {
        "BucketName": "cryopilot-assets-123456789012",
        "KeyName": "bootstrap/*",
        "EnableWriteAccess": False,
    }
    assert access["cryopilot-input-123456789012"]["EnableWriteAccess"] is False
    assert access["cryopilot-results-123456789012"]["EnableWriteAccess"] is True
    assert access["cryopilot-results-123456789012"]["KeyName"] == f"runs/{request.run_id}/*"

    action = head["CustomActions"]["OnNodeConfigured"]
    assert action["Script"] == "s3://cryopilot-assets-123456789012/bootstrap/headnode-setup.sh"
    args = action["Args"]
    assert all(isinstance(a, str) for a in args)
    assert args[args.index("--licence-secret-arn") + 1] == SECRET_ARN
    assert args[args.index("--run-id") + 1] == request.run_id
    assert args[args.index("--lanes") + 1] == "gpu8:8,gpu4:4,gpu1:1"

    scheduling = doc["Scheduling"]
    assert scheduling["Scheduler"] == "slurm"
    assert scheduling["SlurmSettings"] == {"ScaledownIdletime": 5}
    queues = {q["Name"]: q for q in scheduling["SlurmQueues"]}
    assert list(queues) == ["gpu8", "gpu4", "gpu1"]
    gpu8, gpu4, gpu1 = queues["gpu8"], queues["gpu4"], queues["gpu1"]
    assert gpu8["ComputeResources"][0] == {
        "Name": "p4d-24xlarge",
        "InstanceType": "p4d.24xlarge",
        "MinCount": 0,
        "MaxCount": 4,
        "Efa": {"Enabled": True},
        "DynamicNodePriority": 1000,
    }
    assert gpu8["Networking"]["PlacementGroup"] == {"Enabled": True}
    assert gpu8["Networking"]["SubnetIds"] == [SUBNETS[0]]
    assert gpu8["ComputeSettings"]["LocalStorage"]["EphemeralVolume"] == {"MountDir": "/scratch"}
    assert gpu1["ComputeResources"][0]["InstanceType"] == "p5.4xlarge"
    assert gpu4["ComputeResources"][0]["InstanceType"] == "g6e.12xlarge"
    for queue in (gpu4, gpu1):
        assert queue["ComputeResources"][0]["MinCount"] == 0
        assert "Efa" not in queue["ComputeResources"][0]
        assert "PlacementGroup" not in queue["Networking"]

    storage = {s["MountDir"]: s for s in doc["SharedStorage"]}
    assert storage["/shared"]["StorageType"] == "Ebs"
    assert storage["/shared"]["EbsSettings"]["DeletionPolicy"] == "Snapshot"
    fsx = storage["/fsx"]["FsxLustreSettings"]
    assert fsx["DeploymentType"] == "PERSISTENT_2"
    assert "ImportPath" not in fsx
    assert "ExportPath" not in fsx
    dras = {d["Name"]: d for d in fsx["DataRepositoryAssociations"]}
    assert dras["data"]["DataRepositoryPath"] == request.data_s3_uri
    assert dras["data"]["AutoImportPolicy"] == ["NEW", "CHANGED", "DELETED"]
    # results and project leave FSx by export tasks the controller waits for (steps/export.py)
    assert dras["results"]["DataRepositoryPath"] == request.results_s3_uri + "results/"
    assert dras["results"]["FileSystemPath"] == "/results"
    assert dras["projects"]["DataRepositoryPath"] == request.results_s3_uri + "project/"
    assert dras["projects"]["FileSystemPath"] == "/projects"
    assert all("AutoExportPolicy" not in d for d in dras.values())

    tags = {t["Key"]: t["Value"] for t in doc["Tags"]}
    assert tags == {
        "cryopilot:run-id": request.run_id,
        "cryopilot:dataset": "cgrp",
        "cryopilot:stack": "cryopilot-prod",
    }


def test_rendered_yaml_has_pascal_case_keys_and_no_nulls() -> None:
    text = render_yaml(build_cluster_config(make_cluster_request(), make_params()))
    assert "null" not in text
    keys: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                keys.append(key)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(yaml.safe_load(text))
    assert keys
    assert [k for k in keys if not re.fullmatch(r"(?:[A-Z][a-z0-9]*)+|S3Access", k)] == []


def test_extra_tags_and_optional_settings_are_rendered() -> None:
    overrides, request_overrides = VARIANTS["all-optional-settings"]
    _, doc = check(make_cluster_request(**request_overrides), make_params(**overrides))
    tags = {t["Key"]: t["Value"] for t in doc["Tags"]}
    assert tags["project"] == "glp1r"
    assert doc["Image"] == {"Os": "ubuntu2204", "CustomAmi": "ami-0123456789abcdef0"}
    assert doc["HeadNode"]["Networking"]["AdditionalSecurityGroups"] == [
        "sg-0123456789abcdef0",
        "sg-01234567",
    ]
    policies = [p["Policy"] for p in doc["HeadNode"]["Iam"]["AdditionalIamPolicies"]]
    assert policies == [SSM_CORE_POLICY_ARN, "arn:aws:iam::123456789012:policy/cryopilot-headnode"]
    fsx = doc["SharedStorage"][1]["FsxLustreSettings"]
    assert fsx["StorageCapacity"] == 4800  # 1900 GiB x 1.5 rounds up to 4800
    assert fsx["PerUnitStorageThroughput"] == 1000


def test_a_broken_configuration_fails_with_the_schema_message() -> None:
    document: dict[str, Any] = build_cluster_config(make_cluster_request(), make_params()).to_dict()
    document["Image"] = {"Os": "alinux2"}  # dropped in 3.x
    document["HeadNode"]["ElasticIpp"] = True
    with pytest.raises(marshmallow.ValidationError) as caught:
        schema_load(yaml.safe_dump(document), "cryopilot-broken")
    text = str(caught.value.messages)
    assert "Must be one of" in text
    assert "ElasticIpp" in text
    assert "Unknown field" in text


def test_a_dra_on_a_scratch_file_system_is_refused_by_the_model_and_by_parallelcluster() -> None:
    with pytest.raises(ValidationError, match="PERSISTENT_2"):
        FsxLustreSettings(
            storage_capacity=1200,
            deployment_type="SCRATCH_2",
            data_repository_associations=[
                DataRepositoryAssociation(name="d", data_repository_path="s3://b/p/", file_system_path="/d")
            ],
        )
    # ParallelCluster's own validator refuses DRAs next to ImportPath, which the models cannot express.
    failures = fsx_validators.FsxDraValidator().execute(
        data_repository_associations=[object()], import_path="s3://b/p/", export_path=None
    )
    assert failures


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("licence_secret_arn", "1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d", "never a licence"),
        ("os", "alinux2", "os must be one of"),
        ("compute_subnet_ids", [], "at least 1"),
        ("compute_subnet_ids", [SUBNETS[0], SUBNETS[0]], "duplicates"),
        ("head_node_subnet_id", "subnet-xyz", "not a subnet id"),
        ("bootstrap_s3_uri", "s3://bucket/no-trailing-slash", "ending in '/'"),
        ("fsx_storage_gib", 3000, "multiple of 2400"),
        ("ssh_allowed_cidr", "0.0.0.0/0", "must not accept SSH"),
        ("ssh_allowed_cidr", "10.0.0.0/0", "must not accept SSH"),  # any /0 is the whole internet
        ("ssh_allowed_cidr", "1.2.3.4/00", "must not accept SSH"),
        ("ssh_allowed_cidr", "64.0.0.0/2", "must not accept SSH"),
        ("ssh_allowed_cidr", "10.0.0.256/32", "not a CIDR"),
        ("custom_ami", "ami-123", "not an AMI id"),
        ("gpu8_instance_type", "P4D", "not an EC2 instance type"),
    ],
)
def test_invalid_params_are_refused(field: str, value: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        make_params(**{field: value})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"cluster_name": "1-starts-with-a-digit"}, "start with a letter"),
        ({"cluster_name": "a" * 61}, "5 to 60"),
        ({"cluster_name": "abcd"}, "5 to 60"),
        ({"tags": {"parallelcluster:version": "x"}}, "reserved"),
        ({"tags": {"cryopilot:run-id": "x"}}, "reserved"),
        ({"tags": {"ok": "bad\nvalue"}}, "invalid value"),
        ({"results_s3_uri": "s3://cryopilot-input-123456789012/datasets/cgrp/out/"}, "contain one another"),
    ],
)
def test_invalid_requests_are_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        make_cluster_request(**overrides)


@pytest.mark.parametrize(
    ("stack", "dataset", "expected"),
    [
        (1200, None, 1200),
        (1200, 700, 1200),
        (1200, 1000, 2400),
        (2400, 1600, 2400),
        (1200, 1900, 4800),
        (7200, 0, 7200),
    ],
)
def test_fsx_capacity(stack: int, dataset: int | None, expected: int) -> None:
    assert fsx_capacity_gib(make_params(fsx_storage_gib=stack), dataset) == expected


def test_cluster_name_for_examples() -> None:
    assert cluster_name_for("run-1") == "cryopilot-run-1"
    assert cluster_name_for("RUN-1") != cluster_name_for("run-1")  # changed by lowercasing: hashed
    assert cluster_name_for("cgrp/2026 01 01") != cluster_name_for("cgrp-2026-01-01")
    long = cluster_name_for("x" * 200)
    assert len(long) == 60
    assert long.startswith("cryopilot-x")
    with pytest.raises(ValueError, match="empty"):
        cluster_name_for("")


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=300))
def test_cluster_name_for_is_always_valid_and_deterministic(run_id: str) -> None:
    name = cluster_name_for(run_id)
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9-]{4,59}", name)
    assert cluster_name_for(run_id) == name


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    gpu8=st.sampled_from(["p4d.24xlarge", "p4de.24xlarge", "p5.48xlarge", "g6e.48xlarge", "g5.48xlarge"]),
    gpu1=st.sampled_from(["g6e.2xlarge", "g6.2xlarge", "g5.2xlarge", "g4dn.2xlarge"]),
    max8=st.integers(1, 64),
    max1=st.integers(1, 64),
    idle=st.integers(1, 120),
    shared=st.integers(35, 16384),
    fsx=st.sampled_from([1200, 2400, 4800, 9600]),
    dataset_gib=st.none() | st.integers(0, 20000),
    efa=st.booleans(),
    sgs=st.none() | st.just(["sg-0123456789abcdef0"]),
    os_name=st.sampled_from(["alinux2023", "ubuntu2204", "ubuntu2404", "rhel9", "rocky9"]),
    subnets=st.integers(1, 3),
    run_id=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,40}", fullmatch=True),
)
def test_generated_configurations_always_load(
    gpu8: str,
    gpu1: str,
    max8: int,
    max1: int,
    idle: int,
    shared: int,
    fsx: int,
    dataset_gib: int | None,
    efa: bool,
    sgs: list[str] | None,
    os_name: str,
    subnets: int,
    run_id: str,
) -> None:
    params = make_params(
        gpu8_instance_type=gpu8,
        gpu1_instance_type=gpu1,
        max_gpu8_nodes=max8,
        max_gpu1_nodes=max1,
        scaledown_idletime_minutes=idle,
        shared_volume_size_gib=shared,
        fsx_storage_gib=fsx,
        gpu8_efa_placement_group=efa,
        additional_security_group_ids=sgs,
        os=os_name,
        compute_subnet_ids=SUBNETS[:subnets],
    )
    request = make_cluster_request(run_id=run_id, dataset_size_gib=dataset_gib)
    plans = capacity_fallbacks(params)
    for plan in {id(p): p for p in (plans[0], plans[-1])}.values():
        check(request, plan.params)


INPUT_BUCKET = "cryopilot-input-123456789012"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    dataset=st.from_regex(NAME_PATTERN, fullmatch=True),
    run_id=st.from_regex(RUN_ID_PATTERN, fullmatch=True),
    folders=st.lists(
        st.from_regex(r"[A-Za-z0-9._-]{1,30}", fullmatch=True).filter(lambda f: f not in (".", "..")),
        min_size=1,
        max_size=4,
    ),
)
def test_whatever_start_run_and_validate_accept_makes_a_configuration_that_loads(
    dataset: str, run_id: str, folders: list[str]
) -> None:
    """The one rule (domain/location.py) that StartRun and Validate apply is within what the
    cluster configuration and ParallelCluster's schema take: nothing accepted fails at CreateCluster."""
    data = f"s3://{INPUT_BUCKET}/{'/'.join(folders)}/"
    assert data_uri_problem(data) is None
    assert foreign_bucket(data, INPUT_BUCKET) is None
    assert run_id_problem(run_id_for(dataset, "op0123456789")) is None
    request = make_cluster_request(run_id=run_id, dataset=dataset, data_s3_uri=data)
    check(request, make_params())
