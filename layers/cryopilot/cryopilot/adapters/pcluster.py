"""Client of the AWS ParallelCluster 3.x API (the API Gateway + Lambda that AWS publishes per version).

Runs inside Lambda, so it needs only the standard library, botocore and pydantic — never the
``aws-parallelcluster`` package. Requests are signed with SigV4 for ``execute-api`` and sent with
``urllib.request``; nothing here waits for a cluster: callers poll :meth:`PClusterClient.describe_cluster`
from a Step Functions Wait loop.

Every failure goes through :func:`api_error`, the one place that maps the API's answers to the typed
errors in :mod:`cryopilot.core.errors`:

=========================================================  =====================================
answer                                                     error
=========================================================  =====================================
400 with ``configurationValidationErrors``                 :class:`ClusterConfigError`
400 "Cluster NAME already exists." on create (see below)   :class:`ClusterAlreadyExistsError`
other 400 on create / on any other operation               :class:`ClusterConfigError` /
                                                           :class:`PClusterApiError`
401, 403 (signature, IAM)                                  :class:`PClusterApiError`
404                                                        :class:`ClusterNotFoundError`
409 on create                                              :class:`ClusterAlreadyExistsError`
412 on a dry run                                           success (the configuration is valid)
429, 5xx, connection errors, timeouts                      :class:`ThrottledError` (retried)
400 naming a throttling error (a throttled validator)      :class:`ThrottledError` (retried)
5xx naming AccessDenied (the API's own role refused)       :class:`PClusterApiError`
anything else                                              :class:`PClusterApiError`
=========================================================  =====================================

ParallelCluster 3.16's own code answers a create for an existing name with 400 and the message
``Bad Request: Cluster NAME already exists.`` (``BadRequestClusterActionError``; it answers so to a
dry run too, as it checks the name before validating) although its OpenAPI spec also
declares 409; both are treated as "already exists". That one message is matched by text because the
API gives it no code of its own.

Capacity: a CREATE_FAILED cluster's ``failures[]`` never carries EC2's own error. ParallelCluster
3.16 fills it with one entry of a fixed list (``ClusterStack.get_cluster_creation_failure`` in
``pcluster/models/cluster_resources.py``: a code such as ``ResourceCreationFailure`` and a fixed
sentence), chosen from the failed WaitCondition's reason. EC2's message ("We currently do not have
sufficient p4d.24xlarge capacity…") is in the stack's events, on the resource that failed (the
``HeadNode`` instance is in the cluster's root stack). So :meth:`PClusterClient.failed_resources`
reads ``GET /v3/clusters/{name}/stackevents`` (``get_cluster_stack_events``) for the events that
failed, and :func:`raise_for_cluster_failure` raises :class:`CapacityError` when one of them, or a
failure, names an insufficient-capacity code (``InsufficientInstanceCapacity`` and relatives, the
list ParallelCluster's fast capacity fail-over uses) or EC2's message.

Credentials and the ``Authorization`` header never appear in an error, a log line or ``repr``.
"""

import json
import logging
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal, Self

import botocore.session
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cryopilot.core.errors import (
    CapacityError,
    ClusterAlreadyExistsError,
    ClusterConfigError,
    ClusterCreateFailedError,
    ClusterDeleteFailedError,
    ClusterNotFoundError,
    CryopilotError,
    PClusterApiError,
    ThrottledError,
)
from cryopilot.core.naming import TAG_RUN_ID, is_cluster_name

LOGGER = logging.getLogger(__name__)

