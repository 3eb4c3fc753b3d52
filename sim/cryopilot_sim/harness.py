"""The offline harness: the whole stack of ``template.yaml`` running in one process.

* AWS is moto (``mock_aws``) with its real ASL interpreter executing ``statemachines/*.asl.json``.
* Every resource is created from ``template.yaml`` (names, environment, event patterns,
  ``DefinitionSubstitutions``), never hand-copied.
* Seams (``cryopilot_sim.seams``), each the smallest patch of moto that makes it behave like AWS here:
  - Lambda: moto's Docker-less backend runs the real handler of ``functions/<name>/app.py``
    in-process (errors reported as Lambda reports them: ``errorType``/``errorMessage``);
  - EventBridge: rules whose target is a Lambda deliver to it (moto delivers to SQS/logs only),
    asynchronously as EventBridge does, with S3's ``etag`` spelled as AWS spells it;
  - Wait states and Retry intervals sleep on the simulated clock instead of the wall clock;
  - SSM Run Command runs ``cryopilot-agent`` in-process against the simulated head node's
    cryoSPARC stand-in, and an instance that is not (or no longer) a head node is refused with
    ``InvalidInstanceId``, as SSM refuses it.
* IAM is enforced (``cryopilot_sim.iam``): every role is created with the policies SAM generates
  (``template.yaml`` translated by the pinned aws-sam-translator), each function's calls carry its
  own role's credentials and are checked against them, and the actions each role used are recorded.
* The ParallelCluster API is the local stand-in (HTTP, SigV4), cryoSPARC is a stand-in per head
  node (HTTP, spoken to by the real cryosparc-tools client).

The moto internals patched (in ``cryopilot_sim.seams``) are those of moto 5.2.5 (pinned in
requirements/dev.txt).
"""

from __future__ import annotations

import functools
import importlib.util
import io
import json
import os
import queue
import shlex
import tempfile
import threading
import time
import traceback
import zipfile
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any
from unittest import mock

import boto3
from botocore.exceptions import ClientError

from cryopilot_sim.clock import Clock, VirtualClock
from cryopilot_sim.seams import RequestLock
from cryopilot_sim.template import ROOT, Resolver, function_environment, load_template, resources_of_type

REGION = "us-east-1"
ACCOUNT_ID = "123456789012"
SSM_INLINE_LIMIT = 24_000
LICENCE_SECRET_ARN = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT_ID}:secret:cryosparc-licence"
#: The local account's network: the VPC and subnets the stack's parameters name, created in moto
#: with these ids (:meth:`LocalCloud._create_account`). Each private subnet routes 0.0.0.0/0
#: through a NAT gateway in a public subnet of its zone, as the README's deployment section asks.
LOCAL_VPC = "vpc-0123456789abcdef0"
LOCAL_SUBNETS = {"subnet-0aaaaaaaaaaaaaaa1": "us-east-1a", "subnet-0bbbbbbbbbbbbbbb2": "us-east-1b"}
#: The local account's EC2 vCPU quotas (Service Quotas, service code ``ec2``): code -> (name, vCPUs).
#: A new account often has 0 for P instances; the local one has room for the stack's largest
#: cluster (4 x p4d.24xlarge and 8 x p5.4xlarge: 512 P vCPUs; 4 x g6e.12xlarge: 192) and more.
LOCAL_EC2_QUOTAS = {
    "L-417A185B": ("Running On-Demand P instances", 1152.0),
    "L-DB2E81BA": ("Running On-Demand G and VT instances", 768.0),
    "L-1216C47A": ("Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances", 640.0),
    "L-7212CCBC": ("All P Spot Instance Requests", 0.0),
    "L-3819A6DF": ("All G and VT Spot Instance Requests", 0.0),
    "L-34B43A08": ("All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance Requests", 0.0),
}
FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
    "POWERTOOLS_TRACE_DISABLED": "true",
    "POWERTOOLS_METRICS_NAMESPACE": "cryopilot",
    "POWERTOOLS_DEV": "false",
}


# --------------------------------------------------------------------------------------- model


@dataclass
class FakeContext:
    function_name: str
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = ""
    aws_request_id: str = ""
    log_group_name: str = ""
    log_stream_name: str = "local"

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


@dataclass
class LocalFunction:
    logical_id: str
    name: str
    arn: str
    code_dir: Path
    handler: str = "app.lambda_handler"
    module: ModuleType | None = None
    invocations: int = 0


@dataclass
class HeadNode:
    cluster_name: str
    instance_id: str
    cryosparc: Any
    env: dict[str, str]
    #: The agent's cryoSPARC client, built by its first command and reused by the next ones. On a
    #: head node each command is a new process with a new client; here they share one interpreter,
    #: and building the client (reading the API's schema) was a large share of a simulated run's CPU.
    client: Any = None


@dataclass
class Delivery:
    rule: str
    function: str
    event: dict[str, Any]
    result: Any = None
    error: str | None = None


