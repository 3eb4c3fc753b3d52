"""Security properties of the deployment, read from template.yaml and the cluster configuration.

``make security`` runs checkov on the template; these tests hold what checkov does not (or only
partly) check, and keep its suppressions honest: every skip sits in the template's ``Metadata``,
names a real check for that resource type and says why.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryopilot_sim.template import load_template, resources_of_type

from tests.conftest import ROOT, make_cluster_request

TPL = load_template()
RESOURCES: dict[str, dict[str, Any]] = TPL["Resources"]

TOOLS_SITE_PACKAGES = sorted((ROOT / ".venv-tools" / "lib").glob("python3*/site-packages"))


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# ------------------------------------------------------------------ (a) no wildcard actions

#: SAM policy templates the functions may use, with every action each grants (from
#: aws-sam-translator's policy_templates.json; checked against it below when the tools are
#: installed). Any other template, or an AWS managed policy by name, must be reviewed first.
SAM_POLICY_TEMPLATES: dict[str, set[str]] = {
    "DynamoDBCrudPolicy": {
        "dynamodb:GetItem",
        "dynamodb:DeleteItem",
        "dynamodb:PutItem",
        "dynamodb:Scan",
        "dynamodb:Query",
        "dynamodb:UpdateItem",
        "dynamodb:BatchWriteItem",
        "dynamodb:BatchGetItem",
        "dynamodb:DescribeTable",
        "dynamodb:ConditionCheckItem",
    },
    "S3ReadPolicy": {
        "s3:GetObject",
        "s3:ListBucket",
        "s3:GetBucketLocation",
        "s3:GetObjectVersion",
        "s3:GetLifecycleConfiguration",
    },
    "LambdaInvokePolicy": {"lambda:InvokeFunction"},
    "SNSPublishMessagePolicy": {"sns:Publish"},
}


def _is_wildcard_action(action: str) -> bool:
    return action == "*" or action.endswith(":*")


def _policy_statements(node: Any, where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every statement of every policy document anywhere under ``node`` (any resource type:
    inline SAM policies, managed policies, roles, bucket, queue and topic policies, key policies)."""
    if isinstance(node, dict):
        if "Statement" in node:
            for statement in _as_list(node["Statement"]):
                yield where, statement
        for key, value in node.items():
            yield from _policy_statements(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _policy_statements(value, f"{where}[{i}]")


def wildcard_problems(statements: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """What in these statements grants every action of AWS or of a service.

    An Allow may name neither ``*`` nor ``service:*``, nor use NotAction (allow all but a few).
    A Deny may: the TLS-only bucket statements deny every S3 action over plain HTTP, and a
    broad Deny only ever takes access away - but it must then be conditional.
    """
    problems = []
    for where, st in statements:
        actions = [a for a in _as_list(st.get("Action", [])) if isinstance(a, str)]
        wild = [a for a in actions if _is_wildcard_action(a.lower())]
        if st.get("Effect") == "Allow":
            if wild:
                problems.append(f"{where}: Allow {wild}")
            if "NotAction" in st:
                problems.append(f"{where}: Allow with NotAction")
        elif wild and "Condition" not in st:
            problems.append(f"{where}: unconditional Deny {wild}")
    return problems


def test_the_wildcard_check_catches_what_it_should() -> None:
    bad = [
        ("a", {"Effect": "Allow", "Action": "*", "Resource": "x"}),
        ("b", {"Effect": "Allow", "Action": ["sqs:SendMessage", "S3:*"], "Resource": "x"}),
        ("c", {"Effect": "Allow", "NotAction": ["iam:*"], "Resource": "*"}),
        ("d", {"Effect": "Deny", "Action": "s3:*", "Resource": "x"}),
    ]
    assert [p.split(":")[0] for p in wildcard_problems(bad)] == ["a", "b", "c", "d"]
    tls_deny = {
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:*",
        "Resource": "x",
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }
    fine = [("e", {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": "x"}), ("f", tls_deny)]
    assert wildcard_problems(fine) == []


def test_no_policy_anywhere_in_the_template_allows_a_wildcard_action() -> None:
    statements = list(_policy_statements(RESOURCES, "Resources"))
    # every kind of policy the template holds is seen by the walk
    seen = {where.split(".")[1] for where, _ in statements}
    for kind in ("AWS::S3::BucketPolicy", "AWS::IAM::ManagedPolicy", "AWS::Serverless::Function"):
        assert set(resources_of_type(TPL, kind)) & seen, kind
    assert wildcard_problems(statements) == []


def test_sam_policies_are_statements_template_policies_or_reviewed_policy_templates() -> None:
    """A SAM ``Policies`` entry grants what the walk above cannot see when it is an AWS managed
    policy (a name or ARN) or a policy template: allow only templates known to grant named
    actions, and managed policies defined in this template (which the walk does see)."""
    managed = set(resources_of_type(TPL, "AWS::IAM::ManagedPolicy"))
    for logical, res in resources_of_type(
        TPL, "AWS::Serverless::Function", "AWS::Serverless::StateMachine"
    ).items():
        for entry in _as_list(res["Properties"].get("Policies", [])):
            assert isinstance(entry, dict), f"{logical}: managed policy {entry!r} by name"
            if "Statement" in entry:
                continue
            if "Ref" in entry:
                assert entry["Ref"] in managed, f"{logical}: policy {entry['Ref']} is not this template's"
                continue
            ((name, _),) = entry.items()
            assert name in SAM_POLICY_TEMPLATES, f"{logical}: unreviewed policy template {name}"
            assert not any(_is_wildcard_action(a) for a in SAM_POLICY_TEMPLATES[name])


def _tools_file(relative: str) -> Path:
    for site in TOOLS_SITE_PACKAGES:
        if (site / relative).is_file():
            return site / relative
    pytest.skip(f"{relative} is not installed in .venv-tools (make setup)")


def test_the_reviewed_policy_templates_grant_what_sam_says() -> None:
    import json

    path = _tools_file("samtranslator/policy_templates_data/policy_templates.json")
    templates = json.loads(path.read_text(encoding="utf-8"))["Templates"]
    for name, actions in SAM_POLICY_TEMPLATES.items():
        granted = {
            a
            for st in templates[name]["Definition"]["Statement"]
            if st.get("Effect", "Allow") == "Allow"
            for a in _as_list(st["Action"])
        }
        assert granted == actions, name


# ------------------------------------------------------------------ (b) buckets and queues

BUCKETS = sorted(resources_of_type(TPL, "AWS::S3::Bucket"))


def _bucket_policy(logical: str) -> dict[str, Any]:
    (policy,) = [
        r["Properties"]["PolicyDocument"]
        for r in resources_of_type(TPL, "AWS::S3::BucketPolicy").values()
        if r["Properties"]["Bucket"] == {"Ref": logical}
    ]
    return policy


def _log_destinations() -> set[str]:
    return {
        RESOURCES[b]["Properties"]["LoggingConfiguration"]["DestinationBucketName"]["Ref"]
        for b in BUCKETS
        if "LoggingConfiguration" in RESOURCES[b]["Properties"]
    }


@pytest.mark.parametrize("logical", BUCKETS)
def test_bucket_blocks_every_kind_of_public_access_and_disables_acls(logical: str) -> None:
    props = RESOURCES[logical]["Properties"]
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    assert props["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]


@pytest.mark.parametrize("logical", BUCKETS)
def test_bucket_encrypts_every_object_by_default(logical: str) -> None:
    rules = RESOURCES[logical]["Properties"]["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rules
    for rule in rules:
        assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in {"aws:kms", "AES256"}


@pytest.mark.parametrize("logical", BUCKETS)
def test_bucket_denies_every_request_without_tls_on_the_bucket_and_its_objects(logical: str) -> None:
    arn = {"Fn::GetAtt": [logical, "Arn"]}
    objects = {"Fn::Sub": f"${{{logical}.Arn}}/*"}
    denies = [
        st
        for st in _as_list(_bucket_policy(logical)["Statement"])
        if st["Effect"] == "Deny"
        and str(st.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport")).lower() == "false"
    ]
    assert denies, f"{logical} has no TLS-only statement"
    (st,) = denies
    assert st["Principal"] in ("*", {"AWS": "*"})
    assert set(_as_list(st["Action"])) & {"s3:*", "*"}
    assert arn in _as_list(st["Resource"])
    assert objects in _as_list(st["Resource"])


def test_every_bucket_but_the_log_bucket_sends_access_logs_to_it() -> None:
    (log_bucket,) = _log_destinations()
    assert RESOURCES[log_bucket]["Type"] == "AWS::S3::Bucket"
    prefixes = []
    for logical in BUCKETS:
        logging = RESOURCES[logical]["Properties"].get("LoggingConfiguration")
        if logical == log_bucket:
            assert logging is None, "the log bucket must not log into itself"
            continue
        assert logging, f"{logical} has no server access logging"
        assert logging["DestinationBucketName"] == {"Ref": log_bucket}
        assert re.fullmatch(r"[a-z0-9-]+/", logging["LogFilePrefix"]), logical
        prefixes.append(logging["LogFilePrefix"])
    assert len(prefixes) == len(set(prefixes)) == len(BUCKETS) - 1, "one prefix per bucket"


def test_log_bucket_admits_only_s3_log_delivery_for_this_stack_s_buckets() -> None:
    (log_bucket,) = _log_destinations()
    props = RESOURCES[log_bucket]["Properties"]
    # S3 delivers server access logs only to buckets encrypted with SSE-S3
    (rule,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"] == {"SSEAlgorithm": "AES256"}
    assert props["LifecycleConfiguration"]["Rules"][0]["ExpirationInDays"] == {"Ref": "LogRetentionDays"}

    allows = [st for st in _as_list(_bucket_policy(log_bucket)["Statement"]) if st["Effect"] == "Allow"]
    (st,) = allows
    assert st["Principal"] == {"Service": "logging.s3.amazonaws.com"}
    assert _as_list(st["Action"]) == ["s3:PutObject"]
    sources = [b for b in BUCKETS if b != log_bucket]
    prefixes = [RESOURCES[b]["Properties"]["LoggingConfiguration"]["LogFilePrefix"] for b in sources]
    assert sorted(r["Fn::Sub"] for r in st["Resource"]) == sorted(
        f"${{{log_bucket}.Arn}}/{p}*" for p in prefixes
    )
    assert st["Condition"]["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}
    assert sorted(a["Fn::GetAtt"][0] for a in st["Condition"]["ArnLike"]["aws:SourceArn"]) == sources


@pytest.mark.parametrize("logical", sorted(resources_of_type(TPL, "AWS::SQS::Queue")))
def test_queues_are_encrypted(logical: str) -> None:
    props = RESOURCES[logical]["Properties"]
    assert props.get("KmsMasterKeyId") or props.get("SqsManagedSseEnabled") is True


# Events that Lambda receives asynchronously (the caller does not wait for the result).
_ASYNC_EVENT_TYPES = {"EventBridgeRule", "CloudWatchEvent", "Schedule", "ScheduleV2", "S3", "SNS"}
FUNCTIONS = sorted(resources_of_type(TPL, "AWS::Serverless::Function"))


def _invoked_asynchronously(logical: str) -> bool:
    events = RESOURCES[logical]["Properties"].get("Events") or {}
    if any(ev["Type"] in _ASYNC_EVENT_TYPES for ev in events.values()):
        return True
    # CloudFormation invokes a custom resource's function asynchronously
    token = {"Fn::GetAtt": [logical, "Arn"]}
    return any(
        r["Type"].startswith("Custom::") and r["Properties"].get("ServiceToken") == token
        for r in RESOURCES.values()
    )


def _skips(logical: str) -> list[dict[str, Any]]:
    metadata = RESOURCES[logical].get("Metadata") or {}
    return list((metadata.get("checkov") or {}).get("skip") or []) + list(
        (metadata.get("bridgecrew") or {}).get("skip") or []
    )


@pytest.mark.parametrize("logical", FUNCTIONS)
def test_asynchronously_invoked_functions_have_an_encrypted_dead_letter_queue(logical: str) -> None:
    props = RESOURCES[logical]["Properties"]
    skipped = {s["id"] for s in _skips(logical)}
    if not _invoked_asynchronously(logical):
        # nothing is ever queued for it: a dead-letter queue is skipped, with a reason
        assert "DeadLetterQueue" in props or "CKV_AWS_116" in skipped, logical
        return
    assert "CKV_AWS_116" not in skipped, f"{logical} is invoked asynchronously: give it a DLQ"
    assert "DeadLetterQueue" in props, f"{logical} is invoked asynchronously: give it a DLQ"
    dlq = props["DeadLetterQueue"]
    assert dlq["Type"] == "SQS"
    queue = dlq["TargetArn"]["Fn::GetAtt"]
    assert queue[1] == "Arn"
    assert RESOURCES[queue[0]]["Type"] == "AWS::SQS::Queue"
    assert RESOURCES[queue[0]]["Properties"]["MessageRetentionPeriod"] == 14 * 24 * 3600
    assert RESOURCES[queue[0]]["Properties"].get("KmsMasterKeyId"), "checkov wants a KMS key"


def test_the_functions_known_to_be_asynchronous_are_seen_as_such() -> None:
    assert {f for f in FUNCTIONS if _invoked_asynchronously(f)} >= {
        "StartRunFunction",
        "CleanupFunction",
        "HeadNodeBootstrapFunction",
    }
    assert not _invoked_asynchronously("ValidateFunction")


# ------------------------------------------------------------------ (c) checkov skips

_CHECK_ID = re.compile(r"^CKV2?_[A-Z0-9]+_\d+$")
_SKIPS = [(logical, skip) for logical in RESOURCES for skip in _skips(logical)]


def test_the_template_has_skips_to_check() -> None:
    assert len(_SKIPS) >= 10


@pytest.mark.parametrize(("logical", "skip"), _SKIPS, ids=[f"{lg}-{s.get('id')}" for lg, s in _SKIPS])
def test_every_skip_names_a_check_and_says_why(logical: str, skip: dict[str, Any]) -> None:
    assert set(skip) == {"id", "comment"}, f"{logical}: {skip}"
    assert _CHECK_ID.match(str(skip["id"])), f"{logical}: {skip['id']!r} is not a checkov check id"
    reason = " ".join(str(skip["comment"]).split())
    assert len(reason) >= 40, f"{logical} {skip['id']}: say why ({reason!r})"
    assert skip["id"] not in reason, "the reason must be more than the check's name"


def test_no_resource_skips_a_check_twice() -> None:
    for logical in RESOURCES:
        ids = [s["id"] for s in _skips(logical)]
        assert len(ids) == len(set(ids)), logical


def test_no_check_is_suppressed_outside_metadata() -> None:
    """checkov also honours ``# checkov:skip=`` comments; they would bypass the tests above."""
    text = (ROOT / "template.yaml").read_text(encoding="utf-8")
    assert not re.search(r"(checkov|bridgecrew):skip\s*=", text, re.IGNORECASE)


_LIST_CHECKOV_CHECKS = """
import json
from checkov.cloudformation.checks.resource.registry import cfn_registry
found = {}
for registered in (cfn_registry.checks, cfn_registry.wildcard_checks):
    for resource_type, checks in registered.items():
        for check in checks:
            found.setdefault(check.id, []).append(resource_type)
print(json.dumps(found))
"""


def _checkov_resource_checks() -> dict[str, set[str]]:
    """Check id -> the resource types it inspects, from the checkov that ``make security`` runs."""
    import json
    import os
    import subprocess

    python = ROOT / ".venv-tools" / "bin" / "python"
    if not python.is_file():
        pytest.skip("checkov is not installed in .venv-tools (make setup)")
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CKV_SKIP_PACKAGE_UPDATE_CHECK": "TRUE"}
    out = subprocess.run(
        [str(python), "-c", _LIST_CHECKOV_CHECKS], capture_output=True, text=True, check=True, env=env
    ).stdout
    return {check_id: set(types) for check_id, types in json.loads(out).items()}


def test_every_skipped_check_exists_and_applies_to_the_resource() -> None:
    checks = _checkov_resource_checks()
    assert len(checks) > 100, "could not read checkov's checks"
    for logical, skip in _SKIPS:
        assert skip["id"] in checks, f"{logical}: checkov has no CloudFormation check {skip['id']}"
        rtype = RESOURCES[logical]["Type"]
        assert rtype in checks[skip["id"]], f"{logical}: {skip['id']} does not inspect {rtype}"


def test_make_test_runs_checkov_offline_and_fails_on_any_failed_check() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    test_recipe = re.search(r"^test:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert test_recipe, "no test target"
    # the targets its `$(MAKE) ...` lines name (options and variables aside)
    run = {
        w for line in test_recipe.group(1).splitlines() for w in line.split() if re.fullmatch("[a-z-]+", w)
    }
    assert "security" in run, run
    recipe = re.search(r"^security:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert recipe, "no security target"
    command = recipe.group(1)
    assert "checkov" in command
    assert "--file template.yaml" in command
    assert "--skip-download" in command
    assert "BC_SKIP_MAPPING=TRUE" in command
    # every suppression lives in the template, next to its reason
    for weakening in ("--soft-fail", "--skip-check", "--baseline", "--hard-fail-on", "--bc-api-key"):
        assert weakening not in command, weakening
    assert not re.search(r"(^|\s)-s(\s|$)", command), "-s is --soft-fail"


# ------------------------------------------------------------------ (d) the head node is private

_OPEN = {ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")}


def open_ingress(node: Any, where: str = "") -> list[str]:
    """Every CIDR under ``node`` (CidrIp, CidrIpv6, AllowedIps) that admits the whole internet."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("CidrIp", "CidrIpv6", "AllowedIps") and isinstance(value, str):
                try:
                    network = ipaddress.ip_network(value, strict=False)
                except ValueError:
                    continue
                if network.prefixlen == 0 or network in _OPEN:
                    found.append(f"{where}.{key}={value}")
            found += open_ingress(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += open_ingress(value, f"{where}[{i}]")
    return found


def test_the_open_ingress_check_catches_what_it_should() -> None:
    sg = {"SecurityGroupIngress": [{"IpProtocol": "tcp", "FromPort": 22, "CidrIp": "0.0.0.0/0"}]}
    assert open_ingress(sg) == [".SecurityGroupIngress[0].CidrIp=0.0.0.0/0"]
    assert open_ingress({"CidrIpv6": "::/0"})
    assert open_ingress({"AllowedIps": "10.0.0.0/0"})
    assert open_ingress({"CidrIp": "10.0.0.0/8", "AllowedIps": "127.0.0.1/32"}) == []


def test_no_security_group_in_the_template_admits_the_internet() -> None:
    assert open_ingress(RESOURCES, "Resources") == []


def _deployed_cluster_configs() -> list[dict[str, Any]]:
    """The configurations the stack's cluster function sends: built from the Lambda settings as
    ``cryopilot.steps.cluster`` builds them, for every placement of the capacity fallback."""
    from cryopilot.adapters.cluster_config import cluster_params
    from cryopilot.adapters.settings import Settings
    from cryopilot.domain.clusterconfig.build import build_cluster_config, render_yaml
    from cryopilot.domain.clusterconfig.params import capacity_fallbacks

    settings = Settings(
        head_node_subnet_id="subnet-0123456789abcdef0",
        compute_subnet_ids="subnet-0aaaaaaaaaaaaaaa1,subnet-0bbbbbbbbbbbbbbb2",
        licence_secret_arn="arn:aws:secretsmanager:us-east-1:123456789012:secret:cryosparc-AbCdEf",
        head_node_policy_arns="arn:aws:iam::123456789012:policy/parallelcluster/cryopilot-head",
        fallback_gpu8_instance_types="g6e.48xlarge",
    )
    request = make_cluster_request()
    return [
        yaml.safe_load(render_yaml(build_cluster_config(request, plan.params)))
        for plan in capacity_fallbacks(cluster_params(settings))
    ]


def test_every_deployed_cluster_has_a_private_head_node_without_open_ssh() -> None:
    configs = _deployed_cluster_configs()
    assert len(configs) >= 2  # the configured placement, the other subnet (types are compute resources)
    for doc in configs:
        head = doc["HeadNode"]
        # only the private subnet: no ElasticIp, no security group from outside the stack
        assert head["Networking"] == {"SubnetId": "subnet-0123456789abcdef0"}
        assert "KeyName" not in head["Ssh"]
        assert ipaddress.ip_network(head["Ssh"]["AllowedIps"]).is_loopback
        for queue in doc["Scheduling"]["SlurmQueues"]:
            assert "AssignPublicIp" not in queue["Networking"], queue["Name"]
        assert open_ingress(doc) == []


def test_the_configuration_model_cannot_give_the_head_node_a_public_address() -> None:
    from cryopilot.domain.clusterconfig.models import HeadNodeNetworking
    from pydantic import ValidationError

    assert set(HeadNodeNetworking.model_fields) == {"subnet_id", "additional_security_groups"}
    with pytest.raises(ValidationError, match="ElasticIp"):
        HeadNodeNetworking.model_validate({"SubnetId": "subnet-0123456789abcdef0", "ElasticIp": True})
