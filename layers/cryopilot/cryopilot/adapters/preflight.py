"""Preflight's questions to AWS and the ParallelCluster API; the answers go through the rules of
:mod:`cryopilot.domain.preflight`. Validate runs :func:`run_checks` before any cluster exists; the
operator's ``cryopilot preflight`` invokes the Validate function (action ``preflight``), so the
checks run with the function's own role, as a run's would.

Calls (each one the stack's Validate role is granted in ``template.yaml``): Service Quotas
``GetServiceQuota``; EC2 ``DescribeSubnets``, ``DescribeInstanceTypeOfferings``,
``DescribeRouteTables``, ``DescribeVpcEndpoints``; Secrets Manager ``DescribeSecret`` (never
``GetSecretValue``); the ParallelCluster API's ListOfficialImages; S3 ``ListObjectsV2`` (the
measure Validate already takes), ``HeadObject`` and ``GetBucketLocation``; SNS
``ListSubscriptionsByTopic``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from cryopilot.adapters import aws
from cryopilot.adapters.clusters import api as pcluster_api
from cryopilot.adapters.settings import Settings
from cryopilot.core.errors import CryopilotError, ThrottledError
from cryopilot.domain import preflight
from cryopilot.domain.catalogue import Catalogue
from cryopilot.domain.clusterconfig.params import ClusterParams
from cryopilot.domain.clusterconfig.version import PCLUSTER_VERSION
from cryopilot.domain.preflight import CheckResult, NodeNeed, SubnetRoutes
from cryopilot.domain.storage import DataSize


@dataclass(frozen=True)
class DataInputs:
    """What the manifest asks of its data: the folder, the glob and its count, the gain reference."""

    uri: str  # s3://bucket/prefix/
    glob: str
    expected_files: int | None
    gain_reference: str | None
    measured: DataSize


#: Error codes that say "later", not "no": the check is not failed, the step is retried.
_THROTTLED = {
    "Throttling",
    "ThrottlingException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "SlowDown",
}


def _code(exc: Exception) -> str:
    """The AWS error code of a failed call, for the check's line; a throttled call (after boto3's
    own retries) raises :class:`ThrottledError` instead, which the state machine retries."""
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code") or "error")
        if code in _THROTTLED:
            raise ThrottledError(f"preflight: AWS throttled a check ({code}); retried") from None
        return code
    return type(exc).__name__


def node_needs(
    settings: Settings, catalogue: Catalogue, gpu8: str | None = None, spot_queues: Sequence[str] = ()
) -> list[NodeNeed]:
    """The head node and each GPU queue at its largest node count (the cluster configuration's
    ``MaxCount`` of each queue: :class:`ClusterParams`' defaults), On-Demand; and the Spot twin of
    each of ``spot_queues`` (the queues a run's ``capacity: spot-where-safe`` puts stages on Spot)
    at the same count, counted against the Spot quota of its family. ``gpu8``: the type a capacity
    fallback gives the gpu8 queue."""
    fields = ClusterParams.model_fields
    counts: dict[tuple[str, str], int] = {(settings.head_node_instance_type, "ONDEMAND"): 1}
    queues = settings.queue_instance_types(gpu8)
    for queue, field in (("gpu8", "max_gpu8_nodes"), ("gpu4", "max_gpu4_nodes"), ("gpu1", "max_gpu1_nodes")):
        for capacity in ("ONDEMAND", "SPOT") if queue in spot_queues else ("ONDEMAND",):
            key = (queues[queue], capacity)
            counts[key] = counts.get(key, 0) + int(fields[field].default)
    return [
        NodeNeed(t, n, catalogue.instance(t).vcpus, capacity)  # type: ignore[arg-type]
        for (t, capacity), n in counts.items()
    ]


def _quota_values(codes: Sequence[str]) -> dict[str, float | str]:
    sq = aws.client("service-quotas")
    values: dict[str, float | str] = {}
    for code in codes:
        try:
            values[code] = float(sq.get_service_quota(ServiceCode="ec2", QuotaCode=code)["Quota"]["Value"])
        except (ClientError, BotoCoreError) as exc:
            values[code] = _code(exc)
    return values


def _subnets(subnet_ids: Sequence[str]) -> tuple[dict[str, str | None], dict[str, str]]:
    """Each subnet's availability zone (None: not found) and VPC."""
    ec2 = aws.client("ec2")
    zones: dict[str, str | None] = dict.fromkeys(subnet_ids)
    vpcs: dict[str, str] = {}
    for subnet_id in subnet_ids:  # one by one: DescribeSubnets fails whole for one unknown id
        try:
            (found,) = ec2.describe_subnets(SubnetIds=[subnet_id])["Subnets"]
        except (ClientError, BotoCoreError, ValueError):
            continue
        zones[subnet_id] = found["AvailabilityZone"]
        vpcs[subnet_id] = found["VpcId"]
    return zones, vpcs


def _offered(instance_types: Sequence[str]) -> dict[str, set[str]]:
    ec2 = aws.client("ec2")
    pages = ec2.get_paginator("describe_instance_type_offerings").paginate(
        LocationType="availability-zone",
        Filters=[{"Name": "instance-type", "Values": sorted(set(instance_types))}],
    )
    offered: dict[str, set[str]] = {}
    for page in pages:
        for offer in page.get("InstanceTypeOfferings", []):
            offered.setdefault(offer["InstanceType"], set()).add(offer["Location"])
    return offered


def _routes(subnet_id: str, vpc_id: str | None, region: str) -> SubnetRoutes:
    """The subnet's route table (its own association, else the VPC's main table): the default
    route's target and the services of the VPC endpoints the subnet reaches: a gateway endpoint
    through its route table; an interface endpoint of the VPC with private DNS from any of its
    subnets (the AWS service's own name resolves to the endpoint's addresses, reached by the VPC's
    local route; PrivLink guide, "Access an AWS service using an interface VPC endpoint")."""
    if vpc_id is None:
        return SubnetRoutes(subnet_id, None, frozenset(), problem="the subnet does not exist")
    ec2 = aws.client("ec2")
    try:
        tables = ec2.describe_route_tables(
            Filters=[{"Name": "association.subnet-id", "Values": [subnet_id]}]
        )["RouteTables"]
        if not tables:
            tables = ec2.describe_route_tables(
                Filters=[
                    {"Name": "vpc-id", "Values": [vpc_id]},
                    {"Name": "association.main", "Values": ["true"]},
                ]
            )["RouteTables"]
        endpoints = ec2.describe_vpc_endpoints(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])[
            "VpcEndpoints"
        ]
    except (ClientError, BotoCoreError) as exc:
        return SubnetRoutes(subnet_id, None, frozenset(), problem=f"its routes cannot be read ({_code(exc)})")
    table = tables[0] if tables else {}
    target = None
    for route in table.get("Routes", []):
        if route.get("DestinationCidrBlock") == "0.0.0.0/0" and route.get("State", "active") == "active":
            target = route.get("NatGatewayId") or route.get("GatewayId") or route.get("NetworkInterfaceId")
    table_id = table.get("RouteTableId")
    prefix = f"com.amazonaws.{region}."
    services = set()
    for ep in endpoints:
        if ep.get("State", "available").lower() not in ("available", "pending"):
            continue
        reaches = (
            table_id in ep.get("RouteTableIds", [])
            if ep.get("VpcEndpointType") == "Gateway"
            else bool(ep.get("PrivateDnsEnabled", True))
        )
        name = str(ep.get("ServiceName", ""))
        if reaches and name.startswith(prefix):
            services.add(name[len(prefix) :])
    return SubnetRoutes(subnet_id, target, frozenset(services))


def _secret(arn: str) -> CheckResult:
    if not arn:
        return preflight.check_secret(arn, None, None)
    try:
        found = aws.client("secretsmanager").describe_secret(SecretId=arn)
    except (ClientError, BotoCoreError) as exc:
        return preflight.check_secret(arn, None, _code(exc))
    return preflight.check_secret(arn, found, None)


def _pcluster() -> CheckResult:
    try:
        versions = pcluster_api().official_image_versions()
    except CryopilotError as exc:
        status = exc.details.get("status")
        if isinstance(exc, ThrottledError) and status is not None:  # 429 or 5xx: later, not no
            raise
        return preflight.check_pcluster(
            None, f"HTTP {status}" if status else type(exc).__name__, PCLUSTER_VERSION
        )
    except ValueError as exc:  # a malformed ParallelClusterApiUrl
        return preflight.check_pcluster(None, type(exc).__name__, PCLUSTER_VERSION)
    return preflight.check_pcluster(versions, None, PCLUSTER_VERSION)


def _bucket_region(bucket: str, region: str) -> CheckResult:
    try:
        where = aws.client("s3").get_bucket_location(Bucket=bucket).get("LocationConstraint")
    except (ClientError, BotoCoreError) as exc:
        return preflight.check_bucket_region(bucket, None, _code(exc), region)
    return preflight.check_bucket_region(bucket, where, None, region)


def _subscriptions(topic_arn: str) -> CheckResult:
    sns = aws.client("sns")
    confirmed = pending = 0
    try:
        for page in sns.get_paginator("list_subscriptions_by_topic").paginate(TopicArn=topic_arn):
            for sub in page.get("Subscriptions", []):
                arn = str(sub.get("SubscriptionArn", ""))
                if arn.startswith("arn:"):
                    confirmed += 1
                else:  # "PendingConfirmation"
                    pending += 1
    except (ClientError, BotoCoreError) as exc:
        return preflight.check_subscriptions(0, 0, _code(exc))
    return preflight.check_subscriptions(confirmed, pending, None)


def _data(inputs: DataInputs) -> list[CheckResult]:
    gain_found = None
    if inputs.gain_reference is not None:
        bucket, _, prefix = inputs.uri[len("s3://") :].partition("/")
        try:
            aws.client("s3").head_object(Bucket=bucket, Key=prefix + inputs.gain_reference)
            gain_found = True
        except ClientError as exc:
            _code(exc)  # a throttled HEAD is retried, not taken for a missing file
            gain_found = False
    return preflight.check_data(
        inputs.uri,
        inputs.glob,
        inputs.measured.files,
        inputs.expected_files,
        inputs.gain_reference,
        gain_found,
    )


def run_checks(
    settings: Settings, data: DataInputs | None = None, spot_queues: Sequence[str] = ()
) -> list[CheckResult]:
    """Every preflight check of the stack (and, with ``data``, of one manifest's data), in order;
    ``spot_queues``: the GPU queues the run buys Spot on too (their Spot quotas are checked)."""
    region = settings.region
    catalogue = Catalogue.for_deployment(settings.price_overrides)
    try:
        needs = preflight.vcpu_needs(node_needs(settings, catalogue, spot_queues=spot_queues))
        fallbacks = {
            t: preflight.vcpu_needs(node_needs(settings, catalogue, t, spot_queues))
            for t in settings.fallback_gpu8_types
        }
    except CryopilotError as exc:  # an instance type the catalogue does not know: its vCPUs unknown
        results = [CheckResult("quotas", "fail", str(exc), "configure a type of the catalogue")]
    else:
        values = _quota_values(sorted({*needs, *(c for f in fallbacks.values() for c in f)}))
        results = preflight.check_quotas(needs, values, region)
        results += preflight.check_fallback_quotas(needs, fallbacks, values, region)

    compute = settings.compute_subnets or [settings.head_node_subnet_id]
    subnet_ids = list(dict.fromkeys([settings.head_node_subnet_id, *compute]))
    zones, vpcs = _subnets(subnet_ids)
    types_by_subnet: dict[str, list[str]] = {settings.head_node_instance_type: [settings.head_node_subnet_id]}
    for instance_type in settings.queue_instance_types().values():
        types_by_subnet.setdefault(instance_type, [])
        types_by_subnet[instance_type] = list(dict.fromkeys([*types_by_subnet[instance_type], *compute]))
    try:
        offered = _offered(list(types_by_subnet))
    except (ClientError, BotoCoreError) as exc:
        results.append(
            CheckResult(
                "instance offerings",
                "fail",
                f"cannot be read ({_code(exc)})",
                "the Validate function's role needs ec2:DescribeInstanceTypeOfferings (template.yaml)",
            )
        )
    else:
        results.append(preflight.check_offerings(types_by_subnet, zones, offered, region))
    results.extend(preflight.check_egress(_routes(s, vpcs.get(s), region), region) for s in subnet_ids)

    results.append(_secret(settings.licence_secret_arn))
    results.append(_pcluster())
    if data is not None:
        results.extend(_data(data))
    results.append(_bucket_region(settings.results_bucket, region))
    results.append(_subscriptions(settings.topic_arn))
    return results


def results_doc(results: Sequence[CheckResult]) -> list[dict[str, Any]]:
    return [r.to_dict() for r in results]