#: EC2 error codes that mean "no capacity for this instance type here" (ParallelCluster's fast
#: insufficient-capacity fail-over list, plus the codes EC2 uses for the same condition elsewhere).
CAPACITY_ERROR_CODES = frozenset(
    {
        "InsufficientInstanceCapacity",
        "InsufficientHostCapacity",
        "InsufficientReservedInstanceCapacity",
        "InsufficientCapacity",
        "UnfulfillableCapacity",
        "MaxSpotInstanceCountExceeded",
    }
)
_CAPACITY_TEXT_RE = re.compile(
    r"insufficient\w*\s*(?:instance\s+|host\s+)?capacity"
    r"|do not have sufficient\s+(?P<type>[a-z0-9.-]+)?\s*capacity",
    re.IGNORECASE,
)
_INSTANCE_TYPE_IN_TEXT_RE = re.compile(r"\b([a-z][a-z0-9-]*\d[a-z0-9-]*\.\d*[a-z0-9]+)\b")
_THROTTLED_RE = re.compile(r"\b(?:Throttling|ThrottlingException|RequestLimitExceeded|Rate exceeded)\b")
_DENIED_RE = re.compile(r"\b(?:AccessDenied|AccessDeniedException|UnauthorizedOperation)\b")
#: The whole message, not any message saying "already exists" (a validator's could).
_ALREADY_EXISTS_RE = re.compile(r"^(?:Bad Request: )?Cluster \S+ already exists\.?$")

Operation = Literal[
    "create_cluster",
    "describe_cluster",
    "delete_cluster",
    "list_clusters",
    "describe_cluster_instances",
    "get_cluster_stack_events",
    "list_official_images",
]


# --- models --------------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, defer_build=True)


class Failure(_Model):
    """One entry of ``failures[]`` (set when a cluster is CREATE_FAILED)."""

    code: str = ""
    reason: str = ""


class ValidationMessage(_Model):
    """A ``ConfigValidationMessage`` (errors of a rejected configuration, warnings of an accepted one)."""

    level: str = "ERROR"
    type: str = ""
    message: str = ""
    id: str | None = None

    def line(self) -> str:
        kind = f" {self.type}" if self.type else ""
        return f"[{self.level}]{kind}: {self.message}"


class ClusterInfo(_Model):
    """What cryopilot needs of a cluster, from any of the API's cluster shapes.

    ``createCluster``, ``deleteCluster`` and ``listClusters`` return a ``ClusterInfoSummary``
    (``cloudformationStackStatus``); ``describeCluster`` returns more (``cloudFormationStackStatus``,
    ``headNode``, ``tags``, ``failures``). Fields a shape lacks are left empty; ``raw`` keeps the answer.
    """

    name: str
    status: str
    cloudformation_stack_status: str | None = None
    cloudformation_stack_arn: str | None = None
    region: str | None = None
    version: str | None = None
    head_node_instance_id: str | None = None
    head_node_state: str | None = None
    head_node_private_ip: str | None = None
    failures: list[Failure] = Field(default_factory=list)
    tags: dict[str, str] = Field(default_factory=dict)
    creation_time: datetime | None = None
    last_updated_time: datetime | None = None
    validation_messages: list[ValidationMessage] = Field(default_factory=list)
    raw: dict[str, Any] = Field(default_factory=dict, repr=False)

    @classmethod
    def from_api(cls, data: Mapping[str, Any], *, validation_messages: Sequence[Any] = ()) -> Self:
        """Parse a cluster object of an answer; an unparseable one raises :class:`PClusterApiError`."""
        try:
            return cls._from_api(data, validation_messages)
        except (ValidationError, AttributeError, TypeError) as exc:
            name = data.get("clusterName") if isinstance(data, Mapping) else None
            raise PClusterApiError(
                f"unparseable cluster in the ParallelCluster API's answer: {type(exc).__name__}",
                cluster_name=name,
            ) from exc

    @classmethod
    def _from_api(cls, data: Mapping[str, Any], validation_messages: Sequence[Any]) -> Self:
        head = data.get("headNode") or {}
        return cls(
            name=str(data.get("clusterName") or ""),
            status=str(data.get("clusterStatus") or ""),
            cloudformation_stack_status=data.get(
                "cloudFormationStackStatus", data.get("cloudformationStackStatus")
            ),
            cloudformation_stack_arn=data.get("cloudformationStackArn"),
            region=data.get("region"),
            version=data.get("version"),
            head_node_instance_id=head.get("instanceId"),
            head_node_state=head.get("state"),
            head_node_private_ip=head.get("privateIpAddress"),
            failures=[
                Failure(code=str(f.get("failureCode") or ""), reason=str(f.get("failureReason") or ""))
                for f in data.get("failures") or []
                if isinstance(f, Mapping)
            ],
            tags={
                str(t["key"]): str(t.get("value", ""))
                for t in data.get("tags") or []
                if isinstance(t, Mapping) and "key" in t
            },
            creation_time=data.get("creationTime"),
            last_updated_time=data.get("lastUpdatedTime"),
            validation_messages=[
                _validation_message(m) for m in validation_messages if isinstance(m, Mapping)
            ],
            raw=dict(data),
        )


