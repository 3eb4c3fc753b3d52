"""Least privilege, proven by execution: each function's AWS calls are checked against the policies
SAM generates for its role, and every action a role uses is recorded (``make iam-report``).

* The roles come from ``template.yaml`` translated by the pinned ``aws-sam-translator`` (the one
  ``sam deploy`` uses; ``scripts/sam_translate.py``, run in the tools venv): SAM policy templates
  (``DynamoDBCrudPolicy``...) expanded exactly as deployed.
* Each function runs with credentials of its own role (moto STS ``AssumeRole``); its clients carry
  them (``cryopilot.adapters.aws.use_sessions``).
* The evaluator is ours, not moto's. moto 5.2.5's enforcement (``moto/iam/access_control.py``)
  matches the action, but derives the request's resource only for S3, SQS, IAM and STS: for every
  other service it checks the statement's ``Resource`` against ``*``, so a statement scoped to a
  table, topic, execution or function never allows anything, and it evaluates ``Condition`` as a
  trust-policy condition over the request's own parameters (an Allow whose condition names a
  resource tag becomes a Deny). With it on, no least-privilege template could pass. The evaluator
  here checks, for each call, the IAM action(s) of the Service Authorization Reference, every
  resource the call touches (as ARNs), and the conditions on resource tags, with IAM's
  evaluation logic (an explicit Deny wins; otherwise an Allow must match action, resource and
  condition; nothing else is allowed). It runs before the request is sent (botocore's
  ``before-parameter-build``), so it sees the call's parameters, not moto's parse of them.
* A call the table below does not know is checked against the resource ``*`` (only a grant on
  every resource allows it): an unknown call fails closed.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from cryopilot_sim.template import ROOT, TEMPLATE_PATH

#: The translated template (``make build/sam/translated.json``; regenerated here when stale).
TRANSLATED = ROOT / "build" / "sam" / "translated.json"
TOOLS_PYTHON = ROOT / ".venv-tools" / "bin" / "python"
#: Every action a role used, one JSON line per local stack (read by ``make iam-report``).
USED_DIR = ROOT / "build" / "iam" / "used"


def translated_template(path: Path = TRANSLATED) -> dict[str, Any]:
    """The template as ``sam deploy`` sends it to CloudFormation. Translated again when missing or
    older than ``template.yaml`` (the translator lives in ``.venv-tools``: it pins its own pydantic)."""
    if not path.exists() or path.stat().st_mtime < TEMPLATE_PATH.stat().st_mtime:
        if not TOOLS_PYTHON.exists():
            raise FileNotFoundError(
                f"{path.relative_to(ROOT)} is missing or stale and {TOOLS_PYTHON.relative_to(ROOT)} "
                "is not installed: run `make setup`"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "AWS_DEFAULT_REGION": "us-east-1", "PYTHONPATH": ""}
        out = subprocess.run(
            [str(TOOLS_PYTHON), str(ROOT / "scripts" / "sam_translate.py"), str(TEMPLATE_PATH)],
            capture_output=True,
            text=True,
            check=False,
            env=env,
            timeout=120,
        )
        if out.returncode != 0:
            raise RuntimeError(f"SAM translation failed: {out.stderr.strip()[-2000:]}")
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(out.stdout, encoding="utf-8")
        tmp.replace(path)
    doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return doc


# ------------------------------------------------------------------------------------ evaluation


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


@functools.lru_cache(maxsize=4096)
def _pattern(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(regex, re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL)


def _wildcard(pattern: str, value: str, *, ignore_case: bool = False) -> bool:
    """IAM's ``*`` and ``?`` (no other glob)."""
    return _pattern(pattern, ignore_case).fullmatch(value) is not None


