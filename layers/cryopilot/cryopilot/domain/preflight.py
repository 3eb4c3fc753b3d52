"""Preflight: the checks that fail a doomed run in seconds, before any cluster exists.

Each rule here is pure: what AWS answered goes in, one :class:`CheckResult` comes out (a name, a
result ``ok``/``warn``/``fail``, what was found and, unless it is ok, one sentence saying what to
do, with the console page or CLI command). :mod:`cryopilot.adapters.preflight` asks AWS and the
ParallelCluster API; Validate and ``cryopilot preflight`` both run it, so each rule is in one place.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from cryopilot.core.validation import MAX_MESSAGE_CHARS, clip, printable

Status = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class CheckResult:
    """One check: its name, its result, what was found and (unless ok) what to do."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    @property
    def line(self) -> str:
        text = f"{self.name}: {self.detail}"
        return f"{text}; {self.fix}" if self.fix and self.status != "ok" else text

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def failed(results: Iterable[CheckResult]) -> list[CheckResult]:
    return [r for r in results if r.status == "fail"]


def failure_message(results: Iterable[CheckResult]) -> str:
    """One line naming every failed check and what to do (the run record's and mail's reason)."""
    return clip(
        printable("preflight: " + " | ".join(r.line for r in failed(results))), MAX_MESSAGE_CHARS - 200
    )


# --------------------------------------------------------------------------- service quotas

#: EC2's vCPU quotas, per instance family, as Service Quotas names them (service code ``ec2``).
#: Names: Amazon EC2 User Guide, "Amazon EC2 service quotas" / "Spot Instance quotas"
#: (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/using-spot-limits.html). Codes: the
#: Service Quotas console's page of each quota (.../servicequotas/home/services/ec2/quotas/<code>);
#: L-1216C47A is the example of the AWS CLI User Guide (``aws service-quotas
#: get-aws-default-service-quota --service-code ec2 --quota-code L-1216C47A``). An account's list:
#: ``aws service-quotas list-service-quotas --service-code ec2``.
QUOTA_CODES: dict[tuple[str, str], tuple[str, str]] = {
    ("P", "ONDEMAND"): ("L-417A185B", "Running On-Demand P instances"),
    ("G", "ONDEMAND"): ("L-DB2E81BA", "Running On-Demand G and VT instances"),
    ("Standard", "ONDEMAND"): (
        "L-1216C47A",
        "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances",
    ),
    ("P", "SPOT"): ("L-7212CCBC", "All P Spot Instance Requests"),
    ("G", "SPOT"): ("L-3819A6DF", "All G and VT Spot Instance Requests"),
    ("Standard", "SPOT"): ("L-34B43A08", "All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance Requests"),
}
_FAMILY_RE = re.compile(r"^([a-z]+)\d")


def quota_family(instance_type: str) -> str | None:
    """The vCPU quota family of an instance type: ``P``, ``G`` (G and VT) or ``Standard``; None for
    the families cryopilot never configures (X, F, Inf, Trn, DL, ...)."""
    match = _FAMILY_RE.match(instance_type)
    letters = match.group(1) if match else ""
    if letters == "p":
        return "P"
    if letters.startswith("g") or letters == "vt":  # g5, g6e, gr6; vt1
        return "G"
    if letters in ("dl", "hpc", "inf", "trn", "mac") or letters.startswith(("x", "u", "f")):
        return None  # quotas of their own, never configured by cryopilot
    if letters[:1] in set("acdhimrtz"):  # m6i, c7gn, r7iz, im4gn, is4gen, z1d
        return "Standard"
    return None


@dataclass(frozen=True)
class NodeNeed:
    """The most nodes of one instance type that may run at once, and how they are bought."""

    instance_type: str
    nodes: int
    vcpus: int
    capacity_type: Literal["ONDEMAND", "SPOT"] = "ONDEMAND"