class ClusterInstance(_Model):
    """One instance of ``describeClusterInstances`` (``ClusterInstance`` of the OpenAPI spec)."""

    instance_id: str
    instance_type: str
    node_type: str
    state: str
    launch_time: datetime | None = None
    queue_name: str | None = None

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Self:
        try:
            launch = data.get("launchTime")
            return cls(
                instance_id=str(data["instanceId"]),
                instance_type=str(data["instanceType"]),
                node_type=str(data["nodeType"]),
                state=str(data["state"]),
                launch_time=datetime.fromisoformat(str(launch).replace("Z", "+00:00")) if launch else None,
                queue_name=str(data["queueName"]) if data.get("queueName") else None,
            )
        except (KeyError, ValueError) as exc:
            raise PClusterApiError(f"describe_cluster_instances: unparseable instance ({exc})") from None


class FailedResource(_Model):
    """A stack event of a resource that failed (``StackEvent`` of the OpenAPI spec whose
    ``resourceStatus`` ends in ``_FAILED``): where EC2's own error shows."""

    logical_id: str
    resource_type: str
    status: str
    reason: str = ""

    def as_failure(self) -> Failure:
        return Failure(code=self.status, reason=f"{self.logical_id} ({self.resource_type}): {self.reason}")


def _validation_message(item: Mapping[str, Any]) -> ValidationMessage:
    return ValidationMessage(
        level=str(item.get("level") or "ERROR"),
        type=str(item.get("type") or ""),
        message=str(item.get("message") or ""),
        id=item.get("id"),
    )


# --- the one error mapping -----------------------------------------------------------------------


def api_error(
    operation: Operation,
    *,
    status: int | None,
    payload: Mapping[str, Any] | None = None,
    cluster_name: str | None = None,
    cause: BaseException | None = None,
) -> CryopilotError:
    """The typed error for an answer of the API (``status`` None: no answer at all, see ``cause``)."""
    payload = payload or {}
    # API Gateway's own answers (an IAM denial, a missing route) spell it "Message"
    api_message = str(payload.get("message") or payload.get("Message") or "").strip()
    where = f"{operation}({cluster_name})" if cluster_name else operation
    details: dict[str, Any] = {"operation": operation, "status": status, "cluster_name": cluster_name}
    if api_message:
        details["api_message"] = api_message

    if status is None:
        reason = f"{type(cause).__name__}: {cause}" if cause is not None else "no answer"
        return ThrottledError(f"ParallelCluster API unreachable during {where}: {reason}", **details)

    said = f": {api_message}" if api_message else ""
    if status == 400 and _THROTTLED_RE.search(api_message):
        # a validator that was throttled answers 400 "Invalid cluster configuration: …" with
        # EC2's or IAM's throttling error (ParallelCluster 3.16 ``Cluster.validate_create_request``)
        return ThrottledError(f"{where}: throttled while validating{said}", **details)
    if 500 <= status <= 599 and _DENIED_RE.search(api_message):
        # the API's own role was refused by AWS (500 "Failed when calling AWS service …"): no
        # retry will change that
        return PClusterApiError(f"{where}: HTTP {status}, the API was denied an AWS call{said}", **details)
    if status == 400:
        raw_errors = payload.get("configurationValidationErrors") or []
        errors = [_validation_message(e) for e in raw_errors if isinstance(e, Mapping)]
        if errors:
            lines = "\n".join(f"- {e.line()}" for e in errors)
            return ClusterConfigError(
                f"ParallelCluster rejected the configuration of {cluster_name or 'the cluster'}"
                f"{said}\n{lines}",
                validation_errors=[e.model_dump() for e in errors],
                **details,
            )
        if operation == "create_cluster" and _ALREADY_EXISTS_RE.search(api_message):
            return ClusterAlreadyExistsError(f"{where}: the cluster already exists{said}", **details)
        if operation == "create_cluster":
            return ClusterConfigError(f"{where}: bad request{said}", validation_errors=[], **details)
        return PClusterApiError(f"{where}: bad request{said}", **details)
    if status in (401, 403):
        return PClusterApiError(
            f"{where}: HTTP {status}, not authorized (SigV4 signature, region or IAM policy){said}", **details
        )
    if status == 404:
        return ClusterNotFoundError(f"{where}: cluster not found{said}", **details)
    if status == 409 and operation == "create_cluster":
        return ClusterAlreadyExistsError(f"{where}: the cluster already exists{said}", **details)
    if status == 429 or 500 <= status <= 599:
        return ThrottledError(f"{where}: HTTP {status}, throttled or unavailable{said}", **details)
    return PClusterApiError(f"{where}: unexpected HTTP {status}{said}", **details)