def _string_ops() -> dict[str, Callable[[str, str], bool]]:
    return {
        "StringEquals": lambda want, got: want == got,
        "StringNotEquals": lambda want, got: want != got,
        "StringEqualsIgnoreCase": lambda want, got: want.lower() == got.lower(),
        "StringLike": lambda want, got: _wildcard(want, got),
        "StringNotLike": lambda want, got: not _wildcard(want, got),
        "ArnEquals": lambda want, got: want == got,
        "ArnLike": lambda want, got: _wildcard(want, got),
        "ArnNotEquals": lambda want, got: want != got,
        "ArnNotLike": lambda want, got: not _wildcard(want, got),
        "Bool": lambda want, got: want.lower() == got.lower(),
    }


_OPS = _string_ops()
_NEGATED = {"StringNotEquals", "StringNotLike", "ArnNotEquals", "ArnNotLike"}


class UnsupportedCondition(ValueError):
    pass


def _condition_holds(condition: dict[str, Any], context: dict[str, Any]) -> bool:
    """IAM condition evaluation: each operator's each key must hold; a condition value list holds
    if any value does (negated operators: if none matches); a missing key fails unless the
    operator ends in ``IfExists`` (negated operators hold on a missing key). Multi-valued keys
    (``aws:TagKeys``) take the set operators: ``ForAllValues:`` holds if every request value
    matches a condition value (and on no value), ``ForAnyValue:`` if one does."""
    lowered = {k.lower(): v for k, v in context.items()}
    for op, keys in condition.items():
        qualifier, _, base = op.rpartition(":")
        base = base.removesuffix("IfExists")
        if base not in _OPS or qualifier not in ("", "ForAllValues", "ForAnyValue"):
            raise UnsupportedCondition(f"condition operator {op} is not supported by the local evaluator")
        for key, wanted in keys.items():
            got = lowered.get(key.lower())
            values = [str(w) for w in _as_list(wanted)]
            if qualifier:
                given = [str(g) for g in _as_list(got if got is not None else [])]
                matched = [any(_OPS[base](w, g) for w in values) for g in given]
                if qualifier == "ForAllValues" and not all(matched):
                    return False
                if qualifier == "ForAnyValue" and not any(matched):
                    return False
                continue
            if got is None:
                if op.endswith("IfExists") or base in _NEGATED:
                    continue
                return False
            got = str(got)
            if base in _NEGATED:
                if not all(_OPS[base](w, got) for w in values):
                    return False
            elif not any(_OPS[base](w, got) for w in values):
                return False
    return True


def _matches(statement: dict[str, Any], action: str, resource: str, context: dict[str, Any]) -> bool:
    if "Action" in statement:
        if not any(_wildcard(a, action, ignore_case=True) for a in _as_list(statement["Action"])):
            return False
    elif any(_wildcard(a, action, ignore_case=True) for a in _as_list(statement.get("NotAction", []))):
        return False
    if "Resource" in statement:
        if not any(_wildcard(r, resource) for r in _as_list(statement["Resource"])):
            return False
    elif any(_wildcard(r, resource) for r in _as_list(statement.get("NotResource", []))):
        return False
    return _condition_holds(statement.get("Condition") or {}, context)


def decide(documents: Iterable[dict[str, Any]], action: str, resource: str, context: dict[str, Any]) -> bool:
    """IAM's identity-policy evaluation: an explicit Deny wins, else an Allow is needed."""
    allowed = False
    for doc in documents:
        for statement in _as_list(doc.get("Statement", [])):
            if not _matches(statement, action, resource, context):
                continue
            if statement.get("Effect") == "Deny":
                return False
            allowed = True
    return allowed


# ----------------------------------------------------------------- what a call asks of IAM