def vcpu_needs(needs: Sequence[NodeNeed]) -> dict[str, tuple[str, int, list[str]]]:
    """Quota code -> (quota name, vCPUs needed when every queue is at its largest node count at
    once, the instance types counted). A type of a family without a quota rule is left out."""
    out: dict[str, tuple[str, int, list[str]]] = {}
    for need in needs:
        family = quota_family(need.instance_type)
        if family is None:
            continue
        code, name = QUOTA_CODES[(family, need.capacity_type)]
        _, total, types = out.get(code, (name, 0, []))
        out[code] = (name, total + need.nodes * need.vcpus, [*types, f"{need.nodes} x {need.instance_type}"])
    return out


def check_quotas(
    needs: Mapping[str, tuple[str, int, list[str]]], values: Mapping[str, float | str], region: str
) -> list[CheckResult]:
    """One result per quota: its value (or the error reading it, a str) against the vCPUs needed."""
    results = []
    for code, (name, need, types) in sorted(needs.items()):
        value = values.get(code)
        check = f"quota {code}"
        fix = (
            f"request at least {need} vCPUs: Service Quotas console > Amazon EC2 > '{name}', or"
            f" `aws service-quotas request-service-quota-increase --service-code ec2 --quota-code {code}"
            f" --desired-value {need} --region {region}`"
        )
        if isinstance(value, str) or value is None:
            results.append(
                CheckResult(
                    check,
                    "fail",
                    f"'{name}' cannot be read ({value or 'no answer'})",
                    "the Validate function's role needs servicequotas:GetServiceQuota (template.yaml);"
                    f" the value is in the Service Quotas console > Amazon EC2 > '{name}' (at least"
                    f" {need} vCPUs)",
                )
            )
        elif value < need:
            results.append(
                CheckResult(
                    check,
                    "fail",
                    f"'{name}' is {value:g} vCPUs; the cluster may run {', '.join(types)} at once: {need}",
                    fix,
                )
            )
        else:
            results.append(CheckResult(check, "ok", f"'{name}' is {value:g} vCPUs, {need} needed"))
    return results


def check_fallback_quotas(
    needs: Mapping[str, tuple[str, int, list[str]]],
    fallbacks: Mapping[str, Mapping[str, tuple[str, int, list[str]]]],
    values: Mapping[str, float | str],
    region: str,
) -> list[CheckResult]:
    """A warning per capacity fallback (another gpu8 type) that a quota the configured placement
    meets would not cover: the run goes on, and fails there only if EC2 has no capacity first."""
    results = []
    for instance_type, fallback in fallbacks.items():
        for code, (name, need, types) in sorted(fallback.items()):
            value = values.get(code)
            if not isinstance(value, float) or value >= need or needs.get(code, ("", 0, []))[1] > value:
                continue  # unread, enough, or already failed for the configured placement
            results.append(
                CheckResult(
                    f"quota {code} (fallback {instance_type})",
                    "warn",
                    f"'{name}' is {value:g} vCPUs; the capacity fallback to {instance_type} may run"
                    f" {', '.join(types)} at once: {need}",
                    f"request {need} vCPUs (`aws service-quotas request-service-quota-increase --service-code"
                    f" ec2 --quota-code {code} --desired-value {need} --region {region}`), or drop"
                    f" {instance_type} from FallbackGpu8InstanceTypes",
                )
            )
    return results


# --------------------------------------------------------------------------- offerings


def check_offerings(
    types_by_subnet: Mapping[str, Sequence[str]],
    subnet_azs: Mapping[str, str | None],
    offered: Mapping[str, set[str]],
    region: str,
) -> CheckResult:
    """Every instance type is offered (DescribeInstanceTypeOfferings, by availability zone) in the
    zone of at least one subnet it may run in."""
    missing: list[str] = []
    for instance_type, subnets in sorted(types_by_subnet.items()):
        zones = {subnet_azs.get(s) for s in subnets} - {None}
        if not zones & offered.get(instance_type, set()):
            where = ", ".join(f"{s} ({subnet_azs.get(s) or 'unknown zone'})" for s in subnets)
            missing.append(f"{instance_type} is not offered in {where}")
    if not missing:
        return CheckResult(
            "instance offerings", "ok", f"{len(types_by_subnet)} types offered in their subnets"
        )
    return CheckResult(
        "instance offerings",
        "fail",
        "; ".join(missing),
        "give a subnet in a zone that offers it (ComputeSubnetIds / HeadNodeSubnetId), or another type; zones"
        f" offering a type: `aws ec2 describe-instance-type-offerings --location-type availability-zone"
        f" --filters Name=instance-type,Values=TYPE --region {region}`",
    )


