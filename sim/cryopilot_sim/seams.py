"""The seams: the patches of moto's internals that make the local stack behave as AWS does here.

Each patch is the smallest change of moto that stands in for one behaviour of the real service;
the comment above it names that behaviour. :func:`install` applies them all for the life of a
:class:`~cryopilot_sim.harness.LocalCloud` (undone when its exit stack closes).

The moto internals patched here are those of moto 5.2.5 (pinned in requirements/dev.txt).
"""

from __future__ import annotations

import functools
import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any
from unittest import mock

if TYPE_CHECKING:
    from cryopilot_sim.harness import LocalCloud

#: ASL definition text → moto's parse tree (see :func:`install`).
_ASL_TREES: dict[str, Any] = {}


class RequestLock:
    """A re-entrant lock that a thread can let go of for a while, however deep it holds it."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._held = threading.local()

    def __enter__(self) -> None:
        self._lock.acquire()
        self._held.depth = getattr(self._held, "depth", 0) + 1

    def __exit__(self, *exc: object) -> None:
        self._held.depth -= 1
        self._lock.release()

    @contextmanager
    def released(self) -> Iterator[None]:
        depth = getattr(self._held, "depth", 0)
        for _ in range(depth):
            self._lock.release()
        self._held.depth = 0
        try:
            yield
        finally:
            for _ in range(depth):
                self._lock.acquire()
            self._held.depth = depth


def install(harness: LocalCloud, st: ExitStack) -> None:
    """Apply every seam to ``harness``'s moto until ``st`` closes."""
    from moto.awslambda_simple.models import LambdaSimpleBackend
    from moto.core.botocore_stubber import BotocoreStubber
    from moto.events.models import Rule
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication
    from moto.sns.responses import SNSResponse
    from moto.ssm.models import SimpleSystemManagerBackend
    from moto.stepfunctions.parser.asl.component.common.retry import retrier_decl
    from moto.stepfunctions.parser.asl.component.state.wait.wait_function.wait_function import (
        WaitFunction,
    )

    # Each AWS API request is atomic: a read never sees a write half done. moto's in-memory
    # backends have no locks, and here several threads call them at once (the caller, moto's
    # execution threads running the state machine, the EventBridge worker, the stand-ins'
    # servers), so every request moto serves, in-process or through its HTTP server, holds
    # one lock. The seams that run code of ours inside a request (a Lambda handler, the
    # head-node agent) let it go meanwhile: that code makes requests of its own, from other
    # threads too (the stand-ins' servers).
    requests = harness.requests
    real_process_request = BotocoreStubber.process_request
    real_serve = DomainDispatcherApplication.__call__

    def process_request(stubber: Any, request: Any) -> Any:
        with requests:
            return real_process_request(stubber, request)

    def serve(app: Any, environ: Any, start_response: Any) -> Any:
        with requests:
            return real_serve(app, environ, start_response)

    st.enter_context(mock.patch.object(BotocoreStubber, "process_request", process_request))
    st.enter_context(mock.patch.object(DomainDispatcherApplication, "__call__", serve))

    # The agent builds a new cryosparc-tools client per command, as its process would on a
    # head node; each builds an httpx transport whose SSL context loads the CA bundle (tens
    # of milliseconds). The stand-ins speak plain http, so one default context serves all.
    import httpx._transports.default as httpx_transport

    real_ssl_context = httpx_transport.create_ssl_context
    shared: dict[tuple[Any, ...], Any] = {}

    def ssl_context(verify: Any = True, cert: Any = None, trust_env: bool = True) -> Any:
        if verify is not True or cert is not None:
            return real_ssl_context(verify=verify, cert=cert, trust_env=trust_env)
        key = (trust_env,)
        if key not in shared:
            shared[key] = real_ssl_context(verify=verify, cert=cert, trust_env=trust_env)
        return shared[key]

    st.enter_context(mock.patch.object(httpx_transport, "create_ssl_context", ssl_context))

    # StopExecution is final on AWS: the execution is ABORTED whatever the step in flight
    # does next. moto lets that step's failure turn it into FAILED; this seam keeps ABORTED.
    from moto.stepfunctions.parser.api import ExecutionStatus
    from moto.stepfunctions.parser.backend import execution as sfn_execution

    real_stop = sfn_execution.Execution.stop
    real_reflect = sfn_execution.BaseExecutionWorkerCommunication._reflect_execution_status

    def stop(execution: Any, stop_date: Any, error: Any, cause: Any) -> None:
        execution.stopped_by_request = True
        real_stop(execution, stop_date, error, cause)

    def reflect(communication: Any) -> None:
        real_reflect(communication)
        if getattr(communication.execution, "stopped_by_request", False):
            communication.execution.exec_status = ExecutionStatus.ABORTED

    st.enter_context(mock.patch.object(sfn_execution.Execution, "stop", stop))
    st.enter_context(
        mock.patch.object(
            sfn_execution.BaseExecutionWorkerCommunication, "_reflect_execution_status", reflect
        )
    )

    # moto parses the state machine's definition with its ANTLR parser at CreateStateMachine and
    # for every execution (a third of a second to seconds each). The parse tree depends only on the
    # text, so it is kept for the whole process (every local stack of a test run has the same
    # definition); the evaluation components are still built fresh from it for every execution.
    from moto.stepfunctions.parser.asl.parse import asl_parser
    from moto.stepfunctions.parser.asl.parse.preprocessor import Preprocessor

    real_parse = asl_parser.AmazonStateLanguageParser.parse

    def parse(definition: str) -> tuple[Any, Any]:
        tree = _ASL_TREES.get(definition)
        if tree is None:
            _, tree = real_parse(definition)
            _ASL_TREES[definition] = tree  # two threads may both parse a new text: same tree
        return Preprocessor().visit(tree), tree

    st.enter_context(mock.patch.object(asl_parser.AmazonStateLanguageParser, "parse", staticmethod(parse)))

    _install_dynamodb_speedups(st)

    # Two more per-state costs of moto's interpreter that depend on nothing that changes: it
    # builds a new boto3 Lambda client for every Task (milliseconds each) and parses every
    # JSONPath again at each evaluation (a parser built per call). Kept, they cost a sixth less
    # CPU per run, which counts when many runs go at once (tests/integration/test_concurrency.py).
    from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils
    from moto.stepfunctions.parser.asl.utils import json_path

    real_client_for = lambda_eval_utils.boto_client_for
    lambda_clients: dict[tuple[str, str], Any] = {}

    def client_for(region: str, service: str, state_credentials: Any = None) -> Any:
        key = (region, service)  # moto signs every such client with the same fixed keys
        if key not in lambda_clients:
            made = real_client_for(region=region, service=service)
            if harness.enforcer is not None and harness.state_machine_role is not None:
                # the state machine's Lambda tasks are checked against its own role (its
                # lambda:InvokeFunction grants), as Step Functions calls Lambda with that role
                harness.enforcer.watch(made.meta.events, harness.state_machine_role, "states")
            lambda_clients[key] = made
        return lambda_clients[key]

    st.enter_context(mock.patch.object(lambda_eval_utils, "boto_client_for", client_for))
    # the state machine's SNS tasks (arn:aws:states:::sns:publish) too: checked against its role
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import state_task_service_sns

    st.enter_context(mock.patch.object(state_task_service_sns, "boto_client_for", client_for))
    st.enter_context(
        mock.patch.object(json_path, "parse", functools.lru_cache(maxsize=1024)(json_path.parse))
    )

    # Lambda runs each function's real handler (``functions/<name>/app.py``) and reports an
    # unhandled error with ``X-Amz-Function-Error`` and ``errorType``/``errorMessage``; moto's
    # Docker-less backend only echoes. The handler runs in-process, without the request lock.
    def invoke(
        backend: Any,
        function_name: str,
        qualifier: Any,
        body: Any,
        headers: Any,
        response_headers: dict[str, str],
    ) -> bytes:
        name = function_name.split(":function:")[-1].split(":")[0]
        backend.get_function(name, None)  # an unknown function: ResourceNotFoundException, as from AWS
        if (headers or {}).get("X-Amz-Invocation-Type") == "DryRun":
            # Lambda API reference, Invoke: "DryRun – Validate parameter values and verify that the
            # user or role has permission to invoke the function": 204, the function is not run.
            return b""
        event = json.loads(body) if body else {}
        with requests.released():
            ok, payload = harness.invoke(name, event)
        if not ok:
            response_headers["x-amz-function-error"] = "Unhandled"
        return json.dumps(payload).encode()

    st.enter_context(mock.patch.object(LambdaSimpleBackend, "invoke", invoke))

    # EventBridge delivers a matching event to a rule's Lambda targets, asynchronously (moto
    # delivers to SQS and logs targets only), and skips disabled rules; S3's events spell the
    # object's ``etag`` as AWS spells it.
    original_send = Rule.send_to_targets

    def send_to_targets(rule: Any, event: dict[str, Any], transform_input: bool = True) -> None:
        if rule.state != "ENABLED":  # EventBridge delivers nothing for a disabled rule
            return
        lambda_targets = [t for t in rule.targets if ":lambda:" in t["Arn"]]
        others = [t for t in rule.targets if ":lambda:" not in t["Arn"]]
        if others:
            saved = rule.targets
            rule.targets = others
            try:
                original_send(rule, event, transform_input)  # type: ignore[arg-type]
            finally:
                rule.targets = saved
        if lambda_targets and rule.event_pattern.matches_event(event):
            aws_event = _as_aws_event(event)
            for t in lambda_targets:
                harness._enqueue(rule.name, t["Arn"].split(":function:")[-1], aws_event)

    st.enter_context(mock.patch.object(Rule, "send_to_targets", send_to_targets))

    # A Wait state waits its time on the Step Functions clock: here the simulated clock, so a
    # 36-hour run takes no wall time (moto sleeps on the wall clock).
    def wait_interval(wf: Any, env: Any, wait_seconds: int) -> None:
        if wait_seconds > 0 and env.is_running():
            harness.clock.sleep(wait_seconds)
            harness.fsx.advance()  # FSx tasks whose time has come do their work

    st.enter_context(mock.patch.object(WaitFunction, "_wait_interval", wait_interval))
    # Retry intervals (IntervalSeconds, BackoffRate) pass on the simulated clock too.
    st.enter_context(mock.patch.object(retrier_decl, "time", SimpleNamespace(sleep=harness.clock.sleep)))

    # SSM Run Command runs the command on the instance (here ``cryopilot-agent`` in-process, with
    # the simulated head node's cryoSPARC stand-in), writes its output to the S3 bucket given and
    # refuses an instance it does not manage (``InvalidInstanceId``); moto records the command only.
    original_send_command = SimpleSystemManagerBackend.send_command

    def send_command(backend: Any, **kwargs: Any) -> Any:
        from moto.ssm.exceptions import SSMException

        # A head node is lost between commands, never during one. The head-node lock is
        # taken before the request lock, never after, and the agent runs without the latter.
        with requests.released(), harness._ssm_lock:
            with requests:
                missing = [i for i in kwargs.get("instance_ids") or [] if i not in harness.head_nodes]
                if missing:
                    raise SSMException(
                        "InvalidInstanceId", f"Instances {missing} not in a valid state for account"
                    )
                command = original_send_command(backend, **kwargs)
            for inv in command.invocations:
                harness._run_on_head_node(command, inv)
        return command

    st.enter_context(mock.patch.object(SimpleSystemManagerBackend, "send_command", send_command))

    # S3 answers a request naming a version id it could not have issued with 400 InvalidArgument,
    # "Invalid version id specified" (a HeadObject: a bare 400), and a well-formed id of no
    # version with 404 (S3 API reference, GetObject and HeadObject errors; ``null`` is the id of
    # an object stored while versioning was off). moto answers 404 to both. The ids moto issues
    # are UUIDs, so an id of another form is one this S3 could not have issued.
    from moto.s3.exceptions import InvalidVersion
    from moto.s3.models import S3Backend

    original_get_object = S3Backend.get_object

    def get_object(
        backend: Any, bucket_name: str, key_name: str, version_id: Any = None, *a: Any, **kw: Any
    ) -> Any:
        if version_id is not None and not _issued_version_id(str(version_id)):
            raise InvalidVersion(str(version_id))
        return original_get_object(backend, bucket_name, key_name, version_id, *a, **kw)

    st.enter_context(mock.patch.object(S3Backend, "get_object", get_object))

    # SNS Subscribe for an address already subscribed answers that subscription's ARN; given
    # attributes that differ from the subscription's, it refuses: "InvalidParameter: Invalid
    # parameter: Attributes Reason: Subscription already exists with different attributes" (AWS's
    # answer, quoted in localstack/localstack#8816; attributes not given are not compared).
    # moto overwrites the subscription's attributes instead.
    real_subscribe = SNSResponse.subscribe

    def subscribe(response: Any) -> Any:
        from moto.sns.exceptions import SNSInvalidParameter

        given = response._get_attributes() or {}
        existing = response.backend._find_subscription(
            response._get_param("TopicArn"), response._get_param("Endpoint"), response._get_param("Protocol")
        )
        if existing is not None and any(
            not _same_attribute(name, value, existing.attributes.get(name)) for name, value in given.items()
        ):
            raise SNSInvalidParameter(
                "Invalid parameter: Attributes Reason: Subscription already exists with different attributes"
            )
        return real_subscribe(response)

    st.enter_context(mock.patch.object(SNSResponse, "subscribe", subscribe))

    # Service Quotas GetServiceQuota for EC2's vCPU quotas. moto serves only the ``vpc`` service's
    # default quotas and answers NoSuchResourceException for any other service. This answers the
    # account's value from ``harness.ec2_quotas`` in the shape of the API's ``Quota`` (Service Quotas
    # API reference, GetServiceQuota and the ServiceQuota data type: ServiceCode, ServiceName,
    # QuotaArn, QuotaCode, QuotaName, Value, Unit, Adjustable, GlobalQuota); a code the account
    # does not have gets NoSuchResourceException, as from AWS.
    from moto.servicequotas.exceptions import NoSuchResource
    from moto.servicequotas.models import ServiceQuotasBackend

    real_get_quota = ServiceQuotasBackend.get_service_quota

    def get_service_quota(backend: Any, service_code: str, quota_code: str) -> dict[str, Any]:
        if service_code != "ec2":
            return dict(real_get_quota(backend, service_code, quota_code))
        if quota_code not in harness.ec2_quotas:
            raise NoSuchResource
        name, value = harness.ec2_quotas[quota_code]
        return {
            "ServiceCode": "ec2",
            "ServiceName": "Amazon Elastic Compute Cloud (Amazon EC2)",
            "QuotaArn": f"arn:aws:servicequotas:{backend.region_name}:{backend.account_id}:ec2/{quota_code}",
            "QuotaCode": quota_code,
            "QuotaName": name,
            "Value": value,
            "Unit": "None",
            "Adjustable": True,
            "GlobalQuota": False,
        }

    st.enter_context(mock.patch.object(ServiceQuotasBackend, "get_service_quota", get_service_quota))