#: S3 operations whose IAM action differs from their name (Service Authorization Reference,
#: Amazon S3: "Actions defined by Amazon S3"; an object read by version is GetObjectVersion).
_S3_ACTIONS = {
    "HeadObject": "GetObject",
    "ListObjectsV2": "ListBucket",
    "ListObjects": "ListBucket",
    "HeadBucket": "ListBucket",
    "ListObjectVersions": "ListBucketVersions",
    "CreateMultipartUpload": "PutObject",
    "UploadPart": "PutObject",
    "CompleteMultipartUpload": "PutObject",
    "DeleteObjects": "DeleteObject",
}
#: DynamoDB transaction items: the action each needs on its table.
_DDB_TRANSACT = {
    "ConditionCheck": "ConditionCheckItem",
    "Put": "PutItem",
    "Update": "UpdateItem",
    "Delete": "DeleteItem",
}


@dataclass(frozen=True)
class Need:
    """One permission a call needs: an action on a resource (ARN or ``*``)."""

    action: str
    resource: str
    #: the request's own condition keys (``aws:RequestTag/...``, ``aws:TagKeys``)
    context: dict[str, Any] = field(default_factory=dict, compare=False)


def needs(prefix: str, op: str, params: dict[str, Any], region: str, account: str) -> list[Need]:
    """The permissions a call needs, per the Service Authorization Reference's resource types of
    each action (the ones this project calls). An unknown call needs its action on ``*``."""
    arn = f"arn:aws:{prefix}:{region}:{account}"
    if prefix == "s3":
        bucket = params.get("Bucket", "*")
        name = _S3_ACTIONS.get(op, op)
        if op in ("GetObject", "HeadObject") and params.get("VersionId"):
            name = "GetObjectVersion"
        if op == "CopyObject":
            src = params.get("CopySource")
            src = (
                f"{src['Bucket']}/{src['Key']}"
                if isinstance(src, dict)
                else str(src).lstrip("/").split("?")[0]
            )
            return [
                Need("s3:GetObject", f"arn:aws:s3:::{src}"),
                Need("s3:PutObject", f"arn:aws:s3:::{bucket}/{params.get('Key')}"),
            ]
        if op == "DeleteObjects":
            objects = (params.get("Delete") or {}).get("Objects") or []
            return [Need("s3:DeleteObject", f"arn:aws:s3:::{bucket}/{o['Key']}") for o in objects]
        if "Key" in params:
            return [Need(f"s3:{name}", f"arn:aws:s3:::{bucket}/{params['Key']}")]
        return [Need(f"s3:{name}", f"arn:aws:s3:::{bucket}")]
    if prefix == "dynamodb":

        def table(name: str, index: str | None = None) -> str:
            return f"{arn}:table/{name}" + (f"/index/{index}" if index else "")

        if op in ("BatchGetItem", "BatchWriteItem"):
            return [Need(f"dynamodb:{op}", table(t)) for t in params.get("RequestItems") or {}]
        if op == "TransactWriteItems":
            out = []
            for item in params.get("TransactItems") or []:
                for kind, body in item.items():
                    out.append(Need(f"dynamodb:{_DDB_TRANSACT[kind]}", table(body["TableName"])))
            return out
        if op == "TransactGetItems":
            return [
                Need("dynamodb:GetItem", table(i["Get"]["TableName"]))
                for i in params.get("TransactItems") or []
            ]
        if "TableName" in params:
            return [Need(f"dynamodb:{op}", table(params["TableName"], params.get("IndexName")))]
    if prefix == "sns":
        target = params.get("TopicArn") or params.get("TargetArn") or params.get("SubscriptionArn")
        if op in ("GetSubscriptionAttributes", "SetSubscriptionAttributes", "Unsubscribe"):
            target = None  # no resource-level permission (Service Authorization Reference, SNS)
        return [Need(f"sns:{op}", target or "*")]
    if prefix == "states":
        target = params.get("executionArn") or params.get("stateMachineArn")
        return [Need(f"states:{op}", target or "*")]
    if prefix == "ssm" and op == "SendCommand":
        document = params.get("DocumentName", "")
        owner = "" if document.startswith("AWS-") else account
        out = [Need("ssm:SendCommand", f"arn:aws:ssm:{region}:{owner}:document/{document}")]
        out += [
            Need("ssm:SendCommand", f"arn:aws:ec2:{region}:{account}:instance/{i}")
            for i in params.get("InstanceIds") or []
        ]
        return out
    if prefix == "ec2" and op in ("CreateTags", "DeleteTags"):
        tags = params.get("Tags") or []
        context: dict[str, Any] = {"aws:TagKeys": [t["Key"] for t in tags]}
        context |= {f"aws:RequestTag/{t['Key']}": str(t.get("Value", "")) for t in tags}
        return [
            Need(f"ec2:{op}", _ec2_arn(r, region, account), context) for r in params.get("Resources") or []
        ]
    if prefix == "ec2" and op == "DeleteSnapshot":
        return [Need("ec2:DeleteSnapshot", _ec2_arn(params.get("SnapshotId", ""), region, account))]
    if prefix == "secretsmanager" and "SecretId" in params:
        secret = params["SecretId"]
        if not secret.startswith("arn:"):
            secret = f"{arn}:secret:{secret}"
        return [Need(f"secretsmanager:{op}", secret)]
    if prefix == "datasync":
        target = params.get("TaskExecutionArn") or params.get("TaskArn") or params.get("LocationArn")
        return [Need(f"datasync:{op}", target or "*")]
    if prefix == "fsx" and op == "CreateDataRepositoryTask":
        return [
            Need("fsx:CreateDataRepositoryTask", f"{arn}:file-system/{params.get('FileSystemId')}"),
            Need("fsx:CreateDataRepositoryTask", f"{arn}:task/*"),
        ]
    if prefix == "lambda" and op in ("Invoke", "InvokeAsync"):
        name = str(params.get("FunctionName", ""))
        target = name if name.startswith("arn:") else f"{arn}:function:{name}"
        return [Need("lambda:InvokeFunction", target)]
    if prefix == "sqs" and "QueueUrl" in params:
        return [Need(f"sqs:{op}", f"{arn}:{str(params['QueueUrl']).rstrip('/').rsplit('/', 1)[-1]}")]
    return [Need(f"{prefix}:{op}", "*")]


