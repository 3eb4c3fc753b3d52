"""A local stand-in for the AWS ParallelCluster 3.x API (createCluster, describeCluster,
deleteCluster, listClusters, describeClusterInstances), speaking HTTP on 127.0.0.1 like the API
Gateway AWS publishes.

It follows the OpenAPI spec shipped in ``aws-parallelcluster`` (``pcluster/api/openapi/openapi.yaml``):
paths under a stage (``/prod/v3/clusters...``), query parameters (``region``, ``dryrun``,
``rollbackOnFailure``, ``suppressValidators``, ``validationFailureLevel``, ``clusterStatus``,
``nextToken``), JSON bodies and status codes. Where ParallelCluster's code and its spec differ, it does
what the code of 3.16.1 does: a create for an existing name answers 400 ``Bad Request: Cluster NAME
already exists.`` (``BadRequestClusterActionError``, whose answers ``errors.py`` prefixes with "Bad
Request: "; a 409 can still be injected).

* Auth: like API Gateway with IAM auth, a request without a SigV4 ``Authorization`` header for
  ``execute-api`` (and this region) gets 403; given ``credentials``, the signature itself is checked.
* Validation: every create's ``clusterConfiguration`` is loaded with ``aws-parallelcluster``'s own
  ``ClusterSchema``; a failure answers 400 with ``configurationValidationErrors`` carrying its message
  (``ConfigSchemaValidator``, as the real API reports schema failures).
* Lifecycle on a simulated clock: CREATE_IN_PROGRESS → CREATE_COMPLETE after ``create_seconds``
  (then ``headNode`` has an instance id, state running, a private IP); delete → DELETE_IN_PROGRESS →
  gone (404) after ``delete_seconds``. State is advanced whenever the stand-in is asked. As in
  ParallelCluster 3.16's ``cluster_operations_controller``, a cluster exists only once its create
  has been answered (the real API validates, then creates the CloudFormation stack, inside the
  createCluster request): before that describeCluster and deleteCluster answer 404, and
  deleteCluster of a CREATE_IN_PROGRESS cluster deletes it.
* Faults (:meth:`PClusterStandIn.inject`): ``bad_request`` (400), ``config_error`` (400 with
  ``configurationValidationErrors``, as a failed validator answers), ``conflict`` (409), ``throttle``
  (429, a burst of ``count``), ``server_error`` (500), ``gateway_timeout`` (504 "Endpoint request
  timed out", API Gateway's answer past its 29 s integration timeout, after the request was carried
  out: a create creates the cluster), ``create_failed_capacity`` (the create ends
  CREATE_FAILED for the head node's EC2 capacity, see below; optionally only for configs whose
  head node or static compute nodes are of ``instance_type`` (a queue scaling from zero never fails a
  creation: its capacity shows at node launch, see ``cryopilot_sim.slurm``), or only in
  ``subnet_id``), ``create_failed`` (another reason), ``delete_failed`` (DELETE_FAILED) and
  ``head_node_missing`` (the next ``count`` describes of a created cluster leave ``headNode`` out, as
  ParallelCluster does when its EC2 call fails).
* ``describeClusterInstances`` (GET ``/v3/clusters/{name}/instances``): the head node and the compute
  instances ``compute_instances`` reports (the harness's simulated Slurm nodes).
* ``getClusterStackEvents`` (GET ``/v3/clusters/{name}/stackevents``): the cluster stack's events,
  newest first as CloudFormation lists them, ``page_size`` a page with ``nextToken``.

Creation failures are reported as ParallelCluster 3.16 reports them. ``failures[]`` holds one entry of
its fixed list (``ClusterStack.get_cluster_creation_failure``, ``pcluster/models/cluster_resources.py``):
a code and a fixed sentence, chosen by the text of the failed WaitCondition's reason; EC2's own error
is only in the stack events, on the resource that failed. A head node without EC2 capacity: the
``HeadNode`` instance fails with EC2's message, CloudFormation cancels the waiting
``HeadNodeWaitCondition<timestamp>`` ("Resource creation cancelled"), so ``failures[]`` says
``ResourceCreationFailure`` "Failed to create resources for head node bootstrap." (inferred from that
code: no public source shows this exact failure). Static compute nodes are launched by the head
node's clustermgtd, not by CloudFormation, so their shortage is nowhere in the stack's events; what a
creation with static nodes short of capacity ends in is not documented. ``static_capacity_outcome``
chooses: ``protected_mode`` (default: the fixed list's ``StaticNodeBootstrapFailure``, "Cluster has
been set to PROTECTED mode due to failures detected in static node provisioning.") or ``completes``
(the cluster is created and the shortage shows only at the nodes).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, Self

import yaml
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from cryopilot_sim.clock import Clock

PCLUSTER_VERSION = "3.16.1"
NAME_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]+$")
NAME_MAX_LENGTH = 60
_AUTH_RE = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<akid>[^/\s]+)/(?P<date>\d{8})/(?P<region>[a-z0-9-]+)"
    r"/(?P<service>[a-z0-9-]+)"
    r"/aws4_request, ?SignedHeaders=(?P<signed>[a-z0-9;-]+), ?Signature=(?P<signature>[0-9a-f]{64})$"
)
NODE_TYPES = frozenset({"HeadNode", "ComputeNode", "LoginNode"})

#: The GET routes below a cluster (the OpenAPI spec's paths ``/v3/clusters/{clusterName}/<name>``)
#: and their operations.
_CLUSTER_SUBRESOURCES = {
    "instances": "describe_cluster_instances",
    "stackevents": "get_cluster_stack_events",
}
_SUPPRESS_RE = re.compile(r"^(ALL|type:[A-Za-z0-9]+)$")
STATUS_FILTERS = frozenset(
    {
        "CREATE_IN_PROGRESS",
        "CREATE_FAILED",
        "CREATE_COMPLETE",
        "DELETE_IN_PROGRESS",
        "DELETE_FAILED",
        "UPDATE_IN_PROGRESS",
        "UPDATE_COMPLETE",
        "UPDATE_FAILED",
    }
)

FaultKind = Literal[
    "bad_request",
    "config_error",
    "conflict",
    "throttle",
    "server_error",
    "create_failed_capacity",
    "create_failed",
    "delete_failed",
    "head_node_missing",
    "gateway_timeout",
]
StaticCapacityOutcome = Literal["protected_mode", "completes"]
_HTTP_FAULTS: dict[str, tuple[int, str]] = {
    "bad_request": (400, "Bad Request: injected fault"),
    "config_error": (400, "Invalid cluster configuration."),
    "conflict": (409, "Conflict: injected fault"),
    "throttle": (429, "Too Many Requests"),
    "server_error": (500, "Internal server error"),
    # API Gateway's answer when the API's Lambda takes longer than its 29 s integration timeout;
    # the request goes on and does what it was asked (a createCluster creates the cluster)
    "gateway_timeout": (504, "Endpoint request timed out"),
}
_LIFECYCLE_FAULTS = {"create_failed_capacity", "create_failed", "delete_failed"}

Phase = Literal["creating", "created", "create_failed", "deleting", "delete_failed"]


@dataclass
class RecordedRequest:
    """One request the stand-in answered (``path`` without the stage)."""

    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    status: int
    response: Any
    headers: dict[str, str]
    operation: str | None = None


@dataclass
class _Fault:
    kind: str
    remaining: int
    cluster: str | None = None
    operation: str | None = None
    instance_type: str | None = None
    subnet_id: str | None = None


@dataclass
class _Cluster:
    name: str
    region: str
    config_text: str
    tags: list[dict[str, str]]
    instance_types: list[str]
    subnets: list[str]
    head_node_type: str
    created_at: float
    create_seconds: float
    rollback: bool
    stack_arn: str
    phase: Phase = "creating"
    updated_at: float = 0.0
    fail_at: float | None = None
    failure: tuple[str, str] | None = None
    #: The stack event of the resource that failed the creation: (logical id, type, reason); the
    #: WaitCondition's own failure reason is ``wait_condition_reason``.
    failed_resource: tuple[str, str, str] | None = None
    wait_condition_reason: str = ""
    delete_started: float | None = None
    delete_fails: bool = False
    head_node: dict[str, Any] | None = None
    #: The head node's bootstrap has finished (``on_head_node`` returned): until then the cluster
    #: still reports CREATE_IN_PROGRESS, as ParallelCluster does while OnNodeConfigured runs.
    head_node_ready: bool = False


class _ApiError(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


class PClusterStandIn:
    """The stand-in server. ``start()`` returns the endpoint (``http://127.0.0.1:PORT/prod``)."""

    def __init__(
        self,
        clock: Clock,
        *,
        create_seconds: float = 900,
        delete_seconds: float = 300,
        validate: bool = True,
        region: str = "us-east-1",
        stage: str = "prod",
        credentials: Credentials | None = None,
        page_size: int = 50,
        account_id: str = "123456789012",
        on_head_node: Callable[[str, str], None] | None = None,
        on_deleted: Callable[[str], None] | None = None,
        script_exists: Callable[[str], bool] | None = None,
        version: str = PCLUSTER_VERSION,
    ) -> None:
        self.clock = clock
        #: The ParallelCluster version this API runs (its official AMIs' ``version``).
        self.version = version
        self.create_seconds = float(create_seconds)
        self.delete_seconds = float(delete_seconds)
        self.validate = validate
        self.region = region
        self.stage = stage.strip("/")
        self.credentials = credentials
        #: API Gateway's IAM authorization of the caller (set by the harness when IAM is
        #: enforced): ``authorize(access_key_id, method, path_after_stage)`` returns the
        #: AccessDenied message for a caller whose policies do not allow execute-api:Invoke on
        #: the route, or None
        self.authorize: Callable[[str, str, str], str | None] | None = None
        self.page_size = page_size
        self.account_id = account_id
        #: Called as ``on_head_node(cluster_name, instance_id)`` when a cluster reaches CREATE_COMPLETE.
        self.on_head_node = on_head_node
        #: Called as ``on_deleted(cluster_name)`` when a deleted cluster is gone.
        self.on_deleted = on_deleted
        #: Called as ``on_delete_requested(cluster_name, at)`` when a deleteCluster starts a deletion.
        self.on_delete_requested: Callable[[str, float], None] | None = None
        #: Simulated times of the deleteCluster calls that started a deletion, by cluster name.
        self.delete_requests: dict[str, list[float]] = {}
        #: Each cluster's configuration and creation times, kept after it is gone (the benchmark's
        #: record of what ran): name → {"config": YAML text, "created_at", "ready_at"}.
        self.history: dict[str, dict[str, Any]] = {}
        #: Called with each custom action's ``Script`` URI; a missing script ends the create in
        #: CREATE_FAILED with ``OnNodeConfiguredDownloadFailure``, as the head node's boot would.
        self.script_exists = script_exists
        #: Called as ``compute_instances(cluster_name)``: the cluster's compute instances now, each a
        #: dict with index, queue, instance_type, launched_at (epoch) and state (pending/running).
        self.compute_instances: Callable[[str], list[dict[str, Any]]] | None = None
        #: What a creation whose static compute nodes have no capacity ends in (not documented; see
        #: the module's docstring).
        self.static_capacity_outcome: StaticCapacityOutcome = "protected_mode"
        #: Every request answered, in order.
        self.requests: list[RecordedRequest] = []
        self._clusters: dict[tuple[str, str], _Cluster] = {}
        self._faults: list[_Fault] = []
        self._lock = threading.RLock()
        # Held from a lifecycle step until its callbacks have run: a head node's bootstrap (which
        # takes wall time) ends before anyone sees the cluster again, whichever thread stepped it.
        # Without it, a caller that only looks (the demo's cluster count) could step a cluster to
        # its head node while an API request in another thread saw CREATE_IN_PROGRESS until that
        # bootstrap ended: simulated minutes that depended on the machine's speed.
        self._step_lock = threading.RLock()
        self._validation_cache: dict[tuple[str, str], list[dict[str, str]] | None] = {}
        self._serial = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.endpoint: str | None = None

    # -- server -----------------------------------------------------------------------------------

    def start(self) -> str:
        if self._server is not None:
            raise RuntimeError("already started")
        standin = self

        class Handler(_Handler):
            owner = standin

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="pcluster-standin",
            daemon=True,
        )
        self._thread.start()
        host, port = self._server.server_address[:2]
        self.endpoint = f"http://{host!s}:{port}/{self.stage}"
        return self.endpoint

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- test API ---------------------------------------------------------------------------------

    def inject(
        self,
        kind: FaultKind,
        count: int = 1,
        cluster: str | None = None,
        *,
        operation: str | None = None,
        instance_type: str | None = None,
        subnet_id: str | None = None,
    ) -> None:
        """Make the next ``count`` matching requests (or creates/deletes) fail as ``kind``.

        ``cluster`` limits the fault to one cluster name, ``operation`` (``create_cluster``,
        ``describe_cluster``, ``delete_cluster``, ``list_clusters``) to one operation. For
        ``create_failed_capacity``, ``instance_type``/``subnet_id`` limit it to configurations that
        use that instance type / that compute subnet, so a fallback elsewhere succeeds.
        """
        if kind not in _HTTP_FAULTS and kind not in _LIFECYCLE_FAULTS and kind != "head_node_missing":
            raise ValueError(f"unknown fault kind {kind!r}")
        if count < 1:
            raise ValueError("count must be at least 1")
        with self._lock:
            self._faults.append(_Fault(kind, count, cluster, operation, instance_type, subnet_id))

    def pending_faults(self) -> int:
        with self._lock:
            return sum(f.remaining for f in self._faults)

    def clusters(self) -> dict[str, str]:
        """The clusters that exist now (any region), name → clusterStatus."""
        self._step()
        with self._lock:
            return {c.name: self._status(c)[0] for c in self._clusters.values()}

    def cluster_config(self, name: str) -> str:
        """The configuration text a cluster was created with."""
        with self._lock:
            for cluster in self._clusters.values():
                if cluster.name == name:
                    return cluster.config_text
        raise KeyError(name)

    # -- lifecycle --------------------------------------------------------------------------------

    def _step(self) -> None:
        """Move every cluster on to the simulated clock's now and run the callbacks that brings,
        before any other thread sees the clusters."""
        with self._step_lock:
            self._fire(self._advance())

    def _advance(self) -> list[tuple[str, str, str | None]]:
        now = self.clock.now()
        events: list[tuple[str, str, str | None]] = []
        with self._lock:
            for key, cluster in list(self._clusters.items()):
                if cluster.phase == "creating":
                    if cluster.fail_at is not None and now >= cluster.fail_at:
                        cluster.phase = "create_failed"
                        cluster.updated_at = cluster.fail_at
                    elif cluster.fail_at is None and now >= cluster.created_at + cluster.create_seconds:
                        cluster.phase = "created"
                        cluster.updated_at = cluster.created_at + cluster.create_seconds
                        cluster.head_node = self._new_head_node(cluster)
                        self.history[cluster.name] = {
                            "config": cluster.config_text,
                            "created_at": cluster.created_at,
                            "ready_at": cluster.updated_at,
                        }
                        events.append(("head_node", cluster.name, cluster.head_node["instanceId"]))
                elif (
                    cluster.phase == "deleting"
                    and cluster.delete_started is not None
                    and now >= cluster.delete_started + self.delete_seconds
                ):
                    if cluster.delete_fails:
                        cluster.phase = "delete_failed"
                        cluster.updated_at = cluster.delete_started + self.delete_seconds
                    else:
                        del self._clusters[key]
                        events.append(("deleted", cluster.name, None))
        return events

    def _fire(self, events: list[tuple[str, str, str | None]]) -> None:
        for kind, name, instance_id in events:
            if kind == "head_node" and instance_id is not None:
                if self.on_head_node is not None:
                    self.on_head_node(name, instance_id)
                with self._lock:
                    for cluster in self._clusters.values():
                        if cluster.name == name and cluster.head_node is not None:
                            cluster.head_node_ready = True
            elif kind == "deleted" and self.on_deleted is not None:
                self.on_deleted(name)

    def _new_head_node(self, cluster: _Cluster) -> dict[str, Any]:
        self._serial += 1
        digest = hashlib.sha256(f"{cluster.name}/{self._serial}".encode()).hexdigest()
        return {
            "instanceId": f"i-0{digest[:16]}",
            "instanceType": cluster.head_node_type,
            "launchTime": _iso(cluster.created_at + 60),
            "privateIpAddress": f"10.0.{(self._serial // 250) % 250}.{self._serial % 250 + 4}",
            "state": "running",
        }

    @staticmethod
    def _status(cluster: _Cluster) -> tuple[str, str]:
        """(clusterStatus, cloudFormation stack status)."""
        match cluster.phase:
            case "creating":
                return "CREATE_IN_PROGRESS", "CREATE_IN_PROGRESS"
            case "created" if not cluster.head_node_ready:
                return "CREATE_IN_PROGRESS", "CREATE_IN_PROGRESS"
            case "created":
                return "CREATE_COMPLETE", "CREATE_COMPLETE"
            case "create_failed":
                return "CREATE_FAILED", "ROLLBACK_COMPLETE" if cluster.rollback else "CREATE_FAILED"
            case "deleting":
                return "DELETE_IN_PROGRESS", "DELETE_IN_PROGRESS"
            case "delete_failed":
                return "DELETE_FAILED", "DELETE_FAILED"

    def _official_images(self, query: dict[str, list[str]]) -> dict[str, Any]:
        """ListOfficialImages (``GET /v3/images/official``; OpenAPI ``ListOfficialImagesResponseContent``
        of ``AmiInfo``: amiId, os, name, version, architecture): the API's own version's AMIs,
        filtered by the optional ``os`` and ``architecture`` query parameters."""
        wanted_os, wanted_arch = self._one(query, "os"), self._one(query, "architecture")
        images = []
        for i, (os_name, ami_os) in enumerate(_OFFICIAL_OSES.items()):
            for j, arch in enumerate(("x86_64", "arm64")):
                if wanted_os not in (None, os_name) or wanted_arch not in (None, arch):
                    continue
                images.append(
                    {
                        "amiId": f"ami-0{i:02d}{j:02d}{'0' * 12}",
                        "os": os_name,
                        "name": f"aws-parallelcluster-{self.version}-{ami_os}-hvm-{arch}-202601010000",
                        "version": self.version,
                        "architecture": arch,
                    }
                )
        return {"images": images}

    def _summary(self, cluster: _Cluster) -> dict[str, Any]:
        status, stack_status = self._status(cluster)
        return {
            "clusterName": cluster.name,
            "region": cluster.region,
            "version": PCLUSTER_VERSION,
            "cloudformationStackArn": cluster.stack_arn,
            "cloudformationStackStatus": stack_status,
            "clusterStatus": status,
            "scheduler": {"type": "slurm"},
        }

    def _describe(self, cluster: _Cluster) -> dict[str, Any]:
        status, stack_status = self._status(cluster)
        body: dict[str, Any] = {
            "clusterName": cluster.name,
            "region": cluster.region,
            "version": PCLUSTER_VERSION,
            "cloudFormationStackStatus": stack_status,
            "clusterStatus": status,
            "scheduler": {"type": "slurm"},
            "cloudformationStackArn": cluster.stack_arn,
            "creationTime": _iso(cluster.created_at),
            "lastUpdatedTime": _iso(cluster.updated_at),
            "clusterConfiguration": {
                "url": f"https://parallelcluster-standin-{cluster.region}.s3.amazonaws.com/"
                f"{cluster.name}/configs/cluster-config.yaml"
            },
            "computeFleetStatus": "RUNNING" if cluster.phase == "created" else "UNKNOWN",
            "tags": [{"key": t["key"], "value": t["value"]} for t in cluster.tags],
        }
        if cluster.head_node is not None:
            head = dict(cluster.head_node)
            if cluster.phase == "deleting":
                head["state"] = "shutting-down"
            body["headNode"] = head
        if cluster.phase == "create_failed" and cluster.failure is not None:
            body["failures"] = [{"failureCode": cluster.failure[0], "failureReason": cluster.failure[1]}]
        return body

    # -- faults -----------------------------------------------------------------------------------

    def _take_fault(self, matches: Callable[[_Fault], bool]) -> _Fault | None:
        """Use up one occurrence of the first pending fault that ``matches``."""
        with self._lock:
            for fault in self._faults:
                if not matches(fault):
                    continue
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def _take_http_fault(self, operation: str, cluster: str | None) -> _Fault | None:
        return self._take_fault(
            lambda f: (
                f.kind in _HTTP_FAULTS and f.operation in (None, operation) and f.cluster in (None, cluster)
            )
        )

    def _take_lifecycle_fault(
        self, kinds: set[str], name: str, instance_types: list[str], subnets: list[str]
    ) -> _Fault | None:
        return self._take_fault(
            lambda f: (
                f.kind in kinds
                and f.cluster in (None, name)
                and (f.instance_type is None or f.instance_type in instance_types)
                and (f.subnet_id is None or f.subnet_id in subnets)
            )
        )

    # -- auth -------------------------------------------------------------------------------------

    def check_auth(self, method: str, raw_path: str, headers: dict[str, str], body: bytes, host: str) -> None:
        """Raise a 403 like API Gateway's IAM authorizer unless the request is SigV4-signed."""
        auth = headers.get("authorization")
        if not auth:
            raise _ApiError(403, {"message": "Missing Authentication Token"})
        match = _AUTH_RE.match(auth)
        if not match or "x-amz-date" not in headers:
            raise _ApiError(
                403,
                {"message": "Authorization header requires 'Credential', 'Signature' and 'SignedHeaders'"},
            )
        if match["service"] != "execute-api" or match["region"] != self.region:
            raise _ApiError(
                403,
                {
                    "message": "Credential should be scoped to a valid region and service 'execute-api',"
                    f" not '{match['region']}/{match['service']}'"
                },
            )
        if not headers["x-amz-date"].startswith(match["date"]):
            raise _ApiError(
                403,
                {
                    "message": "Date in Credential scope does not match YYYYMMDD from ISO-8601 version"
                    " of date from HTTP"
                },
            )
        if self.authorize is not None:
            path = urllib.parse.urlsplit(raw_path).path
            denied = self.authorize(match["akid"], method, path[len(self.stage) + 1 :] or "/")
            if denied:
                # API Gateway, IAM authorization: 403 with the caller, action and route (its "Message")
                raise _ApiError(403, {"Message": denied})
        if self.credentials is None:
            return
        if match["akid"] != self.credentials.access_key:
            raise _ApiError(403, {"message": "The security token included in the request is invalid."})
        signed = match["signed"].split(";")
        if "host" not in signed:
            raise _ApiError(403, {"message": "'Host' must be a signed header"})
        request = AWSRequest(
            method=method,
            url=f"http://{host}{raw_path}",
            data=body,
            headers={k: v for k, v in headers.items() if k in signed and k != "host"},
        )
        request.context["timestamp"] = headers["x-amz-date"]
        signer = SigV4Auth(self.credentials, "execute-api", self.region)
        canonical = signer.canonical_request(request)
        expected = signer.signature(signer.string_to_sign(request, canonical), request)
        if expected != match["signature"]:
            raise _ApiError(
                403,
                {
                    "message": "The request signature we calculated does not match the signature"
                    " you provided. Check your AWS Secret Access Key and signing method."
                },
            )

    # -- operations -------------------------------------------------------------------------------

    def handle(
        self, method: str, path: str, query: dict[str, list[str]], body: Any
    ) -> tuple[int, dict[str, Any], str | None]:
        """Route one authenticated request; return (status, body, operation)."""
        parts = [p for p in path.split("/") if p]
        operation: str | None = None
        name: str | None = None
        if parts == ["v3", "clusters"] and method in ("GET", "POST"):
            operation = "list_clusters" if method == "GET" else "create_cluster"
            if isinstance(body, dict) and isinstance(body.get("clusterName"), str):
                name = body["clusterName"]
        elif len(parts) == 3 and parts[:2] == ["v3", "clusters"] and method in ("GET", "DELETE"):
            operation = "describe_cluster" if method == "GET" else "delete_cluster"
            name = urllib.parse.unquote(parts[2])
        elif (
            len(parts) == 4
            and parts[:2] == ["v3", "clusters"]
            and parts[3] in _CLUSTER_SUBRESOURCES
            and method == "GET"
        ):
            operation = _CLUSTER_SUBRESOURCES[parts[3]]
            name = urllib.parse.unquote(parts[2])
        elif parts == ["v3", "images", "official"] and method == "GET":
            operation = "list_official_images"
        else:
            # API Gateway's answer for a resource or method it does not have.
            return 403, {"message": "Missing Authentication Token"}, None

        fault = self._take_http_fault(operation, name)
        if fault is not None and fault.kind == "gateway_timeout":
            self._answer(operation, method, name, query, body)  # done all the same
            status, message = _HTTP_FAULTS[fault.kind]
            return status, {"message": message}, operation
        if fault is not None:
            status, message = _HTTP_FAULTS[fault.kind]
            if fault.kind == "config_error":  # as the API reports a validator's ERROR
                return status, _invalid([_CONFIG_ERROR_MESSAGE], "InstanceTypeValidator"), operation
            return status, {"message": message}, operation

        status, answer = self._answer(operation, method, name, query, body)
        return status, answer, operation

    def _answer(
        self, operation: str, method: str, name: str | None, query: dict[str, list[str]], body: Any
    ) -> tuple[int, dict[str, Any]]:
        # A head node's bootstrap (the callback) ends before the cluster reports CREATE_COMPLETE.
        self._step()
        try:
            region = self._one(query, "region") or self.region
            if operation == "create_cluster":
                status, answer = self._create(region, query, body)
            elif operation == "list_clusters":
                status, answer = self._list(region, query)
            elif operation == "describe_cluster":
                status, answer = self._describe_op(region, name or "")
            elif operation == "describe_cluster_instances":
                status, answer = self._instances(region, name or "", query)
            elif operation == "get_cluster_stack_events":
                status, answer = self._stack_events_op(region, name or "", query)
            elif operation == "list_official_images":
                status, answer = 200, self._official_images(query)
            else:
                status, answer = self._delete(region, name or "")
        except _ApiError as error:
            status, answer = error.status, error.body
        return status, answer

    @staticmethod
    def _one(query: dict[str, list[str]], key: str) -> str | None:
        values = query.get(key)
        if not values:
            return None
        if len(values) > 1:
            raise _ApiError(400, {"message": f"Bad Request: '{key}' given more than once"})
        return values[0]

    def _bool(self, query: dict[str, list[str]], key: str) -> bool | None:
        value = self._one(query, key)
        if value is None:
            return None
        if value.lower() not in ("true", "false"):
            raise _ApiError(
                400, {"message": f"Bad Request: Wrong type, expected 'boolean' for query parameter '{key}'"}
            )
        return value.lower() == "true"

    def _check_name(self, name: str, where: str) -> None:
        if not NAME_RE.match(name):
            raise _ApiError(
                400,
                {"message": f"Bad Request: '{name}' does not match '^[a-zA-Z][a-zA-Z0-9-]+$' - '{where}'"},
            )

    def _create(self, region: str, query: dict[str, list[str]], body: Any) -> tuple[int, dict[str, Any]]:
        dryrun = self._bool(query, "dryrun") is True
        rollback = self._bool(query, "rollbackOnFailure") in (True, None)
        level = self._one(query, "validationFailureLevel")
        if level is not None and level not in ("INFO", "WARNING", "ERROR"):
            raise _ApiError(
                400, {"message": f"Bad Request: '{level}' is not one of ['INFO', 'WARNING', 'ERROR']"}
            )
        suppress_values = query.get("suppressValidators", [])
        for value in suppress_values:
            if not _SUPPRESS_RE.match(value):
                raise _ApiError(
                    400, {"message": f"Bad Request: '{value}' does not match '^(ALL|type:[A-Za-z0-9]+)$'"}
                )
        if len(set(suppress_values)) != len(suppress_values):
            raise _ApiError(400, {"message": "Bad Request: suppressValidators has non-unique elements"})
        if not isinstance(body, dict):
            raise _ApiError(400, {"message": "Bad Request: request body is required"})
        for key in ("clusterName", "clusterConfiguration"):
            if key not in body:
                raise _ApiError(400, {"message": f"Bad Request: '{key}' is a required property"})
            if not isinstance(body[key], str):
                raise _ApiError(
                    400, {"message": f"Bad Request: {body[key]!r} is not of type 'string' - '{key}'"}
                )
        name, text = body["clusterName"], body["clusterConfiguration"]
        self._check_name(name, "clusterName")
        if not text.strip():
            raise _ApiError(400, {"message": "configuration is required and cannot be empty"})
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise _ApiError(400, _invalid([f"Configuration must be a valid YAML document. {exc}"])) from None
        if not isinstance(document, dict):
            raise _ApiError(400, _invalid(["Configuration must be a valid YAML document."]))
        config_region = document.get("Region")
        if config_region and config_region != region:
            raise _ApiError(
                400,
                {
                    "message": "Bad Request: region is set in both parameter and configuration with"
                    " conflicting values"
                },
            )
        with self._lock:
            if (region, name) in self._clusters:
                raise _ApiError(400, {"message": f"Bad Request: Cluster {name} already exists."})
        if len(name) > NAME_MAX_LENGTH:
            raise _ApiError(
                400,
                _invalid(
                    [
                        "Error: The cluster name can contain only alphanumeric characters (case-sensitive)"
                        " and hyphens. It must start with an alphabetic character and can't be longer than"
                        f" {NAME_MAX_LENGTH} characters."
                    ],
                    validator="ClusterNameValidator",
                ),
            )
        if self.validate:
            errors = self._schema_errors(name, text, region)
            if errors:
                raise _ApiError(
                    400,
                    {"message": "Invalid cluster configuration.", "configurationValidationErrors": errors},
                )
        if dryrun:
            return 412, {"message": "Request would have succeeded, but DryRun flag is set."}

        instance_types, subnets, head_type = _config_facts(document)
        now = self.clock.now()
        cluster = _Cluster(
            name=name,
            region=region,
            config_text=text,
            tags=_cluster_tags(document, name),
            instance_types=instance_types,
            subnets=subnets,
            head_node_type=head_type,
            created_at=now,
            updated_at=now,
            create_seconds=self.create_seconds,
            rollback=rollback,
            stack_arn=f"arn:aws:cloudformation:{region}:{self.account_id}:stack/{name}/"
            f"{hashlib.sha256(f'{name}{now}'.encode()).hexdigest()[:8]}-0000-4000-8000-000000000000",
        )
        # Only what is launched with the cluster can make its creation fail for capacity: the head
        # node and static compute nodes (MinCount > 0). A queue scaling from zero launches nothing
        # until Slurm has a job for it, so a GPU type without capacity never fails a creation.
        launched = [head_type, *_static_types(document)]
        fault = self._take_lifecycle_fault(
            {"create_failed_capacity", "create_failed"}, name, launched, subnets
        )
        if fault is not None and fault.kind == "create_failed_capacity":
            itype = fault.instance_type or head_type
            if itype == head_type:
                cluster.fail_at = now + self.create_seconds / 2
                cluster.failed_resource = (
                    "HeadNode",
                    "AWS::EC2::Instance",
                    _ec2_capacity_message(itype, region),
                )
                cluster.wait_condition_reason = "Resource creation cancelled"
            elif self.static_capacity_outcome == "protected_mode":
                cluster.fail_at = now + self.create_seconds
                cluster.wait_condition_reason = _PROTECTED_MODE
        elif fault is not None:
            cluster.fail_at = now + self.create_seconds
            cluster.wait_condition_reason = "Failed to execute OnNodeConfigured script (exit 1)"
        elif missing := self._missing_scripts(document):
            cluster.fail_at = now + self.create_seconds
            cluster.wait_condition_reason = f"Failed to download OnNodeConfigured script {missing[0]}"
        if cluster.fail_at is not None:
            cluster.failure = _creation_failure(cluster.wait_condition_reason)
        with self._lock:
            if (region, name) in self._clusters:  # a concurrent create won
                raise _ApiError(400, {"message": f"Bad Request: Cluster {name} already exists."})
            self._clusters[(region, name)] = cluster
            return 202, {"cluster": self._summary(cluster)}

    def _missing_scripts(self, document: Any) -> list[str]:
        """The head node's custom-action scripts that cannot be downloaded (none when unchecked)."""
        if self.script_exists is None or not isinstance(document, dict):
            return []
        actions = (document.get("HeadNode") or {}).get("CustomActions") or {}
        scripts = [
            a["Script"] for a in actions.values() if isinstance(a, dict) and isinstance(a.get("Script"), str)
        ]
        return [uri for uri in scripts if not self.script_exists(uri)]

    def _schema_errors(self, name: str, text: str, region: str) -> list[dict[str, str]] | None:
        key = (name, text)
        with self._lock:
            if key in self._validation_cache:
                return self._validation_cache[key]
        os.environ.setdefault("AWS_DEFAULT_REGION", region)
        from marshmallow import ValidationError
        from pcluster.schemas.cluster_schema import ClusterSchema

        errors: list[dict[str, str]] | None = None
        try:
            ClusterSchema(cluster_name=name).load(yaml.safe_load(text))
        except ValidationError as exc:
            messages = exc.messages
            data = str(sorted(messages.items()) if isinstance(messages, dict) else exc)
            errors = [{"level": "ERROR", "type": "ConfigSchemaValidator", "message": data}]
        except Exception as exc:  # the real API reports any load failure as invalid configuration
            errors = [
                {
                    "level": "ERROR",
                    "type": "ConfigSchemaValidator",
                    "message": f"Invalid cluster configuration: {exc}",
                }
            ]
        with self._lock:
            self._validation_cache[key] = errors
        return errors

    def _find(self, region: str, name: str) -> _Cluster:
        self._check_name(name, "clusterName")
        with self._lock:
            cluster = self._clusters.get((region, name))
        if cluster is None:
            raise _ApiError(
                404,
                {
                    "message": f"Cluster '{name}' does not exist or belongs to an incompatible"
                    " ParallelCluster major version."
                },
            )
        return cluster

    def _describe_op(self, region: str, name: str) -> tuple[int, dict[str, Any]]:
        cluster = self._find(region, name)
        with self._lock:
            body = self._describe(cluster)
        # ParallelCluster 3.16's describe_cluster drops headNode when its EC2 call fails (a
        # ClusterActionError, EC2 throttling included) or finds no head node pending or running
        if "headNode" in body and self._take_fault(
            lambda f: f.kind == "head_node_missing" and f.cluster in (None, name)
        ):
            del body["headNode"]
        return 200, body

    def _stack_events_op(
        self, region: str, name: str, query: dict[str, list[str]]
    ) -> tuple[int, dict[str, Any]]:
        """getClusterStackEvents (``cluster_logs_controller.get_cluster_stack_events``): the cluster
        stack's events, CloudFormation's ``DescribeStackEvents`` with the keys' first letter
        lowercased (``GetClusterStackEventsResponseContent``), a page at a time."""
        cluster = self._find(region, name)
        start = self._page_start(query, "events-")
        with self._lock:
            events = self._stack_events(cluster)
        page = events[start : start + self.page_size]
        return 200, {"events": page, **self._next_token(start, len(events), "events-")}

    def _stack_events(self, cluster: _Cluster) -> list[dict[str, Any]]:
        """The events of the cluster's stack so far, newest first. Only the resources whose events
        cryopilot or an operator reads are modelled: the stack itself, the ``HeadNode`` instance and
        the ``HeadNodeWaitCondition<timestamp>`` whose reason names a failure (ParallelCluster's
        ``cluster_stack.py``)."""
        stack_id, stamp = cluster.stack_arn, datetime.fromtimestamp(cluster.created_at, UTC)
        wait = "HeadNodeWaitCondition" + stamp.strftime("%Y%m%d%H%M%S")
        seen: list[tuple[float, str, str, str, str]] = [
            (
                cluster.created_at,
                cluster.name,
                "AWS::CloudFormation::Stack",
                "CREATE_IN_PROGRESS",
                "User Initiated",
            ),
            (cluster.created_at + 20, "HeadNode", "AWS::EC2::Instance", "CREATE_IN_PROGRESS", ""),
            (cluster.created_at + 20, wait, "AWS::CloudFormation::WaitCondition", "CREATE_IN_PROGRESS", ""),
        ]
        if cluster.phase == "create_failed" and cluster.fail_at is not None:
            end, failed = cluster.fail_at, [wait]
            if cluster.failed_resource is not None:
                logical, kind, reason = cluster.failed_resource
                seen.append((end - 1, logical, kind, "CREATE_FAILED", reason))
                failed.insert(0, logical)
            else:
                seen.append((end - 60, "HeadNode", "AWS::EC2::Instance", "CREATE_COMPLETE", ""))
            seen.append(
                (
                    end,
                    wait,
                    "AWS::CloudFormation::WaitCondition",
                    "CREATE_FAILED",
                    cluster.wait_condition_reason,
                )
            )
            said = f"The following resource(s) failed to create: [{', '.join(sorted(failed))}]. "
            seen.append((end, cluster.name, "AWS::CloudFormation::Stack", "CREATE_FAILED", said))
            if cluster.rollback:
                # CloudFormation's own statuses, passed through: ParallelCluster's
                # ``get_cluster_stack_events`` copies each event (``StackEvent``'s setter checks only
                # for None) and validates answers against its spec only in its dev profile
                # (``api/awslambda/entrypoint.py``), so ROLLBACK_* reach the caller although the
                # spec's ``CloudFormationResourceStatus`` enum leaves them out.
                seen.append(
                    (end + 1, cluster.name, "AWS::CloudFormation::Stack", "ROLLBACK_IN_PROGRESS", said)
                )
                seen.append((end + 60, cluster.name, "AWS::CloudFormation::Stack", "ROLLBACK_COMPLETE", ""))
        elif cluster.phase != "creating":
            ready = cluster.created_at + cluster.create_seconds
            seen.append((cluster.created_at + 80, "HeadNode", "AWS::EC2::Instance", "CREATE_COMPLETE", ""))
            seen.append((ready, wait, "AWS::CloudFormation::WaitCondition", "CREATE_COMPLETE", ""))
            seen.append((ready, cluster.name, "AWS::CloudFormation::Stack", "CREATE_COMPLETE", ""))
        if cluster.delete_started is not None:
            seen.append(
                (
                    cluster.delete_started,
                    cluster.name,
                    "AWS::CloudFormation::Stack",
                    "DELETE_IN_PROGRESS",
                    "User Initiated",
                )
            )
        events = []
        for n, (at, logical, kind, status, reason) in enumerate(sorted(seen, key=lambda e: e[0])):
            physical = stack_id if kind == "AWS::CloudFormation::Stack" else ""
            if logical == "HeadNode" and cluster.head_node is not None:
                physical = cluster.head_node["instanceId"]
            event = {
                "stackId": stack_id,
                "eventId": f"{logical}-{status}-{n:04d}",
                "stackName": cluster.name,
                "logicalResourceId": logical,
                "physicalResourceId": physical,
                "resourceType": kind,
                "timestamp": _iso(at),
                "resourceStatus": status,
            }
            if reason:
                event["resourceStatusReason"] = reason
            events.append(event)
        return events[::-1]

    def _instances(self, region: str, name: str, query: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        """describeClusterInstances: the cluster's EC2 instances in state pending, running, stopping
        or stopped (ParallelCluster 3.16's ``Cluster.describe_instances`` filters EC2 on the cluster
        tag and those states, so terminated nodes are not listed, and a name without a cluster
        answers an empty list, not 404)."""
        self._check_name(name, "clusterName")
        node_type = self._one(query, "nodeType")
        if node_type is not None and node_type not in NODE_TYPES:
            raise _ApiError(
                400, {"message": f"Bad Request: '{node_type}' is not one of {sorted(NODE_TYPES)}"}
            )
        queue = self._one(query, "queueName")
        start = self._page_start(query, "instances-")
        with self._lock:
            cluster = self._clusters.get((region, name))
            instances: list[dict[str, Any]] = []
            if cluster is not None and cluster.head_node is not None:
                head = dict(cluster.head_node)
                if cluster.phase == "deleting":
                    head["state"] = "shutting-down"
                instances.append({**head, "nodeType": "HeadNode"})
        if cluster is not None and self.compute_instances is not None:
            for item in self.compute_instances(name):
                index = int(item["index"])
                digest = hashlib.sha256(f"{name}/compute/{index}".encode()).hexdigest()
                instances.append(
                    {
                        "instanceId": f"i-0{digest[:16]}",
                        "instanceType": item["instance_type"],
                        "launchTime": _iso(float(item["launched_at"])),
                        "privateIpAddress": f"10.0.{128 + index // 250 % 100}.{index % 250 + 4}",
                        "state": item["state"],
                        "nodeType": "ComputeNode",
                        "queueName": item["queue"],
                    }
                )
        if node_type is not None:
            instances = [i for i in instances if i["nodeType"] == node_type]
        if queue is not None:
            instances = [i for i in instances if i.get("queueName") == queue]
        page = instances[start : start + self.page_size]
        return 200, {"instances": page, **self._next_token(start, len(instances), "instances-")}

    def _delete(self, region: str, name: str) -> tuple[int, dict[str, Any]]:
        cluster = self._find(region, name)
        with self._lock:
            if cluster.phase != "deleting":
                fault = self._take_lifecycle_fault(
                    {"delete_failed"}, name, cluster.instance_types, cluster.subnets
                )
                cluster.phase = "deleting"
                cluster.delete_started = self.clock.now()
                cluster.updated_at = cluster.delete_started
                cluster.delete_fails = fault is not None
                self.delete_requests.setdefault(name, []).append(cluster.delete_started)
                started: float | None = cluster.delete_started
            else:
                started = None
            summary = self._summary(cluster)
        if started is not None and self.on_delete_requested is not None:
            self.on_delete_requested(name, started)
        return 202, {"cluster": summary}

    def _list(self, region: str, query: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        wanted = query.get("clusterStatus", [])
        for value in wanted:
            if value not in STATUS_FILTERS:
                raise _ApiError(
                    400, {"message": f"Bad Request: '{value}' is not one of {sorted(STATUS_FILTERS)}"}
                )
        start = self._page_start(query, "page-")
        with self._lock:
            clusters = sorted(
                (c for (r, _), c in self._clusters.items() if r == region), key=lambda c: c.name
            )
            # Like ParallelCluster, a page is a page of stacks; the status filter applies within it.
            page = clusters[start : start + self.page_size]
            items = [self._summary(c) for c in page if not wanted or self._status(c)[0] in wanted]
        return 200, {"clusters": items, **self._next_token(start, len(clusters), "page-")}

    def _page_start(self, query: dict[str, list[str]], prefix: str) -> int:
        """Where the page a ``nextToken`` (``<prefix><index>``, of this stand-in's making) asks for
        starts; 0 without one. Any other token is a 400, as the API answers a bad one."""
        token = self._one(query, "nextToken")
        if token is None:
            return 0
        try:
            return int(token.removeprefix(prefix))
        except ValueError:
            raise _ApiError(400, {"message": "Bad Request: invalid nextToken"}) from None

    def _next_token(self, start: int, total: int, prefix: str) -> dict[str, str]:
        """``nextToken`` for the page after the one at ``start`` of ``total`` items, if there is one."""
        following = start + self.page_size
        return {"nextToken": f"{prefix}{following}"} if following < total else {}

    def record(self, entry: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(entry)

    def requests_for(self, operation: str) -> Iterator[RecordedRequest]:
        with self._lock:
            entries = list(self.requests)
        return (r for r in entries if r.operation == operation)


#: The operating systems of ParallelCluster 3's official AMIs (the configuration's ``Image/Os``
#: values) and how each AMI's name spells it.
_OFFICIAL_OSES = {
    "alinux2023": "amzn2023",
    "ubuntu2204": "ubuntu-2204-lts",
    "ubuntu2404": "ubuntu-2404-lts",
    "rhel9": "rhel9",
}


_CONFIG_ERROR_MESSAGE = (
    "The instance type 'p4d.24xlarge' is not supported in the Availability Zone of subnet "
    "subnet-0aaaaaaaaaaaaaaa1 (injected fault)."
)


#: The WaitCondition reason ParallelCluster 3.16 maps to ``StaticNodeBootstrapFailure``.
_PROTECTED_MODE = (
    "Cluster has been set to PROTECTED mode due to failures detected in static node provisioning"
)

#: ParallelCluster 3.16's creation failures (``get_cluster_creation_failure``): the first entry whose
#: text is in the failed WaitCondition's reason gives the code and the fixed sentence of
#: ``failures[]``; no match gives the general failure. The facts of its list, in its order.
_CREATION_FAILURES: tuple[tuple[str, str, str], ...] = (
    (
        "This AMI was created with",
        "AmiVersionMismatch",
        "ParallelCluster version of the custom AMI is different than the cookbook."
        " Please make them consistent.",
    ),
    (
        "This AMI was not baked by ParallelCluster",
        "InvalidAmi",
        "The custom AMI is invalid. It needs to be created using build-image command by providing your AMI as"
        " parent image.",
    ),
    (
        "Failed to execute OnNodeConfigured script",
        "OnNodeConfiguredExecutionFailure",
        "Failed to execute OnNodeConfigured script.",
    ),
    (
        "Failed to download OnNodeConfigured script",
        "OnNodeConfiguredDownloadFailure",
        "Failed to download OnNodeConfigured script.",
    ),
    (
        "Failed to run OnNodeConfigured script",
        "OnNodeConfiguredFailure",
        "Failed to run OnNodeConfigured script.",
    ),
    (
        "Failed to execute OnNodeStart script",
        "OnNodeStartExecutionFailure",
        "Failed to execute OnNodeStart script.",
    ),
    (
        "Failed to download OnNodeStart script",
        "OnNodeStartDownloadFailure",
        "Failed to download OnNodeStart script.",
    ),
    ("Failed to run OnNodeStart script", "OnNodeStartFailure", "Failed to run OnNodeStart script."),
    ("Failed to mount EBS volume", "EbsMountFailure", "Failed to mount EBS volume."),
    ("Failed to mount EFS", "EfsMountFailure", "Failed to mount EFS."),
    ("Failed to mount FSX", "FsxMountFailure", "Failed to mount FSX."),
    ("Failed to mount RAID array", "RaidMountFailure", "Failed to mount RAID array."),
    ("Failed to run chef recipe", "HeadNodeBootstrapFailure", "Failed to set up the head node."),
    ("Failed to bootstrap the head node", "HeadNodeBootstrapFailure", "Failed to bootstrap the head node."),
    (
        "Resource creation cancelled",
        "ResourceCreationFailure",
        "Failed to create resources for head node bootstrap.",
    ),
    ("WaitCondition timed out", "HeadNodeBootstrapFailure", "Cluster creation timed out."),
    (_PROTECTED_MODE, "StaticNodeBootstrapFailure", _PROTECTED_MODE + "."),
)


def _creation_failure(wait_condition_reason: str) -> tuple[str, str]:
    """(failureCode, failureReason) of ``failures[]`` for the failed WaitCondition's reason."""
    for text, code, sentence in _CREATION_FAILURES:
        if wait_condition_reason and text in wait_condition_reason:
            return code, sentence
    return "ClusterCreationFailure", "Failed to create the cluster."


def _ec2_capacity_message(instance_type: str, region: str) -> str:
    """EC2's InsufficientInstanceCapacity message, as CloudFormation puts it in an instance's event
    (EC2's text, then the service, status and error code in parentheses). The client also matches
    the text alone, should the code not be there."""
    return (
        f"We currently do not have sufficient {instance_type} capacity in the Availability Zone you"
        f" requested ({region}a). Our system will be working on provisioning additional capacity. You"
        f" can currently get {instance_type} capacity by not specifying an Availability Zone in your"
        f" request or choosing {region}b, {region}c. (Service: AmazonEC2; Status Code: 500; Error Code:"
        " InsufficientInstanceCapacity; Request ID: 00000000-0000-4000-8000-000000000000; Proxy: null)"
    )


def _invalid(messages: list[str], validator: str = "ConfigSchemaValidator") -> dict[str, Any]:
    return {
        "message": "Invalid cluster configuration.",
        "configurationValidationErrors": [
            {"level": "ERROR", "type": validator, "message": m} for m in messages
        ],
    }


def _config_facts(document: dict[str, Any]) -> tuple[list[str], list[str], str]:
    """(compute instance types, compute subnets, head node instance type) of a configuration."""
    instance_types: list[str] = []
    subnets: list[str] = []
    scheduling = document.get("Scheduling") or {}
    for queue in scheduling.get("SlurmQueues") or []:
        for resource in queue.get("ComputeResources") or []:
            if resource.get("InstanceType"):
                instance_types.append(str(resource["InstanceType"]))
            for item in resource.get("Instances") or []:
                if item.get("InstanceType"):
                    instance_types.append(str(item["InstanceType"]))
        subnets.extend(str(s) for s in (queue.get("Networking") or {}).get("SubnetIds") or [])
    head = document.get("HeadNode") or {}
    return instance_types, list(dict.fromkeys(subnets)), str(head.get("InstanceType") or "t3.medium")


def _static_types(document: dict[str, Any]) -> list[str]:
    """Instance types of the compute resources with static nodes (``MinCount`` > 0)."""
    scheduling = document.get("Scheduling") or {}
    return [
        str(resource["InstanceType"])
        for queue in scheduling.get("SlurmQueues") or []
        for resource in queue.get("ComputeResources") or []
        if resource.get("InstanceType") and int(resource.get("MinCount") or 0) > 0
    ]


def _cluster_tags(document: dict[str, Any], name: str) -> list[dict[str, str]]:
    tags = [
        {"key": str(t.get("Key")), "value": str(t.get("Value"))}
        for t in document.get("Tags") or []
        if isinstance(t, dict)
    ]
    tags.append({"key": "parallelcluster:version", "value": PCLUSTER_VERSION})
    tags.append({"key": "parallelcluster:cluster-name", "value": name})
    return tags


class _Handler(BaseHTTPRequestHandler):
    owner: PClusterStandIn
    protocol_version = "HTTP/1.1"
    server_version = "pcluster-standin"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def _serve(self) -> None:
        owner = self.owner
        length = int(self.headers.get("Content-Length") or 0)
        raw_body = self.rfile.read(length) if length else b""
        split = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(split.query, keep_blank_values=True)
        headers = {k.lower(): v for k, v in self.headers.items()}
        body: Any = None
        operation: str | None = None
        stage_prefix = f"/{owner.stage}"
        path = split.path
        try:
            if raw_body:
                try:
                    body = json.loads(raw_body)
                except ValueError:
                    body = raw_body.decode("utf-8", "replace")
                    raise _ApiError(400, {"message": "Bad Request: request body is not valid JSON"}) from None
            if not (path == stage_prefix or path.startswith(stage_prefix + "/")):
                raise _ApiError(403, {"message": "Missing Authentication Token"})
            path = path[len(stage_prefix) :] or "/"
            owner.check_auth(self.command, self.path, headers, raw_body, headers.get("host", ""))
            status, answer, operation = owner.handle(self.command, path, query, body)
        except _ApiError as error:
            status, answer = error.status, error.body
        except Exception as exc:  # a bug in the stand-in: answer like an unhandled Lambda error
            status, answer = 500, {"message": f"Internal server error ({type(exc).__name__}: {exc})"}
        owner.record(
            RecordedRequest(
                method=self.command,
                path=path,
                query=query,
                body=body,
                status=status,
                response=answer,
                headers=headers,
                operation=operation,
            )
        )
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 403:
            self.send_header("x-amzn-ErrorType", "MissingAuthenticationTokenException")
        self.end_headers()
        with suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(data)