# --------------------------------------------------------------------------- network

#: The VPC endpoints a subnet without internet access needs: ParallelCluster's own ("AWS
#: ParallelCluster in a single subnet with no internet access", ParallelCluster 3 User Guide: logs,
#: cloudformation, ec2, s3 and dynamodb; secretsmanager, which that page requires only with
#: DirectoryService, is needed here for the head node to read the licence secret), and Systems
#: Manager's three for Run Command, which the controller drives the head node with (Systems
#: Manager User Guide, "Improve the security of EC2 instances by using VPC endpoints").
REQUIRED_ENDPOINTS = (
    "cloudformation",
    "dynamodb",
    "ec2",
    "ec2messages",
    "logs",
    "s3",
    "secretsmanager",
    "ssm",
    "ssmmessages",
)


@dataclass(frozen=True)
class SubnetRoutes:
    """What a subnet's route table says: the target of its default route (``nat-...``, ``igw-...``,
    or None) and the services of the VPC endpoints it reaches (``s3``, ``ec2``, ...)."""

    subnet_id: str
    default_target: str | None
    endpoint_services: frozenset[str]
    problem: str | None = None  # the subnet or its route table could not be read


def check_egress(subnet: SubnetRoutes, region: str) -> CheckResult:
    """A default route through a NAT gateway, or every endpoint a no-internet subnet needs (then a
    warning: cryoSPARC's licence check and download need the internet)."""
    name = f"network {subnet.subnet_id}"
    if subnet.problem:
        return CheckResult(
            name,
            "fail",
            subnet.problem,
            "give HeadNodeSubnetId / ComputeSubnetIds subnets that exist in this region (`aws ec2"
            " describe-subnets --filters Name=vpc-id,Values=VPC_ID`), and redeploy",
        )
    target = subnet.default_target or ""
    if target.startswith("nat-"):
        return CheckResult(name, "ok", f"default route through NAT gateway {target}")
    missing = [s for s in REQUIRED_ENDPOINTS if s not in subnet.endpoint_services]
    if not missing:
        return CheckResult(
            name,
            "warn",
            "no default route; every VPC endpoint ParallelCluster needs is there",
            "cryoSPARC's licence check and download need egress: add a NAT gateway route (0.0.0.0/0)"
            " or an HTTPS proxy",
        )
    found = (
        f"default route to {target}, not a NAT gateway"
        if target
        else "no default route through a NAT gateway"
    )
    return CheckResult(
        name,
        "fail",
        f"{found}, and no VPC endpoint for {', '.join(missing)}",
        "route 0.0.0.0/0 through a NAT gateway (VPC console > Route tables > Edit routes), or create the"
        f" endpoints: `aws ec2 create-vpc-endpoint --service-name com.amazonaws.{region}.SERVICE ...`",
    )


# --------------------------------------------------------------------------- the rest


def check_secret(arn: str, found: Mapping[str, Any] | None, error: str | None) -> CheckResult:
    """The licence secret exists and is not scheduled for deletion (DescribeSecret's answer)."""
    name = "licence secret"
    fix = (
        "create it (`aws secretsmanager create-secret --name cryopilot/cryosparc-licence"
        " --secret-string LICENCE_ID`) and give its ARN as CryosparcLicenceSecretArn"
    )
    if not arn:
        return CheckResult(name, "fail", "CryosparcLicenceSecretArn is empty", fix)
    if error or found is None:
        return CheckResult(name, "fail", f"{arn} cannot be described ({error or 'no answer'})", fix)
    if found.get("DeletedDate"):
        return CheckResult(
            name,
            "fail",
            f"{arn} is scheduled for deletion",
            f"restore it: `aws secretsmanager restore-secret --secret-id {arn}`",
        )
    key = str(found.get("KmsKeyId") or "")
    if key and not key.endswith("alias/aws/secretsmanager"):
        # DescribeSecret names a key only when it is not the AWS managed one; the head node's policy
        # (HeadNodePolicy) grants secretsmanager:GetSecretValue, which reads such a secret only with
        # kms:Decrypt on its key too
        return CheckResult(
            name,
            "warn",
            f"{found.get('Name') or arn} is encrypted with the customer managed key {key}",
            "let the head node decrypt it: allow kms:Decrypt to the head node's role in that key's policy",
        )
    return CheckResult(name, "ok", f"{found.get('Name') or arn} exists")