def _ec2_arn(resource_id: str, region: str, account: str) -> str:
    """An EC2 resource's ARN by its id (a snapshot's ARN has no account)."""
    kind = {"snap": "snapshot", "vol": "volume", "i": "instance"}.get(resource_id.split("-", 1)[0])
    if kind is None:
        return "*"
    return f"arn:aws:ec2:{region}:{'' if kind == 'snapshot' else account}:{kind}/{resource_id}"


#: The error each service answers a denied call with (its API reference's common errors).
_DENIED_CODE = {"s3": "AccessDenied", "ec2": "UnauthorizedOperation", "sns": "AuthorizationError"}


# ------------------------------------------------------------------------------------ enforcement


@dataclass
class Role:
    logical_id: str
    name: str
    arn: str
    documents: list[dict[str, Any]]
    #: the role's AWS managed policies (ARNs): granted by AWS, not by the template
    aws_managed: list[str] = field(default_factory=list)


class Enforcer:
    """Checks every call a role's session makes, and records what each role used."""

    def __init__(self, region: str, account: str, resource_tags: Callable[[str], dict[str, str]]) -> None:
        self.region = region
        self.account = account
        self.resource_tags = resource_tags
        self.roles: dict[str, Role] = {}
        #: role logical id -> {action: number of allowed calls}
        self.used: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        #: (role logical id, action, resource) of every denied call
        self.denied: list[tuple[str, str, str]] = []
        #: roles a test cut a permission from (:meth:`revoke`): their denials are the test's point
        self.revoked: set[str] = set()
        self._lock = threading.Lock()

    def add(self, role: Role) -> None:
        self.roles[role.logical_id] = role

    def watch(self, events: Any, role_id: str, session_name: str) -> None:
        """Check every call of a botocore event system (a session's or a client's)."""

        def check(params: dict[str, Any], model: Any, **_: Any) -> None:
            # the IAM prefix is the service's signing name for every service called here
            # (stepfunctions signs as "states", service-quotas as "servicequotas")
            self.check(role_id, session_name, model.service_model.signing_name, model.name, params)

        events.register("before-parameter-build", check, unique_id=f"cryopilot-iam-{role_id}")

    def check(self, role_id: str, session_name: str, prefix: str, op: str, params: dict[str, Any]) -> None:
        """Raise the service's AccessDenied error unless the role allows every need of the call."""
        if (prefix, op) == ("sts", "GetCallerIdentity"):
            return  # IAM never denies it
        for need in needs(prefix, op, params, self.region, self.account):
            if prefix == "datasync":
                # moto 5.2.5 writes a fixed account (111222333444) into every DataSync ARN
                # (moto/datasync/models.py); AWS writes the owner's: IAM sees this account's
                need = Need(need.action, need.resource.replace(":111222333444:", f":{self.account}:"))
            message = self.refusal(role_id, session_name, need)
            if message:
                code = _DENIED_CODE.get(prefix, "AccessDeniedException")
                raise ClientError({"Error": {"Code": code, "Message": message}}, op)

    def refusal(self, role_id: str, session_name: str, need: Need) -> str | None:
        """IAM's AccessDenied message if the role does not allow ``need`` (recorded), else None
        (the action recorded as used)."""
        role = self.roles[role_id]
        context: dict[str, Any] = {"aws:SecureTransport": "true", "aws:RequestedRegion": self.region}
        context |= need.context
        if need.resource != "*":
            for key, value in self.resource_tags(need.resource).items():
                context[f"aws:ResourceTag/{key}"] = value
                # the service-specific key is the action's service's (ssm:resourceTag/... for
                # ssm:SendCommand on an EC2 instance)
                context[f"{need.action.split(':')[0]}:resourceTag/{key}"] = value
        if not decide(role.documents, need.action, need.resource, context):
            with self._lock:
                self.denied.append((role_id, need.action, need.resource))
            principal = f"arn:aws:sts::{self.account}:assumed-role/{role.name}/{session_name}"
            return (
                f"User: {principal} is not authorized to perform: {need.action} on resource: "
                f"{need.resource} because no identity-based policy allows the {need.action} action"
            )
        with self._lock:
            self.used[role_id][need.action] += 1
        return None

    def revoke(self, role_id: str, action: str) -> None:
        """Remove one action from every statement of a role (the mutation tests' knife)."""
        role = self.roles[role_id]
        self.revoked.add(role_id)
        for doc in role.documents:
            for statement in _as_list(doc.get("Statement", [])):
                actions = [a for a in _as_list(statement.get("Action", [])) if a.lower() != action.lower()]
                if "Action" in statement:
                    statement["Action"] = actions

    def write_used(self, directory: Path = USED_DIR) -> Path | None:
        """Append what each role used to this process's file (``make iam-report`` reads them all)."""
        if not self.used and not self.denied:
            return None
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{os.getpid()}.jsonl"
        line = {
            "used": {role: dict(actions) for role, actions in self.used.items()},
            # a denial nobody provoked: a permission the template lacks, even if the code
            # that met it carried on (the report fails on it)
            "denied": sorted({f"{r} {a} {res}" for r, a, res in self.denied if r not in self.revoked}),
        }
        with path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(line, sort_keys=True) + "\n")
        return path


def granted_actions(documents: Iterable[dict[str, Any]]) -> set[str]:
    """Every action an Allow statement names (as written: a wildcard stays one entry)."""
    out: set[str] = set()
    for doc in documents:
        for statement in _as_list(doc.get("Statement", [])):
            if statement.get("Effect") == "Allow":
                out |= {str(a) for a in _as_list(statement.get("Action", []))}
    return out