# --- cluster state helpers -----------------------------------------------------------------------


def is_capacity_failure(failure: Failure) -> bool:
    """True when a failure says EC2 had no capacity (by code, or by EC2's message text)."""
    if failure.code in CAPACITY_ERROR_CODES:
        return True
    text = f"{failure.code} {failure.reason}"
    return any(code in text for code in CAPACITY_ERROR_CODES) or bool(_CAPACITY_TEXT_RE.search(text))


def _instance_type_in(failures: Sequence[Failure]) -> str | None:
    for failure in failures:
        match = _CAPACITY_TEXT_RE.search(failure.reason)
        if match and match.groupdict().get("type"):
            return match.group("type")
        found = _INSTANCE_TYPE_IN_TEXT_RE.search(failure.reason)
        if found:
            return found.group(1)
    return None


def raise_for_cluster_failure(info: ClusterInfo, failed_resources: Sequence[FailedResource] = ()) -> None:
    """Raise the typed error for a failed cluster; return quietly for any other status.

    CREATE_FAILED → :class:`CapacityError` when a failure, or a resource that failed in the stack's
    events (``failed_resources``, see :meth:`PClusterClient.failed_resources`), is about capacity,
    else :class:`ClusterCreateFailedError`; DELETE_FAILED → :class:`ClusterDeleteFailedError`.
    The failures (code, reason) and the failed resources ride along in ``details["failures"]``.
    """
    evidence = [*info.failures, *(r.as_failure() for r in failed_resources)]
    failures = [f.model_dump() for f in evidence]
    base: dict[str, Any] = {
        "cluster_name": info.name,
        "status": info.status,
        "cloudformation_stack_status": info.cloudformation_stack_status,
        "failures": failures,
    }
    summary = "; ".join(f"{f.code}: {f.reason}".strip(": ") for f in info.failures) or "no reason given"
    if info.status == "CREATE_FAILED":
        capacity = [f for f in evidence if is_capacity_failure(f)]
        if capacity:
            said = "; ".join(f.reason for f in capacity[:1])
            raise CapacityError(
                f"cluster {info.name}: no EC2 capacity ({said})",
                instance_type=_instance_type_in(capacity),
                **base,
            )
        raise ClusterCreateFailedError(f"cluster {info.name} failed to create ({summary})", **base)
    if info.status == "DELETE_FAILED":
        raise ClusterDeleteFailedError(f"cluster {info.name} failed to delete ({summary})", **base)


def cluster_is_ours(info: ClusterInfo, run_id: str) -> bool:
    """True when the cluster carries this run's ``cryopilot:run-id`` tag."""
    return bool(run_id) and info.tags.get(TAG_RUN_ID) == run_id


# --- the client ----------------------------------------------------------------------------------


