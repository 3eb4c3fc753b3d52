"""Every request the ParallelCluster client sends and every answer it parses, checked against the
OpenAPI spec shipped in ``aws-parallelcluster`` (and against that package's generated API models)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# pinned dev requirements (pcluster, its validators), imported outright: missing, they fail the run
import openapi_schema_validator
import openapi_spec_validator
import pcluster
import pcluster.api.models as api_models
import pytest
import yaml
from botocore.credentials import Credentials
from cryopilot.adapters.pcluster import ClusterInfo, ClusterInstance, PClusterClient
from cryopilot.core.errors import CryopilotError
from cryopilot.domain.clusterconfig.build import build_cluster_config, render_yaml
from cryopilot.domain.clusterconfig.params import ClusterParams
from cryopilot_sim.clock import VirtualClock
from cryopilot_sim.pcluster_standin import FaultKind, PClusterStandIn, RecordedRequest
from cryopilot_sim.slurm import SlurmNodes

from tests.conftest import make_cluster_request

SPEC_PATH = Path(pcluster.__file__).parent / "api" / "openapi" / "openapi.yaml"
REGION = "us-east-1"
CREDS = Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY", "session-token")
OUR_OPERATIONS = {
    "create_cluster",
    "describe_cluster",
    "delete_cluster",
    "list_clusters",
    "describe_cluster_instances",
    "get_cluster_stack_events",
    "list_official_images",
}

PARAMS = ClusterParams(
    region=REGION,
    head_node_subnet_id="subnet-0123456789abcdef0",
    compute_subnet_ids=["subnet-0aaaaaaaaaaaaaaa1"],
    licence_secret_arn="arn:aws:secretsmanager:us-east-1:123456789012:secret:cryosparc-licence-AbCdEf",
    bootstrap_s3_uri="s3://cryopilot-assets/bootstrap/",
    results_s3_uri="s3://cryopilot-results/runs/",
)

#: The answer model of each (operationId, status) in aws-parallelcluster's generated API package.
RESPONSE_MODELS = {
    ("create_cluster", 202): "CreateClusterResponseContent",
    ("create_cluster", 400): "CreateClusterBadRequestExceptionResponseContent",
    ("create_cluster", 409): "ConflictExceptionResponseContent",
    ("create_cluster", 412): "DryrunOperationExceptionResponseContent",
    ("describe_cluster", 200): "DescribeClusterResponseContent",
    ("delete_cluster", 202): "DeleteClusterResponseContent",
    ("list_clusters", 200): "ListClustersResponseContent",
    ("list_clusters", 400): "BadRequestExceptionResponseContent",
    ("describe_cluster_instances", 200): "DescribeClusterInstancesResponseContent",
    ("describe_cluster_instances", 400): "BadRequestExceptionResponseContent",
    ("list_official_images", 200): "ListOfficialImagesResponseContent",
    ("get_cluster_stack_events", 200): "GetClusterStackEventsResponseContent",
}


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text())
    openapi_spec_validator.validate(document)  # the spec itself is a valid OpenAPI 3.0 document
    return document


def config_for(run_id: str) -> tuple[str, str]:
    request = make_cluster_request(run_id)
    return request.cluster_name, render_yaml(build_cluster_config(request, PARAMS))


# --- spec checking -------------------------------------------------------------------------------


def schema_errors(spec: dict[str, Any], schema: dict[str, Any], value: Any) -> list[str]:
    """Validate ``value`` against a schema of the spec (its ``$ref``s resolved within the spec)."""
    rooted = {**schema, "components": spec["components"]}
    validator = openapi_schema_validator.OAS30Validator(
        rooted, format_checker=openapi_schema_validator.oas30_format_checker
    )
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(value)]


def find_operation(spec: dict[str, Any], method: str, path: str) -> tuple[dict[str, Any], dict[str, str]]:
    for template, item in spec["paths"].items():
        names = re.findall(r"{(\w+)}", template)
        pattern = "^" + re.sub(r"{\w+}", "([^/]+)", template) + "$"
        match = re.match(pattern, path)
        if match and method.lower() in item:
            return item[method.lower()], dict(zip(names, match.groups(), strict=True))
    raise AssertionError(f"{method} {path} is not an operation of the spec")


def coerce(raw: str, schema: dict[str, Any]) -> Any:
    """A query string value as the type its (form-style) parameter schema declares."""
    if schema.get("type") == "boolean":
        assert raw in ("true", "false"), f"boolean query value {raw!r}"
        return raw == "true"
    if schema.get("type") == "integer":
        return int(raw)
    return raw


def request_problems(spec: dict[str, Any], recorded: RecordedRequest) -> list[str]:
    operation, path_values = find_operation(spec, recorded.method, recorded.path)
    problems: list[str] = []
    parameters = operation.get("parameters", [])
    for parameter in parameters:
        name, where, schema = parameter["name"], parameter["in"], parameter["schema"]
        if where == "path":
            problems += [f"path {name}: {e}" for e in schema_errors(spec, schema, path_values[name])]
        elif where == "query":
            values = recorded.query.get(name)
            if values is None:
                if parameter.get("required"):
                    problems.append(f"missing required query parameter {name}")
                continue
            assert parameter.get("style", "form") == "form"
            assert parameter.get("explode", True)
            if schema.get("type") == "array":
                value: Any = [coerce(v, schema["items"]) for v in values]
            else:
                if len(values) != 1:
                    problems.append(f"query {name} repeated")
                value = coerce(values[0], schema)
            problems += [f"query {name}: {e}" for e in schema_errors(spec, schema, value)]
    declared = {p["name"] for p in parameters if p["in"] == "query"}
    problems += [f"query parameter {k} is not in the spec" for k in recorded.query if k not in declared]
    if "requestBody" in operation:
        body_schema = operation["requestBody"]["content"]["application/json"]["schema"]
        if recorded.body is None:
            problems.append("request body missing")
        else:
            problems += [f"body: {e}" for e in schema_errors(spec, body_schema, recorded.body)]
    elif recorded.body is not None:
        problems.append("a body on an operation without requestBody")
    return problems


def response_problems(spec: dict[str, Any], recorded: RecordedRequest) -> list[str]:
    operation, _ = find_operation(spec, recorded.method, recorded.path)
    declared = operation["responses"].get(str(recorded.status))
    if declared is None:
        return [f"status {recorded.status} is not declared for {operation['operationId']}"]
    schema = declared["content"]["application/json"]["schema"]
    return [f"response: {e}" for e in schema_errors(spec, schema, recorded.response)]


# --- the scenario --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recorded() -> Iterator[list[RecordedRequest]]:
    """Drive the client through every operation, state and error the stand-in can produce."""
    clock = VirtualClock()
    with PClusterStandIn(clock, credentials=CREDS, page_size=2) as standin:
        assert standin.endpoint is not None
        client = PClusterClient(standin.endpoint, REGION, credentials=CREDS)
        parsed: list[ClusterInfo] = []

        def expect_error(call: Any) -> None:
            with pytest.raises(CryopilotError):
                call()

        name, text = config_for("contract-1")
        parsed.append(client.create_cluster(name, text, dryrun=True))
        parsed.append(
            client.create_cluster(
                name,
                text,
                suppress_validators=["type:InstanceTypeValidator", "type:FsxValidator"],
                validation_failure_level="WARNING",
            )
        )
        parsed.append(client.describe_cluster(name))  # CREATE_IN_PROGRESS
        expect_error(lambda: client.create_cluster(name, text))  # 400 already exists
        broken, broken_text = config_for("contract-broken")
        expect_error(
            lambda: client.create_cluster(broken, broken_text.replace("Scheduler: slurm", "Scheduler: pbs"))
        )
        create_faults: tuple[FaultKind, ...] = ("conflict", "throttle", "server_error", "bad_request")
        for kind in create_faults:
            standin.inject(kind, operation="create_cluster")
            expect_error(lambda: client.create_cluster(name, text))
        clock.sleep(900)
        parsed.append(client.describe_cluster(name))  # CREATE_COMPLETE with headNode

        # describeClusterInstances: the head node and the GPU nodes Slurm launched, over pages of 2
        nodes = SlurmNodes.from_cluster_config(standin.cluster_config(name), ready_at=clock.now())
        nodes.set_capacity("p4d.24xlarge", "InsufficientInstanceCapacity")
        standin.compute_instances = lambda _name: nodes.instances(clock.now())
        assert nodes.acquire("gpu8", clock.now(), "J1") is not None  # fails over to p4de.24xlarge
        assert nodes.acquire("gpu1", clock.now(), "J2") is not None
        clock.sleep(120)
        instances = client.describe_cluster_instances(name)
        assert sorted((i.node_type, i.instance_type, i.queue_name) for i in instances) == [
            ("ComputeNode", "p4de.24xlarge", "gpu8"),
            ("ComputeNode", "p5.4xlarge", "gpu1"),
            ("HeadNode", "m6i.2xlarge", None),
        ]
        assert all(i.launch_time is not None and i.state == "running" for i in instances)
        gpu8 = client.describe_cluster_instances(name, node_type="ComputeNode", queue_name="gpu8")
        assert [i.instance_type for i in gpu8] == ["p4de.24xlarge"]
        assert client.describe_cluster_instances("contract-none") == []  # EC2 lists nothing: no 404
        for kind in ("throttle", "server_error", "bad_request"):
            standin.inject(kind, operation="describe_cluster_instances")
            expect_error(lambda: client.describe_cluster_instances(name))

        failed, failed_text = config_for("contract-2")
        standin.inject("create_failed_capacity")
        parsed.append(client.create_cluster(failed, failed_text, rollback_on_failure=True))
        other, other_text = config_for("contract-3")
        parsed.append(client.create_cluster(other, other_text))
        clock.sleep(900)
        parsed.append(client.describe_cluster(failed))  # CREATE_FAILED with failures
        whole = client.failed_resources(failed)  # where EC2's error shows
        assert any("capacity" in r.reason for r in whole)
        standin.page_size = 2  # the same events, a page of two at a time, following nextToken
        assert client.failed_resources(failed, max_pages=10) == whole
        first = client.failed_resources(failed, max_pages=1)  # past its pages: what they held, no error
        assert first == whole[: len(first)]
        standin.page_size = 50
        parsed += client.list_clusters()
        parsed += client.list_clusters(cluster_status=["CREATE_FAILED", "CREATE_COMPLETE"])
        other_faults: tuple[FaultKind, ...] = ("throttle", "server_error", "bad_request")
        for kind in other_faults:
            standin.inject(kind, operation="list_clusters")
            expect_error(lambda: client.list_clusters())
            standin.inject(kind, operation="describe_cluster")
            expect_error(lambda: client.describe_cluster(name))
            standin.inject(kind, operation="delete_cluster")
            expect_error(lambda: client.delete_cluster(name))

        standin.inject("delete_failed", cluster=other)
        for cluster in (name, failed, other):
            info = client.delete_cluster(cluster)
            assert info is not None
            parsed.append(info)
        parsed.append(client.describe_cluster(name))  # DELETE_IN_PROGRESS
        clock.sleep(300)
        parsed.append(client.describe_cluster(other))  # DELETE_FAILED
        expect_error(lambda: client.describe_cluster(name))  # 404
        expect_error(lambda: client.delete_cluster(name))  # 404
        assert client.delete_cluster(failed, missing_ok=True) is None
        assert set(client.official_image_versions()) == {"3.16.1"}  # preflight's version check
        assert all(p.name for p in parsed)
        yield list(standin.requests)


def test_the_scenario_covers_every_operation_and_answer(recorded: list[RecordedRequest]) -> None:
    seen = {(r.operation, r.status) for r in recorded}
    assert seen >= {
        ("create_cluster", 202),
        ("create_cluster", 400),
        ("create_cluster", 409),
        ("create_cluster", 412),
        ("create_cluster", 429),
        ("create_cluster", 500),
        ("describe_cluster", 200),
        ("describe_cluster", 400),
        ("describe_cluster", 404),
        ("describe_cluster", 429),
        ("describe_cluster", 500),
        ("delete_cluster", 202),
        ("delete_cluster", 400),
        ("delete_cluster", 404),
        ("delete_cluster", 429),
        ("delete_cluster", 500),
        ("list_clusters", 200),
        ("list_clusters", 400),
        ("list_clusters", 429),
        ("list_clusters", 500),
        ("describe_cluster_instances", 200),
        ("describe_cluster_instances", 400),
        ("describe_cluster_instances", 429),
        ("describe_cluster_instances", 500),
        ("list_official_images", 200),
    }
    assert {r.operation for r in recorded} == OUR_OPERATIONS
    statuses = {r.response.get("clusterStatus") for r in recorded if r.operation == "describe_cluster"}
    assert statuses >= {
        "CREATE_IN_PROGRESS",
        "CREATE_COMPLETE",
        "CREATE_FAILED",
        "DELETE_IN_PROGRESS",
        "DELETE_FAILED",
    }
    assert any("nextToken" in r.query for r in recorded)
    assert any("nextToken" in r.query for r in recorded if r.operation == "describe_cluster_instances")
    assert any("configurationValidationErrors" in r.response for r in recorded)


def test_every_request_matches_the_spec(spec: dict[str, Any], recorded: list[RecordedRequest]) -> None:
    problems = {
        f"#{i} {r.method} {r.path}?{r.query}": request_problems(spec, r) for i, r in enumerate(recorded)
    }
    assert {k: v for k, v in problems.items() if v} == {}


#: Where ParallelCluster's answers leave its own spec: a rollback's stack events carry CloudFormation's
#: ROLLBACK_* statuses, which the API passes through (see the stand-in's ``_stack_events``) and
#: the spec's ``CloudFormationResourceStatus`` enum leaves out.
OUTSIDE_THE_SPEC = re.compile(
    r"^response: events/\d+/resourceStatus: 'ROLLBACK_(IN_PROGRESS|COMPLETE)' is not one of "
)


def test_every_answer_matches_the_spec(spec: dict[str, Any], recorded: list[RecordedRequest]) -> None:
    problems = {
        f"#{i} {r.method} {r.path} -> {r.status}": response_problems(spec, r) for i, r in enumerate(recorded)
    }
    passed_through = [p for found in problems.values() for p in found if OUTSIDE_THE_SPEC.match(p)]
    assert passed_through, "the scenario shows a rollback's stack events"
    left = {k: [p for p in v if not OUTSIDE_THE_SPEC.match(p)] for k, v in problems.items()}
    assert {k: v for k, v in left.items() if v} == {}


def test_every_answer_loads_into_the_api_models_of_aws_parallelcluster(
    recorded: list[RecordedRequest],
) -> None:
    checked = 0
    for entry in recorded:
        model_name = RESPONSE_MODELS.get((entry.operation or "", entry.status))
        if model_name is None:
            continue
        model = getattr(api_models, model_name).from_dict(entry.response)
        assert model.to_dict()
        checked += 1
    assert checked >= len(RESPONSE_MODELS)


def test_the_create_body_carries_the_yaml_configuration(recorded: list[RecordedRequest]) -> None:
    creates = [r for r in recorded if r.operation == "create_cluster" and r.status == 202]
    assert creates
    for entry in creates:
        assert set(entry.body) == {"clusterName", "clusterConfiguration"}
        assert yaml.safe_load(entry.body["clusterConfiguration"])["Region"] == REGION
        assert entry.query["region"] == [REGION]


def test_the_checker_itself_catches_violations(spec: dict[str, Any]) -> None:
    """The helpers above must be able to fail: feed them requests and answers that break the spec."""
    base = RecordedRequest(
        method="POST",
        path="/v3/clusters",
        query={"region": [REGION], "dryrun": ["yes"]},
        body={"clusterName": "1bad", "clusterConfiguration": 3},
        status=202,
        response={"cluster": {"clusterName": "x"}},
        headers={},
    )
    with pytest.raises(AssertionError, match="boolean query value"):
        request_problems(spec, base)
    ok_query = RecordedRequest(**{**base.__dict__, "query": {"region": [REGION], "bogus": ["1"]}})
    problems = request_problems(spec, ok_query)
    assert any("bogus" in p for p in problems)
    assert any("clusterName" in p or "does not match" in p for p in problems)
    assert any("is not of type 'string'" in p for p in problems)
    assert response_problems(spec, base)  # required fields of ClusterInfoSummary missing
    teapot = RecordedRequest(**{**base.__dict__, "status": 418})
    assert response_problems(spec, teapot) == ["status 418 is not declared for create_cluster"]
    bad_status = RecordedRequest(
        method="GET",
        path="/v3/clusters",
        query={"region": [REGION], "clusterStatus": ["RUNNING"]},
        body=None,
        status=200,
        response={"clusters": []},
        headers={},
    )
    assert any("RUNNING" in p for p in request_problems(spec, bad_status))


@pytest.mark.parametrize(
    "schema_name",
    ["DescribeClusterResponseContent", "ClusterInfoSummary", "ListClustersResponseContent"],
)
def test_the_client_parses_the_spec_examples(spec: dict[str, Any], schema_name: str) -> None:
    example = spec["components"]["schemas"][schema_name]["example"]
    items = example.get("clusters", [example])
    for item in items:
        info = ClusterInfo.from_api(item)
        assert info.name == "clusterName"
        assert info.status == ""  # the examples leave enums null
    if schema_name == "DescribeClusterResponseContent":
        info = ClusterInfo.from_api(example)
        assert info.head_node_instance_id == "instanceId"
        assert info.tags == {"key": "value"}
        assert [f.code for f in info.failures] == ["failureCode", "failureCode"]
        assert info.creation_time is not None
        assert info.creation_time.year == 2000


def test_the_client_parses_the_instances_example(spec: dict[str, Any]) -> None:
    example = spec["components"]["schemas"]["DescribeClusterInstancesResponseContent"]["example"]
    parsed = [ClusterInstance.from_api(i) for i in example["instances"] if i.get("nodeType") is not None]
    assert parsed == []  # the example leaves nodeType null, which the client refuses ...
    with pytest.raises(CryopilotError):
        ClusterInstance.from_api({"instanceId": "i-1", "instanceType": "p4d.24xlarge"})
    item = {**example["instances"][0], "nodeType": "ComputeNode", "state": "running"}
    instance = ClusterInstance.from_api(item)  # ... and parses once they are set
    assert (instance.instance_type, instance.queue_name, instance.launch_time.year) == (
        "instanceType",
        "queueName",
        2000,
    )