@dataclass
class LocalCloud:
    """The stack, running locally. Use as a context manager."""

    clock: Clock = field(default_factory=VirtualClock)
    profile: str = "cgrp"
    parameters: dict[str, Any] = field(default_factory=dict)
    stack_name: str = "cryopilot-local"
    pcluster_options: dict[str, Any] = field(default_factory=dict)
    cryosparc_options: dict[str, Any] = field(default_factory=dict)
    #: The cryoSPARC stand-in's jobs write their bytes onto the cluster's file systems (the FSx size
    #: and /shared size of the configuration the controller sent) and fail when one is full. Only
    #: meaningful when the dataset's listing has the profile's size (cryopilot_sim.datasets).
    model_bytes: bool = False
    #: options of the FSx stand-in (cryopilot_sim.fsx_standin.FsxStandIn): ``task_seconds``,
    #: ``fail_next``
    fsx_options: dict[str, Any] = field(default_factory=dict)
    #: IAM enforcement (cryopilot_sim.iam): ``enforce`` (the test suite: the translated template
    #: is required), ``auto`` (enforced when the SAM translator is installed: the demo) or ``off``.
    iam: str = field(default_factory=lambda: os.environ.get("CRYOPILOT_IAM", "auto"))

    def __post_init__(self) -> None:
        self.template = load_template()
        self.functions: dict[str, LocalFunction] = {}
        self.head_nodes: dict[str, HeadNode] = {}
        self.deliveries: list[Delivery] = []
        #: Each custom resource's answer to its Create, by logical id.
        self.custom_resources: dict[str, dict[str, Any]] = {}
        self.cryosparc_setup: list[Callable[[Any], None]] = []
        #: SSM faults: [kind, agent verb or None (any), remaining count]; kinds ``timeout`` (the
        #: invocation ends TimedOut, the agent never runs) and ``undeliverable``.
        self.ssm_faults: list[list[Any]] = []
        self._stack = ExitStack()
        self._clients: dict[str, Any] = {}
        self._events: queue.Queue[tuple[str, str, dict[str, Any]] | None] = queue.Queue()
        self._pending = 0
        self._pending_lock = threading.Condition()
        self._lock = threading.Lock()
        self._ssm_lock = threading.RLock()
        self._invoke_lock = threading.RLock()
        #: Held by every request moto serves (see :class:`RequestLock`).
        self.requests = RequestLock()
        self.resolver: Resolver | None = None
        #: Each cluster's compute nodes (``cryopilot_sim.slurm.SlurmNodes``), kept after deletion:
        #: the simulated EC2 bill of its GPU nodes.
        self.compute_nodes: dict[str, Any] = {}
        #: EC2 launch errors of GPU types (:meth:`inject_capacity`): (instance type, code, until).
        self.capacity_faults: list[tuple[str, str, float]] = []
        #: seconds after a Spot node is ready that EC2 interrupts it, one per Spot node to come
        self.spot_interruptions: list[float] = []
        #: Each cluster's cryoSPARC stand-in, kept after deletion (its jobs' timestamps).
        self.cryosparc_by_cluster: dict[str, Any] = {}
        #: Each cluster's file systems (``cryopilot_sim.filesystems.Volumes``) with ``model_bytes``.
        self.volumes_by_cluster: dict[str, Any] = {}
        #: Each live cluster's FSx for Lustre file system id, and its /shared EBS volume (id and
        #: DeletionPolicy).
        self.file_systems: dict[str, str] = {}
        self.shared_volumes: dict[str, tuple[str, str]] = {}
        #: The account's EC2 vCPU quotas by code (Service Quotas seam); a test may lower one.
        self.ec2_quotas: dict[str, tuple[str, float]] = dict(LOCAL_EC2_QUOTAS)
        #: Each local subnet's route table and NAT gateway (:meth:`_create_account`).
        self.route_tables: dict[str, str] = {}
        self.nat_gateways: dict[str, str] = {}
        #: The IAM enforcer (None when not enforced), each function's role session by function
        #: name, and the state machine's role (logical id).
        self.enforcer: Any = None
        self.sessions: dict[str, Any] = {}
        self.state_machine_role: str | None = None
        #: every head node's cluster, by instance id (kept after the cluster is gone)
        self.instance_clusters: dict[str, str] = {}
        #: each role session's access key id -> (role logical id, session name)
        self.role_keys: dict[str, tuple[str, str]] = {}
        self._current = threading.local()

    # ---------------------------------------------------------------- lifecycle
    def __enter__(self) -> LocalCloud:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        from cryopilot.adapters import aws
        from cryopilot.adapters.settings import get_settings
        from cryopilot.core import clock
        from moto import mock_aws

        from cryopilot_sim.pcluster_standin import PClusterStandIn

        st = self._stack
        st.enter_context(mock.patch.dict(os.environ, FAKE_ENV))
        st.enter_context(
            mock_aws(
                config={"stepfunctions": {"execute_state_machine": True}, "lambda": {"use_docker": False}}
            )
        )
        from cryopilot_sim.fsx_standin import FsxStandIn

        self.fsx = FsxStandIn(
            now=self.clock.now,
            put_object=self._put_exported_object,
            region=REGION,
            account_id=ACCOUNT_ID,
            **self.fsx_options,
        )
        self._fsx_mounts = st.enter_context(tempfile.TemporaryDirectory(prefix="fsx-"))
        self._install_seams()
        self._create_account()
        self._start_iam()
        if self.enforcer is not None:
            # from here on (the custom resources' Create included) a function's clients are its role's
            aws.use_sessions(lambda: getattr(self._current, "session", None))
            st.callback(aws.use_sessions, None)
            st.callback(self.enforcer.write_used)
        options = {"script_exists": self._s3_object_exists, **self.pcluster_options}
        self.pcluster = PClusterStandIn(self.clock, **options)
        endpoint = self.pcluster.start()
        st.callback(self.pcluster.stop)
        self.pcluster.on_head_node = self._attach_head_node
        self.pcluster.on_deleted = self._detach_head_node
        self.pcluster.on_delete_requested = self._shut_down_compute
        self.pcluster.compute_instances = self._cluster_instances
        if self.enforcer is not None:
            self.pcluster.authorize = self._authorize_api
        params = {
            "ParallelClusterApiUrl": endpoint,
            "NotificationEmail": "structures@example.org",
            "HeadNodeSubnetId": "subnet-0aaaaaaaaaaaaaaa1",
            "ComputeSubnetIds": "subnet-0aaaaaaaaaaaaaaa1,subnet-0bbbbbbbbbbbbbbb2",
            "VpcId": "vpc-0123456789abcdef0",
            "CryosparcLicenceSecretArn": LICENCE_SECRET_ARN,
            # Tests that drop many datasets at once check each one's own handling: nothing waits
            # for a slot unless a test (or the demo) sets a lower limit.
            "MaxConcurrentRuns": 100,
            **self.parameters,
        }
        self.resolver = Resolver(
            self.template, params, region=REGION, account_id=ACCOUNT_ID, stack_name=self.stack_name
        )
        self._create_resources()
        self._s3 = self.client("s3")
        env = {k: str(v) for k, v in self.resolver.resolve(function_environment(self.template)).items()}
        st.enter_context(mock.patch.dict(os.environ, env))
        get_settings.cache_clear()
        aws.reset()
        clock.set_clock(self.clock.now)
        st.callback(clock.set_clock, None)
        st.callback(get_settings.cache_clear)
        st.callback(aws.reset)
        worker = threading.Thread(target=self._deliver_events, name="eventbridge", daemon=True)
        worker.start()
        st.callback(self._stop_worker, worker)
        self._unwatched = threading.Event()
        self._watcher = threading.Thread(target=self._watch_executions, name="sfn-events", daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        if getattr(self, "_watcher", None) is not None:
            self._unwatched.set()  # the harness's own stops are not the user's: no events for them
            self._watcher.join(timeout=10)
        self._stop_running_executions()
        for node in list(self.head_nodes.values()):
            node.cryosparc.stop()
        self.head_nodes.clear()
        self._stack.close()

    def _stop_running_executions(self) -> None:
        """Stop what still runs, so no interpreter thread outlives the mock (and could then try a
        real endpoint)."""
        if self.resolver is None or "RunStateMachine" not in self.resolver.refs:
            return
        sfn = self.client("stepfunctions")
        running = [e["executionArn"] for e in self.executions() if e["status"] == "RUNNING"]
        deadline = time.monotonic() + 10
        while running and time.monotonic() < deadline:
            for arn in running:
                try:
                    sfn.stop_execution(
                        executionArn=arn, error="HarnessStopped", cause="the local stack is shutting down"
                    )
                except Exception:  # noqa: S112 - moto cannot stop an execution whose worker has not started yet
                    continue
            time.sleep(0.05)
            running = [a for a in running if sfn.describe_execution(executionArn=a)["status"] == "RUNNING"]

    def _stop_worker(self, worker: threading.Thread) -> None:
        self._events.put(None)
        worker.join(timeout=10)

    # ---------------------------------------------------------------- the account
    def _create_account(self) -> None:
        """What a deployment finds in its account before the stack: the network the parameters
        name (moto makes random ids; these are made with the parameters' ids) and the cryoSPARC
        licence secret. Quotas: :attr:`ec2_quotas`; instance-type offerings: moto's own, per zone."""
        from moto.ec2.models import subnets, vpcs

        ec2 = self.client("ec2")
        with mock.patch.object(vpcs, "random_vpc_id", return_value=LOCAL_VPC):
            ec2.create_vpc(CidrBlock="10.0.0.0/16")
        for i, (subnet_id, zone) in enumerate(LOCAL_SUBNETS.items()):
            public = ec2.create_subnet(
                VpcId=LOCAL_VPC, CidrBlock=f"10.0.{100 + i}.0/24", AvailabilityZone=zone
            )
            with mock.patch.object(subnets, "random_subnet_id", return_value=subnet_id):
                ec2.create_subnet(VpcId=LOCAL_VPC, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=zone)
            nat = ec2.create_nat_gateway(SubnetId=public["Subnet"]["SubnetId"])["NatGateway"]["NatGatewayId"]
            table = ec2.create_route_table(VpcId=LOCAL_VPC)["RouteTable"]["RouteTableId"]
            ec2.create_route(RouteTableId=table, DestinationCidrBlock="0.0.0.0/0", NatGatewayId=nat)
            ec2.associate_route_table(RouteTableId=table, SubnetId=subnet_id)
            self.route_tables[subnet_id] = table
            self.nat_gateways[subnet_id] = nat
        name = LICENCE_SECRET_ARN.rsplit(":secret:", 1)[1]
        self.client("secretsmanager").create_secret(Name=name, SecretString="local-licence-id")

    def remove_egress(self, subnet_id: str, *, endpoints: bool = False) -> None:
        """The subnet loses its NAT route (0.0.0.0/0); with ``endpoints``, it gets instead every VPC
        endpoint ParallelCluster documents for a subnet without internet access."""
        ec2 = self.client("ec2")
        table = self.route_tables[subnet_id]
        ec2.delete_route(RouteTableId=table, DestinationCidrBlock="0.0.0.0/0")
        if not endpoints:
            return
        for service in ("s3", "dynamodb"):
            ec2.create_vpc_endpoint(
                VpcId=LOCAL_VPC,
                ServiceName=f"com.amazonaws.{REGION}.{service}",
                VpcEndpointType="Gateway",
                RouteTableIds=[table],
            )
        for service in (
            "cloudformation",
            "ec2",
            "ec2messages",
            "logs",
            "secretsmanager",
            "ssm",
            "ssmmessages",
        ):
            ec2.create_vpc_endpoint(
                VpcId=LOCAL_VPC,
                ServiceName=f"com.amazonaws.{REGION}.{service}",
                VpcEndpointType="Interface",
                SubnetIds=[subnet_id],
            )

    def restore_egress(self, subnet_id: str) -> None:
        """Undo :meth:`remove_egress`'s route: the NAT route back. The endpoints stay (moto 5.2.5
        cannot delete a gateway endpoint: it looks for a route to the prefix list it never added)."""
        ec2 = self.client("ec2")
        table = self.route_tables[subnet_id]
        routes = ec2.describe_route_tables(RouteTableIds=[table])["RouteTables"][0]["Routes"]
        if not any(r.get("DestinationCidrBlock") == "0.0.0.0/0" for r in routes):
            ec2.create_route(
                RouteTableId=table,
                DestinationCidrBlock="0.0.0.0/0",
                NatGatewayId=self.nat_gateways[subnet_id],
            )

    # ---------------------------------------------------------------- names
    def ref(self, logical_id: str) -> Any:
        assert self.resolver is not None
        return self.resolver.refs[logical_id]

    def client(self, service: str) -> Any:
        """A boto3 client of the local stack, with the account's own keys (one per service)."""
        made = self._clients.get(service)
        if made is None:
            made = self._clients[service] = _account_client(service)
        return made

    @property
    def input_bucket(self) -> str:
        return str(self.ref("InputBucket"))

    @property
    def results_bucket(self) -> str:
        return str(self.ref("ResultsBucket"))

    @property
    def state_machine_arn(self) -> str:
        return str(self.ref("RunStateMachine"))

    @property
    def topic_arn(self) -> str:
        return str(self.ref("NotificationTopic"))

    # ---------------------------------------------------------------- resources from the template
    def _create_resources(self) -> None:
        r = self.resolver
        assert r is not None
        tpl = self.template
        s3 = self.client("s3")
        for logical, res in resources_of_type(tpl, "AWS::S3::Bucket").items():
            name = f"{self.stack_name}-{logical.lower()}"
            props = r.resolve(res.get("Properties", {}))
            s3.create_bucket(Bucket=name)
            if props.get("VersioningConfiguration", {}).get("Status") == "Enabled":
                s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
            if "BucketEncryption" in props:
                s3.put_bucket_encryption(
                    Bucket=name,
                    ServerSideEncryptionConfiguration={
                        "Rules": [
                            {
                                ("Apply" + k if k == "ServerSideEncryptionByDefault" else k): v
                                for k, v in rule.items()
                            }
                            for rule in props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
                        ]
                    },
                )
            if "PublicAccessBlockConfiguration" in props:
                s3.put_public_access_block(
                    Bucket=name, PublicAccessBlockConfiguration=props["PublicAccessBlockConfiguration"]
                )
            if (
                props.get("NotificationConfiguration", {})
                .get("EventBridgeConfiguration", {})
                .get("EventBridgeEnabled")
            ):
                s3.put_bucket_notification_configuration(
                    Bucket=name, NotificationConfiguration={"EventBridgeConfiguration": {}}
                )
            r.refs[logical] = name
            r.attrs[(logical, "Arn")] = f"arn:aws:s3:::{name}"
        for logical, res in resources_of_type(tpl, "AWS::S3::BucketPolicy").items():
            props = r.resolve(res["Properties"])
            # moto enforces bucket policies but ignores their conditions, so a TLS-only Deny
            # would deny everything: apply only the unconditional statements (the template
            # tests check the conditional ones).
            doc = dict(props["PolicyDocument"])
            doc["Statement"] = [st for st in doc["Statement"] if "Condition" not in st]
            if doc["Statement"]:
                s3.put_bucket_policy(Bucket=props["Bucket"], Policy=json.dumps(doc))
            r.refs[logical] = props["Bucket"]

        ddb = self.client("dynamodb")
        for logical, res in resources_of_type(tpl, "AWS::DynamoDB::Table").items():
            props = r.resolve(res["Properties"])
            name = f"{self.stack_name}-{logical}"
            kwargs: dict[str, Any] = {
                "TableName": name,
                "AttributeDefinitions": props["AttributeDefinitions"],
                "KeySchema": props["KeySchema"],
                "BillingMode": props.get("BillingMode", "PAY_PER_REQUEST"),
            }
            if props.get("GlobalSecondaryIndexes"):
                kwargs["GlobalSecondaryIndexes"] = props["GlobalSecondaryIndexes"]
            ddb.create_table(**kwargs)
            if props.get("PointInTimeRecoverySpecification", {}).get("PointInTimeRecoveryEnabled"):
                ddb.update_continuous_backups(
                    TableName=name, PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True}
                )
            r.refs[logical] = name
            r.attrs[(logical, "Arn")] = f"arn:aws:dynamodb:{REGION}:{ACCOUNT_ID}:table/{name}"

        sns = self.client("sns")
        for logical in resources_of_type(tpl, "AWS::SNS::Topic"):
            name = f"{self.stack_name}-{logical}"
            arn = sns.create_topic(Name=name)["TopicArn"]
            r.refs[logical] = arn
            r.attrs[(logical, "TopicName")] = name
        for res in resources_of_type(tpl, "AWS::SNS::Subscription").values():
            if "Condition" in res and not r.condition(res["Condition"]):
                continue
            props = r.resolve(res["Properties"])
            sns.subscribe(TopicArn=props["TopicArn"], Protocol=props["Protocol"], Endpoint=props["Endpoint"])

        logs = self.client("logs")
        for logical, res in resources_of_type(tpl, "AWS::Logs::LogGroup").items():
            props = r.resolve(res["Properties"])
            logs.create_log_group(logGroupName=props["LogGroupName"])
            r.refs[logical] = props["LogGroupName"]
            r.attrs[(logical, "Arn")] = (
                f"arn:aws:logs:{REGION}:{ACCOUNT_ID}:log-group:{props['LogGroupName']}:*"
            )

        iam = self.client("iam")
        #: each of the template's managed policies' document, by ARN
        self._managed_documents: dict[str, dict[str, Any]] = {}
        for logical, res in resources_of_type(tpl, "AWS::IAM::ManagedPolicy").items():
            props = r.resolve(res["Properties"])
            arn = iam.create_policy(
                PolicyName=f"{self.stack_name}-{logical}",
                Path=props.get("Path", "/"),
                PolicyDocument=json.dumps(props["PolicyDocument"]),
            )["Policy"]["Arn"]
            r.refs[logical] = arn
            self._managed_documents[arn] = props["PolicyDocument"]
        # resources the harness does not create but roles name (a dead-letter queue's ARN)
        for logical in resources_of_type(tpl, "AWS::SQS::Queue"):
            r.attrs.setdefault(
                (logical, "Arn"), f"arn:aws:sqs:{REGION}:{ACCOUNT_ID}:{self.stack_name}-{logical}"
            )

        r.refs["CryopilotLayer"] = f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:layer:{self.stack_name}-layer:1"
        self._create_functions()
        self._create_custom_resources()
        self._create_state_machines()

    # ---------------------------------------------------------------- IAM
    def _start_iam(self) -> None:
        from cryopilot_sim import iam

        if self.iam not in ("enforce", "auto", "off"):
            raise ValueError(f"iam={self.iam!r}: enforce, auto or off")
        if self.iam == "off":
            return
        try:
            self.translated = iam.translated_template()
        except FileNotFoundError:
            if self.iam == "enforce":
                raise
            return
        self.enforcer = iam.Enforcer(REGION, ACCOUNT_ID, self._resource_tags)

    def _resource_tags(self, arn: str) -> dict[str, str]:
        """The tags IAM sees on a resource (``aws:ResourceTag/*``, ``<service>:resourceTag/*``):
        a head node's are its cluster configuration's Tags (ParallelCluster propagates them to the
        instances), a file system's are moto's."""
        if ":instance/" in arn:
            # a terminated instance keeps its tags for a while (EC2 shows it as terminated), so
            # IAM still sees them and SSM answers InvalidInstanceId: the head nodes of deleted
            # clusters are remembered
            cluster = self.instance_clusters.get(arn.rsplit("/", 1)[1])
            record = self.pcluster.history.get(cluster) if cluster else None
            return dict(_config_tags(record["config"])) if record else {}
        if ":snapshot/" in arn or ":volume/" in arn:
            found = self.client("ec2").describe_tags(
                Filters=[{"Name": "resource-id", "Values": [arn.rsplit("/", 1)[1]]}]
            )["Tags"]
            return {t["Key"]: t["Value"] for t in found}
        if ":fsx:" in arn and ":file-system/" in arn:
            try:
                tags = self.client("fsx").list_tags_for_resource(ResourceARN=arn)["Tags"]
            except Exception:
                return {}
            return {t["Key"]: t["Value"] for t in tags}
        return {}

    def _translated_role(self, role_logical: str) -> str:
        """Create a role exactly as the translated template declares it (inline policies, the
        template's managed policies attached), register it with the enforcer and assume it:
        returns its ARN."""
        from cryopilot_sim import iam

        r = self.resolver
        assert r is not None
        props = self.translated["Resources"][role_logical]["Properties"]
        name = f"{self.stack_name}-{role_logical}"[:64]
        client = self.client("iam")
        arn = str(
            client.create_role(
                RoleName=name, AssumeRolePolicyDocument=json.dumps(props["AssumeRolePolicyDocument"])
            )["Role"]["Arn"]
        )
        documents: list[dict[str, Any]] = []
        for policy in props.get("Policies") or []:
            doc = r.resolve(policy["PolicyDocument"])
            # IAM reads a document without Version as 2008-10-17 (no policy variables: ours use
            # none); moto refuses one, so moto gets it with the current Version
            client.put_role_policy(
                RoleName=name,
                PolicyName=policy["PolicyName"],
                PolicyDocument=json.dumps({"Version": "2012-10-17", **doc}),
            )
            documents.append(doc)
        aws_managed = []
        for ref in props.get("ManagedPolicyArns") or []:
            policy_arn = str(r.resolve(ref))
            if policy_arn.startswith("arn:aws:iam::aws:policy/"):
                aws_managed.append(policy_arn)  # AWS's own (moto does not load them): not the template's
                continue
            client.attach_role_policy(RoleName=name, PolicyArn=policy_arn)
            documents.append(self._managed_documents[policy_arn])
        self.enforcer.add(iam.Role(role_logical, name, arn, documents, aws_managed))
        r.refs[role_logical] = name
        r.attrs[(role_logical, "Arn")] = arn
        return arn

    def _role_session(self, role_logical: str, session_name: str) -> Any:
        """A boto3 session with the role's credentials (moto STS AssumeRole), every call checked."""
        assert self.resolver is not None
        creds = self.client("sts").assume_role(
            RoleArn=str(self.resolver.attrs[(role_logical, "Arn")]), RoleSessionName=session_name
        )["Credentials"]
        self.role_keys[creds["AccessKeyId"]] = (role_logical, session_name)
        return _RoleSession(self.enforcer, role_logical, session_name, creds)

    def _authorize_api(self, access_key_id: str, method: str, path: str) -> str | None:
        """API Gateway's IAM authorization of a ParallelCluster API call: a role's caller needs
        ``execute-api:Invoke`` on ``<api id>/<stage>/<METHOD>/<path>`` (the API id read from the
        URL as the template reads it). Callers that are not a stack role (the operator) pass."""
        from cryopilot_sim import iam

        found = self.role_keys.get(access_key_id)
        if found is None:
            return None
        role, session_name = found
        endpoint = str(self.pcluster.endpoint)
        api_id = endpoint.split("/")[2].split(".")[0]
        route = f"{api_id}/{self.pcluster.stage}/{method}/{path.lstrip('/')}"
        need = iam.Need("execute-api:Invoke", f"arn:aws:execute-api:{REGION}:{ACCOUNT_ID}:{route}")
        return str(self.enforcer.refusal(role, session_name, need) or "") or None

    def revoke(self, logical_id: str, action: str) -> None:
        """Cut one action from the role of a function or state machine (by logical id), as if
        ``template.yaml`` had never granted it: the next call that needs it is denied."""
        if self.enforcer is None:
            raise RuntimeError("IAM is not enforced on this local stack")
        props = self.translated["Resources"][logical_id]["Properties"]
        role = (props.get("Role") or props.get("RoleArn"))["Fn::GetAtt"][0]
        self.enforcer.revoke(role, action)

    def _role(self, name: str, service: str) -> str:
        iam = self.client("iam")
        doc = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}],
        }
        return str(
            iam.create_role(RoleName=name[:64], AssumeRolePolicyDocument=json.dumps(doc))["Role"]["Arn"]
        )

    def _create_functions(self) -> None:
        r = self.resolver
        assert r is not None
        lam = self.client("lambda")
        events = self.client("events")
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("app.py", "# the harness runs the real handler in-process\n")
        zipped = buf.getvalue()
        globals_fn = self.template.get("Globals", {}).get("Function", {})
        for logical, res in resources_of_type(self.template, "AWS::Serverless::Function").items():
            props = res["Properties"]
            name = f"{self.stack_name}-{logical}"
            if self.enforcer is not None:
                role_logical = self.translated["Resources"][logical]["Properties"]["Role"]["Fn::GetAtt"][0]
                role = self._translated_role(role_logical)
            else:
                role = self._role(f"{name}-role", "lambda.amazonaws.com")
            arn = lam.create_function(
                FunctionName=name,
                Runtime=props.get("Runtime", globals_fn.get("Runtime")),
                Role=role,
                Handler=props.get("Handler", globals_fn.get("Handler")),
                Code={"ZipFile": zipped},
                Timeout=int(props.get("Timeout", globals_fn.get("Timeout", 3))),
            )["FunctionArn"]
            code_dir = ROOT / props["CodeUri"]
            handler = props.get("Handler", globals_fn.get("Handler"))
            self.functions[name] = LocalFunction(logical, name, arn, code_dir, handler)
            if self.enforcer is not None:
                self.sessions[name] = self._role_session(role_logical, name)
            r.refs[logical] = name
            r.attrs[(logical, "Arn")] = arn
            if props.get("AutoPublishAlias"):
                r.refs[f"{logical}.Version"] = f"{arn}:1"
                r.refs[f"{logical}.Alias"] = f"{arn}:{props['AutoPublishAlias']}"
        # EventBridge rules declared as function events
        for logical, res in resources_of_type(self.template, "AWS::Serverless::Function").items():
            fn = self.functions[r.refs[logical]]
            for ev_name, ev in (res["Properties"].get("Events") or {}).items():
                if ev["Type"] != "EventBridgeRule":
                    continue
                pattern = r.resolve(ev["Properties"]["Pattern"])
                rule = f"{self.stack_name}-{logical}-{ev_name}"
                events.put_rule(Name=rule, EventPattern=json.dumps(pattern), State="ENABLED")
                events.put_targets(Rule=rule, Targets=[{"Id": "Target", "Arn": fn.arn}])

    def _create_custom_resources(self) -> None:
        """Run each custom resource's Create through its real function, as CloudFormation does:
        the function answers on a response URL (here a loopback server) and a FAILED answer
        fails the stack."""
        r = self.resolver
        assert r is not None
        customs = {k: v for k, v in self.template["Resources"].items() if v["Type"].startswith("Custom::")}
        if not customs:
            return
        answers: list[dict[str, Any]] = []
        with _ResponseServer(answers) as url:
            for logical, res in customs.items():
                props = r.resolve(res["Properties"])
                function = props["ServiceToken"].split(":function:")[-1].split(":")[0]
                event = {
                    "RequestType": "Create",
                    "ResponseURL": f"{url}/{logical}",
                    "StackId": f"arn:aws:cloudformation:{REGION}:{ACCOUNT_ID}:stack/{self.stack_name}/local",
                    "RequestId": f"create-{logical}",
                    "LogicalResourceId": logical,
                    "ResourceType": res["Type"],
                    "ResourceProperties": props,
                }
                ok, payload = self.invoke(function, event)
                answer = next((a for a in answers if a.get("LogicalResourceId") == logical), None)
                if not ok or answer is None or answer.get("Status") != "SUCCESS":
                    raise RuntimeError(f"custom resource {logical} failed: {answer or payload}")
                r.refs[logical] = answer["PhysicalResourceId"]
                for key, value in (answer.get("Data") or {}).items():
                    r.attrs[(logical, key)] = value
                self.custom_resources[logical] = answer

    def _s3_object_exists(self, uri: str) -> bool:
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        try:
            self.client("s3").head_object(Bucket=bucket, Key=key)
        except Exception:
            return False
        return True

    def _create_state_machines(self) -> None:
        r = self.resolver
        assert r is not None
        sfn = self.client("stepfunctions")
        for logical, res in resources_of_type(self.template, "AWS::Serverless::StateMachine").items():
            props = res["Properties"]
            definition = (ROOT / props["DefinitionUri"]).read_text(encoding="utf-8")
            subs = {k: str(v) for k, v in r.resolve(props.get("DefinitionSubstitutions", {})).items()}
            definition = substitute_definition(definition, subs)
            name = r.resolve(props["Name"])
            if self.enforcer is not None:
                role_logical = self.translated["Resources"][logical]["Properties"]["RoleArn"]["Fn::GetAtt"][0]
                role = self._translated_role(role_logical)
                self.state_machine_role = role_logical
            else:
                role = self._role(f"{name}-role", "states.amazonaws.com")
            arn = sfn.create_state_machine(
                name=name, definition=definition, roleArn=role, type=props.get("Type", "STANDARD")
            )["stateMachineArn"]
            r.refs[logical] = arn
            r.attrs[(logical, "Name")] = name

    # ---------------------------------------------------------------- seams
    def _install_seams(self) -> None:
        from cryopilot_sim import seams

        seams.install(self, self._stack)
        seams.install_fsx_tasks(self, self._stack)

    # ---------------------------------------------------------------- Lambda
    def _module(self, fn: LocalFunction) -> ModuleType:
        with self._lock:
            if fn.module is None:
                path = fn.code_dir / (fn.handler.rsplit(".", 1)[0].replace(".", "/") + ".py")
                spec = importlib.util.spec_from_file_location(f"cryopilot_fn_{fn.logical_id}", path)
                assert spec
                assert spec.loader
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                fn.module = module
            return fn.module

    def invoke(self, function_name: str, event: Any) -> tuple[bool, Any]:
        """Run a function's real handler in-process: (ok, payload as Lambda would return it).

        One handler runs at a time: on AWS each invocation has a container of its own, here
        they share one interpreter and the package's module state (cached clients, caches), so
        running two at once would race in ways Lambda never does."""
        with self._invoke_lock:
            return self._invoke(function_name, event)

    def _invoke(self, function_name: str, event: Any) -> tuple[bool, Any]:
        fn = self.functions[function_name]
        fn.invocations += 1
        module = self._module(fn)
        ctx = FakeContext(
            function_name=fn.name,
            invoked_function_arn=fn.arn,
            aws_request_id=f"req-{fn.invocations:06d}",
            log_group_name=f"/aws/lambda/{fn.name}",
        )
        # the function's calls carry its own role's credentials (as on Lambda); a nested
        # invocation (one function invoking another) restores the caller's afterwards
        outer = getattr(self._current, "session", None)
        self._current.session = self.sessions.get(fn.name)
        try:
            result = getattr(module, fn.handler.rsplit(".", 1)[1])(event, ctx)
        except Exception as exc:
            return False, {
                "errorType": type(exc).__name__,
                "errorMessage": str(exc),
                "stackTrace": traceback.format_tb(exc.__traceback__)[-3:],
            }
        finally:
            self._current.session = outer
        return True, result

    # ---------------------------------------------------------------- EventBridge → Lambda
    def _enqueue(self, rule: str, function: str, event: dict[str, Any]) -> None:
        with self._pending_lock:
            self._pending += 1
        self._events.put((rule, function, event))

    def _deliver_events(self) -> None:
        while True:
            item = self._events.get()
            if item is None:
                return
            rule, function, event = item
            delivery = Delivery(rule, function, event)
            try:
                ok, payload = self.invoke(function, event)
                delivery.result = payload
                if not ok:
                    delivery.error = payload.get("errorMessage")
            finally:
                self.deliveries.append(delivery)
                with self._pending_lock:
                    self._pending -= 1
                    self._pending_lock.notify_all()

    def _watch_executions(self) -> None:
        """Step Functions sends "Execution Status Change" events to EventBridge; moto does not, so
        this seam does, for every execution that ends (the template's rules pick the statuses they want)."""
        seen: set[str] = set()
        sfn = self.client("stepfunctions")
        while not self._unwatched.is_set():
            try:
                executions = sfn.list_executions(stateMachineArn=self.state_machine_arn)["executions"]
            except Exception:
                return
            for e in executions:
                if e["status"] == "RUNNING" or e["executionArn"] in seen:
                    continue
                seen.add(e["executionArn"])
                detail = {
                    "executionArn": e["executionArn"],
                    "stateMachineArn": self.state_machine_arn,
                    "name": e["name"],
                    "status": e["status"],
                    "startDate": int(e["startDate"].timestamp() * 1000),
                    "stopDate": int(e["stopDate"].timestamp() * 1000) if e.get("stopDate") else None,
                }
                self.put_event(
                    {
                        "source": "aws.states",
                        "detail-type": "Step Functions Execution Status Change",
                        "detail": detail,
                        "resources": [e["executionArn"]],
                    }
                )
            self._unwatched.wait(0.2)

    def run_schedule(self, function_logical_id: str) -> Any:
        """Fire a function's schedule now (EventBridge Scheduler does not run in moto): its answer."""
        name = str(self.ref(function_logical_id))
        event = {
            "version": "0",
            "id": f"schedule-{time.monotonic_ns()}",
            "detail-type": "Scheduled Event",
            "source": "aws.events",
            "account": ACCOUNT_ID,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.clock.now())),
            "region": REGION,
            "resources": [f"arn:aws:events:{REGION}:{ACCOUNT_ID}:rule/{name}-schedule"],
            "detail": {},
        }
        ok, payload = self.invoke(name, event)
        if not ok:
            raise RuntimeError(f"{function_logical_id} failed: {payload}")
        return payload

    def drain_events(self, timeout: float = 30.0) -> None:
        """Wait until every event put on the bus so far has been delivered."""
        with self._pending_lock:
            if not self._pending_lock.wait_for(lambda: self._pending == 0, timeout=timeout):
                raise TimeoutError("EventBridge deliveries still pending")

    def put_event(self, event: dict[str, Any]) -> None:
        """Put an event on the default bus as an AWS service would (e.g. DataSync)."""
        self.client("events").put_events(
            Entries=[
                {
                    "Source": event["source"],
                    "DetailType": event["detail-type"],
                    "Detail": json.dumps(event["detail"]),
                    "Resources": event.get("resources", []),
                }
            ]
        )

    # ---------------------------------------------------------------- head nodes
    def _attach_head_node(self, cluster_name: str, instance_id: str) -> None:
        from cryopilot_sim.cryosparc_standin import CryoSparcStandIn

        email, password = "cryopilot@localhost", f"local-{instance_id}"
        cs = CryoSparcStandIn(
            self.clock, profile=self.profile, email=email, password=password, **self.cryosparc_options
        )
        base_url = cs.start()
        cs.slurm = self._compute_nodes_for(cluster_name)
        if cs.slurm is not None:  # headnode-setup.sh registers one lane per Slurm queue (--lanes)
            cs.lanes = {q.name: q.gpus for q in cs.slurm.queues.values()}
        if self.model_bytes:
            cs.volumes = self._volumes_for(cluster_name)
        self.cryosparc_by_cluster[cluster_name] = cs
        for setup in self.cryosparc_setup:
            setup(cs)
        mount = self._make_file_system(cluster_name, cs)
        env = {
            "CRYOSPARC_BASE_URL": base_url,
            "CRYOSPARC_EMAIL": email,
            "CRYOSPARC_PASSWORD": password,
            "CRYOPILOT_PROJECT_ROOT": f"/fsx/projects/{cluster_name}",
            "CRYOPILOT_FSX_MOUNT": mount,
        }
        with self._lock:
            self.head_nodes[instance_id] = HeadNode(cluster_name, instance_id, cs, env)
            self.instance_clusters[instance_id] = cluster_name

    def _make_file_system(self, cluster_name: str, cs: Any) -> str:
        """The cluster's FSx for Lustre file system, as ParallelCluster makes it from the
        configuration's SharedStorage (its Tags propagate to it): in moto, and in the FSx stand-in
        with its data repository associations. Returns the directory standing in for its mount, and
        gives the cluster's cryoSPARC (``cs``) its way of reading the file system
        (:func:`cryopilot_sim.fsx_standin.lazy_reader`)."""
        import yaml

        from cryopilot_sim.fsx_standin import SimFileSystem, associations_from_config, lazy_reader

        record = self.pcluster.history.get(cluster_name)
        config = yaml.safe_load(record["config"]) if record is not None else {}
        fsx_storage = next(
            (s for s in config.get("SharedStorage") or [] if s.get("StorageType") == "FsxLustre"), None
        )
        mount = self.fsx_mount(cluster_name)
        os.makedirs(mount, exist_ok=True)
        associations = associations_from_config(config)
        cs.read_fsx = lazy_reader(mount, associations, self._s3_bytes)  # the master and workers read FSx
        self._make_shared_volume(cluster_name, config)
        if fsx_storage is None:
            return mount
        settings = fsx_storage.get("FsxLustreSettings") or {}
        subnet = ((config.get("HeadNode") or {}).get("Networking") or {}).get("SubnetId") or "subnet-0"
        created = self.client("fsx").create_file_system(
            FileSystemType="LUSTRE",
            StorageCapacity=int(settings.get("StorageCapacity", 1200)),
            SubnetIds=[subnet],
            LustreConfiguration={
                "DeploymentType": settings.get("DeploymentType", "PERSISTENT_2"),
                "PerUnitStorageThroughput": int(settings.get("PerUnitStorageThroughput", 125)),
            },
            Tags=[{"Key": str(t["Key"]), "Value": str(t["Value"])} for t in config.get("Tags") or []],
        )
        fs_id = created["FileSystem"]["FileSystemId"]

        def project_files() -> dict[str, bytes]:
            return {
                f"{p.project_dir.rstrip('/')}/{path}": data
                for p in list(cs.projects.values())
                for path, data in list(p.files.items())
            }

        self.fsx.register(SimFileSystem(fs_id, cluster_name, mount, associations, project_files))
        self._import_reference(mount, settings)
        with self._lock:
            self.file_systems[cluster_name] = fs_id
        return mount

    def _s3_bytes(self, bucket: str, key: str) -> bytes | None:
        """An object's bytes, None when it cannot be read."""
        try:
            return bytes(self.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read())
        except ClientError:
            return None

    def fsx_mount(self, cluster_name: str) -> str:
        """The directory standing in for a cluster's FSx mount on its head node (kept after the
        cluster is gone, for tests to read)."""
        return os.path.join(self._fsx_mounts, cluster_name)

    def _import_reference(self, mount: str, settings: dict[str, Any]) -> None:
        """A repeat run's reference appears on the head node's FSx mount, at the directory of its
        data repository association: FSx imports a linked S3 object's metadata when the association
        is created (``BatchImportMetaDataOnCreate``) and its bytes when a file is first read (FSx for
        Lustre user guide, "Lazy load"). The reader cannot tell the two apart, so the bytes are
        copied here at once. Only the reference's association: the data's objects are a listing
        of the profile's movies, not their bytes."""
        from cryopilot.domain.clusterconfig.mounts import FSX_REFERENCE_PATH

        s3 = self.client("s3")
        for dra in settings.get("DataRepositoryAssociations") or []:
            if dra.get("FileSystemPath") != FSX_REFERENCE_PATH:
                continue
            bucket, _, prefix = str(dra["DataRepositoryPath"]).removeprefix("s3://").partition("/")
            target = os.path.join(mount, FSX_REFERENCE_PATH.strip("/"))
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    rel = obj["Key"][len(prefix) :]
                    if not rel or rel.endswith("/"):
                        continue
                    path = os.path.join(target, *rel.split("/"))
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    with open(path, "wb") as fh:
                        fh.write(s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read())

    def _make_shared_volume(self, cluster_name: str, config: dict[str, Any]) -> None:
        """The EBS /shared volume, in moto, with the configuration's Tags (propagated to all the
        cluster resources: ParallelCluster user guide, Tags section)."""
        ebs = next((s for s in config.get("SharedStorage") or [] if s.get("StorageType") == "Ebs"), None)
        if ebs is None:
            return
        settings = ebs.get("EbsSettings") or {}
        tags = [{"Key": str(t["Key"]), "Value": str(t["Value"])} for t in config.get("Tags") or []]
        volume = self.client("ec2").create_volume(
            AvailabilityZone=f"{REGION}a",
            Size=int(settings.get("Size", 35)),
            VolumeType=str(settings.get("VolumeType", "gp3")),
            TagSpecifications=[{"ResourceType": "volume", "Tags": tags}] if tags else [],
        )
        with self._lock:
            self.shared_volumes[cluster_name] = (volume["VolumeId"], settings.get("DeletionPolicy", "Delete"))

    def _retire_shared_volume(self, cluster_name: str) -> None:
        """The cluster's deletion: with ``DeletionPolicy: Snapshot`` the /shared volume is snapshotted
        first (CloudFormation's DeletionPolicy attribute), at the simulated time; then deleted."""
        with self._lock:
            found = self.shared_volumes.pop(cluster_name, None)
        if found is None:
            return
        volume_id, policy = found
        ec2 = self.client("ec2")
        if policy == "Snapshot":
            snap = ec2.create_snapshot(VolumeId=volume_id, Description=f"{cluster_name} /shared")
            self._set_snapshot_time(snap["SnapshotId"], self.clock.now())
        if policy != "Retain":
            ec2.delete_volume(VolumeId=volume_id)

    def _set_snapshot_time(self, snapshot_id: str, when: float) -> None:
        """A snapshot's StartTime on the simulated clock (moto stamps the wall clock)."""
        from datetime import UTC, datetime

        from moto.ec2.models import ec2_backends

        with self.requests:
            snap = ec2_backends[ACCOUNT_ID][REGION].snapshots[snapshot_id]
            snap.start_time = datetime.fromtimestamp(when, UTC).replace(tzinfo=None)

    def _put_exported_object(self, bucket: str, key: str, body: bytes) -> None:
        self.client("s3").put_object(Bucket=bucket, Key=key, Body=body)

    def _volumes_for(self, cluster_name: str) -> Any:
        """The file systems of the cluster's configuration (None if the stand-in kept no record)."""
        import yaml

        from cryopilot_sim.filesystems import Volumes

        record = self.pcluster.history.get(cluster_name)
        if record is None:
            return None
        volumes = Volumes.from_cluster_config(yaml.safe_load(record["config"]))
        with self._lock:
            self.volumes_by_cluster[cluster_name] = volumes
        return volumes

    def _compute_nodes_for(self, cluster_name: str) -> Any:
        """The Slurm nodes of the cluster's configuration (None if the stand-in kept no record)."""
        from cryopilot_sim.slurm import SlurmNodes

        record = self.pcluster.history.get(cluster_name)
        if record is None:
            return None
        nodes = SlurmNodes.from_cluster_config(
            record["config"],
            ready_at=float(record["ready_at"]),
            capacity_timeout=_capacity_timeout(record["config"]),
        )
        for instance_type, code, end in self.capacity_faults:
            nodes.set_capacity(instance_type, code, end=end)
        for after in self.spot_interruptions:
            nodes.interrupt_spot(after)
        with self._lock:
            self.compute_nodes[cluster_name] = nodes
        return nodes

    def inject_capacity(
        self, instance_type: str, code: str = "InsufficientInstanceCapacity", *, seconds: float | None = None
    ) -> None:
        """EC2 answers ``code`` to every launch of ``instance_type`` on the clusters made from now on
        (for ``seconds`` of simulated time, or for good): an insufficient-capacity code is failed over
        by ParallelCluster, any other (``VcpuLimitExceeded``) leaves the node down."""
        end = float("inf") if seconds is None else self.clock.now() + seconds
        self.capacity_faults.append((instance_type, code, end))

    def inject_spot_interruption(self, after_seconds: float = 600.0) -> None:
        """The next Spot node of the clusters made from now on gets EC2's interruption notice
        ``after_seconds`` after it is ready, and is reclaimed two minutes later
        (``cryopilot_sim.slurm.SPOT_NOTICE_SECONDS``): the job on it fails."""
        self.spot_interruptions.append(float(after_seconds))

    def settings_queue_types(self, queue: str | None = None) -> list[str]:
        """The stack's instance types of one GPU queue's compute resources (or of every queue)."""
        from cryopilot.adapters.settings import get_settings

        types = get_settings().queue_compute_types()
        return list(types[queue]) if queue else list(dict.fromkeys(t for ts in types.values() for t in ts))

    def _cluster_instances(self, cluster_name: str) -> list[dict[str, Any]]:
        """The compute instances of a cluster now (ParallelCluster's describeClusterInstances)."""
        nodes = self.compute_nodes.get(cluster_name)
        return [] if nodes is None else list(nodes.instances(self.clock.now()))

    def _shut_down_compute(self, cluster_name: str, at: float) -> None:
        nodes = self.compute_nodes.get(cluster_name)
        if nodes is not None:
            nodes.shutdown(at)

    def _detach_head_node(self, cluster_name: str) -> None:
        with self._lock:
            gone = [i for i, n in self.head_nodes.items() if n.cluster_name == cluster_name]
            nodes = [self.head_nodes.pop(i) for i in gone]
        for node in nodes:
            node.cryosparc.stop()
        self._retire_shared_volume(cluster_name)
        # the cluster's FSx goes with it (its DeletionPolicy is Delete)
        fs_id = self.file_systems.pop(cluster_name, None)
        if fs_id is not None:
            self.fsx.forget(fs_id)
            self.client("fsx").delete_file_system(FileSystemId=fs_id)

    def lose_head_node(self, cluster_name: str) -> str:
        """The head node disappears (terminated under the cluster): SSM no longer knows it."""
        with self._ssm_lock:
            return self._lose_head_node(cluster_name)

    def _lose_head_node(self, cluster_name: str) -> str:
        for instance_id, node in list(self.head_nodes.items()):
            if node.cluster_name == cluster_name:
                node.cryosparc.stop()
                del self.head_nodes[instance_id]
                return instance_id
        raise KeyError(f"no head node for {cluster_name}")

    def _run_on_head_node(self, command: Any, inv: dict[str, Any]) -> None:
        from cryopilot_agent import cli as agent_cli
        from cryopilot_agent import slurm as agent_slurm

        node = self.head_nodes[inv["InstanceId"]]
        lines = command.parameters.get("commands") or []
        words = shlex.split(lines[0]) if lines else []
        verb = words[1] if len(words) > 1 else None
        for fault in self.ssm_faults:
            kind, only_verb, remaining = fault
            if remaining > 0 and only_verb in (None, verb):
                fault[2] -= 1
                status = {"timeout": "TimedOut", "undeliverable": "Undeliverable"}[kind]
                inv.update({"Status": status, "StatusDetails": status, "ResponseCode": -1})
                return
        stdout, stderr, code = "", "", 0
        for line in lines:
            argv = shlex.split(line)
            if not argv or argv[0] != "cryopilot-agent":
                stderr, code = f"{argv[0] if argv else line}: command not found\n", 127
                break
            buf = io.StringIO()
            connect = agent_cli._connect

            def reuse(settings: Any, node: HeadNode = node, connect: Any = connect) -> Any:
                if node.client is None:
                    node.client = connect(settings)
                return node.client

            def slurm_command(argv: list[str], node: HeadNode = node) -> str:
                """The head node's Slurm commands, answered by the cluster's simulated nodes."""
                nodes = node.cryosparc.slurm
                if nodes is None:
                    raise FileNotFoundError(argv[0])
                return str(nodes.command(argv, self.clock.now()))

            try:
                with (
                    mock.patch.object(agent_cli, "_connect", reuse),
                    mock.patch.object(agent_slurm, "run_command", slurm_command),
                ):
                    code = agent_cli.main(argv[1:], env={**node.env, **_aws_env()}, stdout=buf)
            except SystemExit as exc:  # argparse errors
                code = exc.code if isinstance(exc.code, int) else 2
            except Exception as exc:
                stderr, code = f"{type(exc).__name__}: {exc}\n", 1
            stdout += buf.getvalue()
            if code:
                break
        if command.output_s3_bucket_name:
            key = (
                f"{command.output_s3_key_prefix.rstrip('/')}/{command.command_id}/{inv['InstanceId']}"
                "/awsrunShellScript/0.awsrunShellScript/stdout"
            )
            self._s3.put_object(Bucket=command.output_s3_bucket_name, Key=key, Body=stdout.encode())
        inline = stdout if len(stdout) <= SSM_INLINE_LIMIT else stdout[:SSM_INLINE_LIMIT]
        inv.update(
            {
                "Status": "Success" if code == 0 else "Failed",
                "StatusDetails": "Success" if code == 0 else "Failed",
                "ResponseCode": code,
                "StandardOutputContent": inline,
                "StandardErrorContent": stderr,
            }
        )

    # ---------------------------------------------------------------- what a user does
    def drop_dataset(
        self,
        folder: str,
        manifest: str | bytes,
        files: dict[str, bytes] | None = None,
        manifest_name: str = "cryopilot.yaml",
    ) -> dict[str, Any]:
        """Upload a dataset's files, then its manifest (which triggers the run)."""
        s3 = self.client("s3")
        for rel, body in (files or {}).items():
            s3.put_object(Bucket=self.input_bucket, Key=f"datasets/{folder}/{rel}", Body=body)
        body = manifest.encode() if isinstance(manifest, str) else manifest
        resp: dict[str, Any] = s3.put_object(
            Bucket=self.input_bucket, Key=f"datasets/{folder}/{manifest_name}", Body=body
        )
        return resp

    def executions(self) -> list[dict[str, Any]]:
        sfn = self.client("stepfunctions")
        out: list[dict[str, Any]] = sfn.list_executions(stateMachineArn=self.state_machine_arn)["executions"]
        return out

    def wait_for_execution(self, arn: str, timeout: float = 120.0) -> dict[str, Any]:
        sfn = self.client("stepfunctions")
        deadline = time.monotonic() + timeout
        while True:
            desc: dict[str, Any] = sfn.describe_execution(executionArn=arn)
            if desc["status"] != "RUNNING":
                return desc
            if time.monotonic() > deadline:
                raise TimeoutError(f"execution {arn} still running after {timeout} s")
            time.sleep(0.1)

    def states_entered(self, arn: str) -> list[str]:
        sfn = self.client("stepfunctions")
        names: list[str] = []
        kwargs: dict[str, Any] = {"executionArn": arn, "maxResults": 1000}
        while True:
            page = sfn.get_execution_history(**kwargs)
            for ev in page["events"]:
                details = ev.get("stateEnteredEventDetails")
                if details:
                    names.append(details["name"])
            if not page.get("nextToken"):
                return names
            kwargs["nextToken"] = page["nextToken"]

    def history(self, arn: str) -> list[dict[str, Any]]:
        sfn = self.client("stepfunctions")
        events: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"executionArn": arn, "maxResults": 1000}
        while True:
            page = sfn.get_execution_history(**kwargs)
            events += page["events"]
            if not page.get("nextToken"):
                return events
            kwargs["nextToken"] = page["nextToken"]

    def mails(self) -> list[dict[str, Any]]:
        """Every message published to the stack's topic, oldest first."""
        from moto.sns.models import sns_backends

        topic = sns_backends[ACCOUNT_ID][REGION].topics[self.topic_arn]
        with self.requests:
            sent = list(topic.sent_notifications)
        out = []
        for message_id, message, subject, attributes, _group in sent:
            attrs = {k: v.get("Value", v.get("StringValue")) for k, v in (attributes or {}).items()}
            out.append({"id": message_id, "subject": subject, "message": message, "attributes": attrs})
        return out

    def operator_stack(self) -> Any:
        """The local stack as the operator commands (``cryopilot_ops.ops``) see a deployed one."""
        from cryopilot_ops.ops import Stack

        return Stack(
            name=self.stack_name,
            region=REGION,
            input_bucket=self.input_bucket,
            results_bucket=self.results_bucket,
            runs_table=str(self.ref("RunsTable")),
            state_machine_arn=self.state_machine_arn,
            cluster_function=str(self.ref("ClusterFunction")),
            start_function=str(self.ref("StartRunFunction")),
            topic_arn=self.topic_arn,
            validate_function=str(self.ref("ValidateFunction")),
            bootstrap_uri=str(
                self.resolver.resolve(self.template["Outputs"]["HeadNodeBootstrapUri"]["Value"])
            )
            if self.resolver
            else "",
            functions=tuple(sorted(self.functions)),
        )

    def run_record(self, run_id: str) -> dict[str, Any] | None:
        from cryopilot.adapters import runs

        return runs.store().get_run_item(run_id)