def check_pcluster(versions: Sequence[str] | None, error: str | None, pinned: str) -> CheckResult:
    """The ParallelCluster API answers (ListOfficialImages), and its version is the pinned one."""
    name = "ParallelCluster API"
    if error is not None or versions is None:
        return CheckResult(
            name,
            "fail",
            f"does not answer ({error or 'no answer'})",
            "check ParallelClusterApiUrl (leave it empty to deploy the API with the stack) and that the"
            " cluster function may call it (execute-api:Invoke)",
        )
    other = sorted(set(versions) - {pinned})
    if not versions or other:
        return CheckResult(
            name,
            "fail",
            f"its version is {', '.join(other) or 'not given'}, cryopilot targets {pinned}",
            f"deploy the ParallelCluster {pinned} API (leave ParallelClusterApiUrl empty)"
            " or give the URL of one",
        )
    return CheckResult(name, "ok", f"answers, version {pinned}")


def check_data(
    uri: str, glob: str, files: int, expected: int | None, gain_key: str | None, gain_found: bool | None
) -> list[CheckResult]:
    """The data prefix holds at least ``expected_files`` matching the glob, and the gain reference
    is there."""
    results = []
    if expected is not None and files < expected:
        results.append(
            CheckResult(
                "input data",
                "fail",
                f"{uri} holds {files:,} files matching {glob!r}, input.expected_files is {expected:,}",
                "upload the missing files before the manifest (the manifest's upload starts the run)",
            )
        )
    else:
        wanted = f" of {expected:,} expected" if expected is not None else ""
        results.append(CheckResult("input data", "ok", f"{files:,} files match {glob!r}{wanted}"))
    if gain_key is not None:
        if gain_found:
            results.append(CheckResult("gain reference", "ok", f"{gain_key} exists"))
        else:
            results.append(
                CheckResult(
                    "gain reference",
                    "fail",
                    f"{uri}{gain_key} does not exist (acquisition.gain_reference)",
                    "upload the gain reference to that key, or correct acquisition.gain_reference",
                )
            )
    return results


def check_bucket_region(
    bucket: str, bucket_region: str | None, error: str | None, region: str
) -> CheckResult:
    """The results bucket is in the stack's region (GetBucketLocation's LocationConstraint)."""
    name = "results bucket"
    if error is not None:
        return CheckResult(
            name,
            "fail",
            f"{bucket}'s location cannot be read ({error})",
            "the Validate function's role needs s3:GetBucketLocation on it (template.yaml); redeploy",
        )
    # S3 API reference, GetBucketLocation: null for us-east-1, and "EU" for a bucket made with the
    # legacy location constraint EU (eu-west-1)
    where = {"": "us-east-1", "EU": "eu-west-1"}.get(bucket_region or "", bucket_region or "")
    if where != region:
        return CheckResult(
            name,
            "fail",
            f"{bucket} is in {where}, the stack in {region}",
            "deploy the stack in the bucket's region (the stack makes its own results bucket)",
        )
    return CheckResult(name, "ok", f"{bucket} is in {region}")


def check_subscriptions(confirmed: int, pending: int, error: str | None) -> CheckResult:
    """The topic has at least one confirmed subscription (a warning only: the run goes on)."""
    name = "mail subscriptions"
    if error is not None:
        return CheckResult(
            name,
            "warn",
            f"cannot be listed ({error})",
            "the Validate function's role needs sns:ListSubscriptionsByTopic on the topic (template.yaml)",
        )
    if confirmed == 0:
        return CheckResult(
            name,
            "warn",
            f"no confirmed subscription ({pending} pending): nobody will get the run's mails",
            "confirm the subscription from the mail SNS sent to NotificationEmail",
        )
    return CheckResult(name, "ok", f"{confirmed} confirmed")