class PClusterClient:
    """SigV4-signed client of one ParallelCluster API (``endpoint`` is its invoke URL with the stage)."""

    def __init__(
        self,
        endpoint: str,
        region: str,
        *,
        credentials: Credentials | None = None,
        timeout: float = 30.0,
    ) -> None:
        parsed = urllib.parse.urlsplit(endpoint)
        if parsed.scheme not in ("https", "http") or not parsed.netloc:
            raise ValueError(f"endpoint must be an http(s) URL, got {endpoint!r}")
        if parsed.query or parsed.fragment:
            raise ValueError("endpoint must not carry a query or fragment")
        self.endpoint = endpoint.rstrip("/")
        self.region = region
        self.timeout = timeout
        self._credentials = credentials

    def __repr__(self) -> str:
        return f"PClusterClient(endpoint={self.endpoint!r}, region={self.region!r})"

    # -- operations -------------------------------------------------------------------------------

    def create_cluster(
        self,
        name: str,
        config_yaml: str,
        *,
        dryrun: bool = False,
        rollback_on_failure: bool = False,
        suppress_validators: list[str] | None = None,
        validation_failure_level: str | None = None,
    ) -> ClusterInfo:
        """Start creating a cluster (202).

        A dry run that passes (the API answers 412) returns a :class:`ClusterInfo` whose ``status`` is
        ``"DRYRUN_OK"``, with the validators' warnings in ``validation_messages``.

        ``rollback_on_failure`` defaults to False (the API's default is True) so that a failed
        cluster keeps its stack, and its ``failures[]``, until cryopilot deletes it.
        """
        _check_name(name)
        query: list[tuple[str, str]] = [("region", self.region)]
        if dryrun:
            query.append(("dryrun", "true"))
        query.append(("rollbackOnFailure", "true" if rollback_on_failure else "false"))
        for validator in dict.fromkeys(suppress_validators or []):
            query.append(("suppressValidators", validator))
        if validation_failure_level is not None:
            if validation_failure_level not in ("INFO", "WARNING", "ERROR"):
                raise ValueError("validation_failure_level must be INFO, WARNING or ERROR")
            query.append(("validationFailureLevel", validation_failure_level))
        body = {"clusterName": name, "clusterConfiguration": config_yaml}
        status, payload = self._send("create_cluster", "POST", "/v3/clusters", query, body, cluster_name=name)
        if dryrun and status == 412:
            return ClusterInfo(
                name=name,
                status="DRYRUN_OK",
                region=self.region,
                validation_messages=[
                    _validation_message(m)
                    for m in payload.get("validationMessages") or []
                    if isinstance(m, Mapping)
                ],
                raw=payload,
            )
        if status not in (200, 202):
            raise api_error("create_cluster", status=status, payload=payload, cluster_name=name)
        return ClusterInfo.from_api(
            _object(payload, "cluster", "create_cluster", name),
            validation_messages=payload.get("validationMessages") or [],
        )

    def describe_cluster(self, name: str) -> ClusterInfo:
        _check_name(name)
        status, payload = self._send(
            "describe_cluster",
            "GET",
            f"/v3/clusters/{name}",
            [("region", self.region)],
            None,
            cluster_name=name,
        )
        if status != 200:
            raise api_error("describe_cluster", status=status, payload=payload, cluster_name=name)
        if not payload.get("clusterName"):
            raise PClusterApiError(f"describe_cluster({name}): answer without clusterName", cluster_name=name)
        return ClusterInfo.from_api(payload)

    def describe_cluster_instances(
        self, name: str, *, node_type: str | None = None, queue_name: str | None = None, max_pages: int = 20
    ) -> list[ClusterInstance]:
        """The cluster's instances that EC2 lists as pending, running, stopping or stopped (a
        terminated node is not listed), following ``nextToken``."""
        _check_name(name)
        query: list[tuple[str, str]] = [("region", self.region)]
        if node_type:
            query.append(("nodeType", node_type))
        if queue_name:
            query.append(("queueName", queue_name))
        items = self._items(
            "describe_cluster_instances",
            f"/v3/clusters/{name}/instances",
            query,
            "instances",
            max_pages=max_pages,
            cluster_name=name,
        )
        return [ClusterInstance.from_api(i) for i in items]

    def failed_resources(self, name: str, *, max_pages: int = 5) -> list[FailedResource]:
        """The resources whose stack events say they failed (newest first, as CloudFormation lists
        events), from ``GET /v3/clusters/{name}/stackevents``, following ``nextToken`` for at most
        ``max_pages`` pages (a failed creation's events are in its first pages)."""
        _check_name(name)
        events = self._items(
            "get_cluster_stack_events",
            f"/v3/clusters/{name}/stackevents",
            [("region", self.region)],
            "events",
            max_pages=max_pages,
            cluster_name=name,
            beyond_pages_ok=True,
        )
        return [
            FailedResource(
                logical_id=str(event.get("logicalResourceId") or ""),
                resource_type=str(event.get("resourceType") or ""),
                status=str(event["resourceStatus"]),
                reason=str(event.get("resourceStatusReason") or ""),
            )
            for event in events
            if str(event.get("resourceStatus") or "").endswith("_FAILED")
        ]

    def delete_cluster(self, name: str, *, missing_ok: bool = False) -> ClusterInfo | None:
        """Start deleting a cluster (202). A missing cluster raises :class:`ClusterNotFoundError`,
        or returns None with ``missing_ok``."""
        _check_name(name)
        status, payload = self._send(
            "delete_cluster",
            "DELETE",
            f"/v3/clusters/{name}",
            [("region", self.region)],
            None,
            cluster_name=name,
        )
        if status == 404 and missing_ok:
            return None
        if status not in (200, 202):
            raise api_error("delete_cluster", status=status, payload=payload, cluster_name=name)
        return ClusterInfo.from_api(_object(payload, "cluster", "delete_cluster", name))

    def list_clusters(
        self, *, cluster_status: list[str] | None = None, max_pages: int = 100
    ) -> list[ClusterInfo]:
        """Every cluster of the region (following ``nextToken``), optionally filtered by status."""
        query = [("region", self.region)]
        query += [("clusterStatus", value) for value in dict.fromkeys(cluster_status or [])]
        items = self._items("list_clusters", "/v3/clusters", query, "clusters", max_pages=max_pages)
        return [ClusterInfo.from_api(c) for c in items]

    def official_image_versions(self) -> list[str]:
        """The ParallelCluster version of each official AMI the API lists (``GET /v3/images/official``,
        ListOfficialImages: the API lists the AMIs of its own version, each ``AmiInfo`` carrying
        ``version``). Preflight reads the API's version from it."""
        status, payload = self._send(
            "list_official_images", "GET", "/v3/images/official", [("region", self.region)], None
        )
        if status != 200:
            raise api_error("list_official_images", status=status, payload=payload)
        images = payload.get("images")
        if not isinstance(images, list):
            raise PClusterApiError("list_official_images: answer without an images list")
        return [str(i.get("version")) for i in images if isinstance(i, Mapping) and i.get("version")]

    def create_or_adopt(self, name: str, config_yaml: str, run_id: str, **create_options: Any) -> ClusterInfo:
        """Create the cluster, or adopt it when it already exists and carries this run's tag.

        Makes the create step idempotent: a retried create (after a timeout whose request did get
        through, or a redelivered event) finds its own cluster and goes on. A cluster of that name
        that belongs to another run raises :class:`ClusterAlreadyExistsError`; one of ours that is
        being deleted raises :class:`ThrottledError` so the create is retried once it is gone.
        """
        try:
            return self.create_cluster(name, config_yaml, **create_options)
        except ClusterAlreadyExistsError as exists:
            try:
                info = self.describe_cluster(name)
            except ClusterNotFoundError as gone:
                raise ThrottledError(
                    f"cluster {name} existed and is now gone; retry the create", cluster_name=name
                ) from gone
            if not cluster_is_ours(info, run_id):
                raise ClusterAlreadyExistsError(
                    f"cluster {name} exists and belongs to run {info.tags.get(TAG_RUN_ID) or '(untagged)'}",
                    cluster_name=name,
                    owner_run_id=info.tags.get(TAG_RUN_ID),
                    status=info.status,
                ) from exists
            if info.status == "DELETE_IN_PROGRESS":
                raise ThrottledError(
                    f"cluster {name} of this run is still being deleted; retry the create", cluster_name=name
                ) from exists
            LOGGER.info("cluster %s already exists for run %s: adopted (%s)", name, run_id, info.status)
            return info

    # -- transport --------------------------------------------------------------------------------

    def _frozen_credentials(self) -> Credentials:
        creds = self._credentials
        if creds is None:
            creds = botocore.session.get_session().get_credentials()
            if creds is None:
                raise PClusterApiError("no AWS credentials available to sign ParallelCluster API requests")
            self._credentials = creds
        frozen = creds.get_frozen_credentials()
        return Credentials(frozen.access_key, frozen.secret_key, frozen.token)

    def _items(
        self,
        operation: Operation,
        path: str,
        query: list[tuple[str, str]],
        key: str,
        *,
        max_pages: int,
        cluster_name: str | None = None,
        beyond_pages_ok: bool = False,
    ) -> list[Mapping[str, Any]]:
        """The objects of list ``key`` of a paged GET, page after page (``nextToken``), for at most
        ``max_pages`` pages: more is a :class:`PClusterApiError`, or, with ``beyond_pages_ok``, the
        objects of those pages."""
        found: list[Mapping[str, Any]] = []
        token: str | None = None
        for _ in range(max_pages):
            page_query = [*query, ("nextToken", token)] if token else query
            status, payload = self._send(operation, "GET", path, page_query, None, cluster_name=cluster_name)
            if status != 200:
                raise api_error(operation, status=status, payload=payload, cluster_name=cluster_name)
            items = payload.get(key)
            if not isinstance(items, list):
                article = "an" if key[0] in "aeiou" else "a"
                raise PClusterApiError(f"{operation}: answer without {article} {key} list")
            found.extend(i for i in items if isinstance(i, Mapping))
            token = payload.get("nextToken") or None
            if not token:
                return found
        if beyond_pages_ok:
            return found
        raise PClusterApiError(f"{operation}: more than {max_pages} pages")

    def _send(
        self,
        operation: Operation,
        method: str,
        path: str,
        query: list[tuple[str, str]],
        body: Mapping[str, Any] | None,
        *,
        cluster_name: str | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """Sign and send one request; return (status, JSON body). Raises only for no answer at all."""
        query_string = urllib.parse.urlencode(query, quote_via=urllib.parse.quote)
        url = f"{self.endpoint}{path}?{query_string}"
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        aws_request = AWSRequest(method=method, url=url, data=data, headers=headers)
        SigV4Auth(self._frozen_credentials(), "execute-api", self.region).add_auth(aws_request)
        prepared = aws_request.prepare()
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked in __init__
            prepared.url, data=data, headers=dict(prepared.headers.items()), method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read() if exc.fp is not None else b""
            exc.close()
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
            LOGGER.warning("pcluster %s %s: no answer (%s)", method, path, type(exc).__name__)
            raise api_error(
                operation, status=None, cluster_name=cluster_name, cause=_safe_cause(exc)
            ) from None
        LOGGER.info("pcluster %s %s -> %s", method, path, status)
        return status, _json_body(raw, status)


def _safe_cause(exc: BaseException) -> BaseException:
    """The exception to report: URLError wraps the real reason."""
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        return exc.reason
    return exc


def _json_body(raw: bytes, status: int) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        # API Gateway or a proxy answered with something else; keep a short, header-free excerpt.
        return {"message": raw[:300].decode("utf-8", "replace").strip()}
    if isinstance(value, dict):
        return value
    return {"message": f"unexpected JSON ({type(value).__name__}) with HTTP {status}"}


def _object(payload: Mapping[str, Any], key: str, operation: str, name: str) -> Mapping[str, Any]:
    value = payload.get(key)
    if not isinstance(value, Mapping):
        raise PClusterApiError(f"{operation}({name}): answer without '{key}'", cluster_name=name)
    return value


def _check_name(name: str) -> None:
    # The spec's pattern, and the 5..60 length its generated models enforce on answers.
    if not is_cluster_name(name):
        raise ValueError(f"invalid ParallelCluster name {name!r}")