_ACCOUNT_CLIENTS: dict[str, Any] = {}
_ACCOUNT_CLIENTS_LOCK = threading.Lock()


def _account_client(service: str) -> Any:
    """One boto3 client per service for every local stack of the process: building one takes
    tens of milliseconds, and a test session starts a stack per test. Sharing is safe: a client keeps no
    state of the account it talks to (moto's backends do, and each stack resets them), its keys
    are the fixed ones of :data:`FAKE_ENV`, and moto intercepts every client built after it was
    imported, whether a mock was active then or not."""
    with _ACCOUNT_CLIENTS_LOCK:
        made = _ACCOUNT_CLIENTS.get(service)
        if made is None:
            made = _ACCOUNT_CLIENTS[service] = boto3.client(
                service,
                region_name=REGION,
                aws_access_key_id=FAKE_ENV["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=FAKE_ENV["AWS_SECRET_ACCESS_KEY"],
                aws_session_token=FAKE_ENV["AWS_SESSION_TOKEN"],
            )
        return made


class _RoleSession:
    """A role's session for ``cryopilot.adapters.aws.use_sessions``: clients and resources with
    the role's credentials, every call checked by the enforcer. Built from boto3's default
    session (one loader: a ``boto3.Session`` per role would parse every service model again)."""

    def __init__(self, enforcer: Any, role: str, session_name: str, creds: dict[str, Any]) -> None:
        from botocore.credentials import Credentials

        self._enforcer = enforcer
        self._role = role
        self._session_name = session_name
        self._keys = {
            "aws_access_key_id": creds["AccessKeyId"],
            "aws_secret_access_key": creds["SecretAccessKey"],
            "aws_session_token": creds["SessionToken"],
            "region_name": REGION,
        }
        self._credentials = Credentials(creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"])

    def client(self, service: str, **kwargs: Any) -> Any:
        made = boto3.client(service, **self._keys, **kwargs)
        self._enforcer.watch(made.meta.events, self._role, self._session_name)
        return made

    def resource(self, service: str, **kwargs: Any) -> Any:
        made = boto3.resource(service, **self._keys, **kwargs)
        self._enforcer.watch(made.meta.client.meta.events, self._role, self._session_name)
        return made

    def get_credentials(self) -> Any:
        return self._credentials


def _aws_env() -> dict[str, str]:
    return {k: os.environ[k] for k in ("AWS_DEFAULT_REGION", "AWS_REGION") if k in os.environ}


class _ResponseServer:
    """A loopback HTTP server taking custom resources' answers (CloudFormation's response URL)."""

    def __init__(self, answers: list[dict[str, Any]]) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                answers.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # shutdown() waits up to one poll interval (0.5 s by default) for the loop to notice
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> str:
        self._thread.start()
        return f"http://127.0.0.1:{self._server.server_port}"

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def substitute_definition(definition: str, substitutions: dict[str, str]) -> str:
    """Apply ``DefinitionSubstitutions`` as SAM does: every ``${Name}`` replaced; an unknown
    placeholder is an error (SAM would deploy it literally and fail at run time)."""
    import re

    used = set(re.findall(r"\$\{([A-Za-z0-9_]+)\}", definition))
    missing = used - set(substitutions)
    if missing:
        raise KeyError(f"ASL placeholders without a substitution: {', '.join(sorted(missing))}")
    for key, value in substitutions.items():
        definition = definition.replace("${" + key + "}", value)
    return definition


def _capacity_timeout(config_text: str) -> float:
    """The ``--insufficient-capacity-timeout`` the head node's setup is given (ParallelCluster's
    default, 600 s, without one)."""
    import yaml

    from cryopilot_sim.slurm import DEFAULT_CAPACITY_TIMEOUT

    doc = yaml.safe_load(config_text) or {}
    action = ((doc.get("HeadNode") or {}).get("CustomActions") or {}).get("OnNodeConfigured") or {}
    args = [str(a) for a in action.get("Args") or []]
    flag = "--insufficient-capacity-timeout"
    return float(args[args.index(flag) + 1]) if flag in args[:-1] else DEFAULT_CAPACITY_TIMEOUT


@functools.lru_cache(maxsize=64)
def _config_tags(config_text: str) -> tuple[tuple[str, str], ...]:
    """The ``Tags`` of a cluster configuration (parsed once per configuration: IAM asks for a
    head node's tags at every Run Command call)."""
    import yaml

    doc = yaml.safe_load(config_text) or {}
    return tuple((str(t["Key"]), str(t["Value"])) for t in doc.get("Tags") or [])