def install_fsx_tasks(harness: LocalCloud, st: ExitStack) -> None:
    """FSx data repository tasks (CreateDataRepositoryTask, DescribeDataRepositoryTasks), which
    moto does not serve, answered by the harness's FSx stand-in (cryopilot_sim.fsx_standin)."""
    from moto.core.exceptions import JsonRESTError
    from moto.fsx.responses import FSxResponse

    from cryopilot_sim.fsx_standin import FsxError

    def answer(call: Any) -> Any:
        def method(response: Any) -> str:
            try:
                return json.dumps(call(json.loads(response.body or "{}")))
            except FsxError as exc:
                raise JsonRESTError(exc.code, str(exc)) from None

        return method

    for name, call in (
        ("create_data_repository_task", harness.fsx.create_task),
        ("describe_data_repository_tasks", harness.fsx.describe_tasks),
    ):
        st.enter_context(mock.patch.object(FSxResponse, name, answer(call), create=True))


def _install_dynamodb_speedups(st: ExitStack) -> None:
    """Two costs of moto's DynamoDB that are moto's own, with the same answers made faster.

    Every stage poll reads and writes the run record, so moto's DynamoDB was a quarter of the
    suite's CPU. Of that, half was serializing AttributeValues and a fifth projecting items:

    * A ``ProjectionExpression`` of N attributes converted the whole item to plain values N times
      (``Item.project`` calls ``to_regular_json`` once per path). When every path starts at a
      different top-level attribute (no list index), the paths read disjoint parts of the item, so
      one conversion serves them all; any other projection goes through moto's own code.
    * The response serializer asks its attribute picker for each of an ``AttributeValue``'s ten
      members (``S``, ``N``, ``M``, ...) though a value holds one. For a value that is a plain dict
      of member names (how moto's items are), only the members it has are serialized, each as
      moto's serializer does; anything else goes through moto's own code.

    ``tests/unit/test_seams.py`` compares both with moto's own results.
    """
    from moto.core.serialize import ResponseSerializer
    from moto.dynamodb.models import dynamo_type

    real_project = dynamo_type.Item.project

    def project(item: Any, projection_expressions: list[list[str]]) -> Any:
        firsts = [expr[0] for expr in projection_expressions if expr]
        if len(firsts) != len(projection_expressions) or len(set(firsts)) != len(firsts):
            return real_project(item, projection_expressions)
        if any("[" in first for first in firsts):
            return real_project(item, projection_expressions)
        regular = item.to_regular_json()
        result: dict[str, Any] = {}
        for expr in projection_expressions:  # the helpers moto's own project uses
            dynamo_type.merge_dicts(result, dynamo_type.find_nested_key(expr, regular))
        return dynamo_type.Item(
            hash_key=item.hash_key,
            range_key=item.range_key,
            attrs=dynamo_type.serializer.serialize(result)["M"],
        )

    st.enter_context(mock.patch.object(dynamo_type.Item, "project", project))

    real_structure = ResponseSerializer._serialize_type_structure

    def serialize_structure(serializer: Any, serialized: Any, value: Any, shape: Any, key: str) -> None:
        if (
            shape.name != "AttributeValue"
            or type(value) is not dict
            or not value.keys() <= shape.members.keys()
        ):
            return real_structure(serializer, serialized, value, shape, key)
        wrapper: Any = serializer.MAP_TYPE() if key else serialized
        for member_key, member_shape in shape.members.items():
            member_value = value.get(member_key)
            if member_value is not None:
                member_shape.parent = shape
                serializer._serialize(wrapper, member_value, member_shape, member_key)
        if key:
            serializer._default_serialize(serialized, wrapper, shape, key)
        return None

    st.enter_context(mock.patch.object(ResponseSerializer, "_serialize_type_structure", serialize_structure))


def _issued_version_id(version_id: str) -> bool:
    """Whether moto's S3 could have issued ``version_id``: ``null`` or a UUID."""
    if version_id == "null":
        return True
    try:
        return str(uuid.UUID(version_id)) == version_id
    except ValueError:
        return False


def _same_attribute(name: str, given: Any, current: Any) -> bool:
    if current is None:
        return False
    if name == "FilterPolicy":
        return bool(json.loads(given) == json.loads(current))
    return str(given).lower() == str(current).lower()


def _as_aws_event(event: dict[str, Any]) -> dict[str, Any]:
    """moto's S3→EventBridge event, spelled as AWS spells it (``etag``, not ``eTag``)."""
    out = json.loads(json.dumps(event, default=str))
    obj = out.get("detail", {}).get("object") if isinstance(out.get("detail"), dict) else None
    if isinstance(obj, dict) and "eTag" in obj:
        obj["etag"] = obj.pop("eTag")
    return out
