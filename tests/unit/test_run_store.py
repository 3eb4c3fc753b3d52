"""The run record's schema and its store: every field the code writes is declared on the models
of :mod:`cryopilot.domain.record`, and what :class:`RunStore` writes reads back equal, in the item
shapes of the table (floats as numbers, decisions as JSON text), against moto's DynamoDB."""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest
from cryopilot.adapters.runs import RunStore
from cryopilot.domain.record import RunContext, RunRecord, StageRecord
from cryopilot.protocol.stage import PlannedStage
from moto import mock_aws

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [*(ROOT / "layers/cryopilot/cryopilot").rglob("*.py"), *(ROOT / "ops/cryopilot_ops").rglob("*.py")]

#: writer → the model that must declare the fields it writes
WRITERS: dict[str, type[Any]] = {
    "create_run": RunRecord,
    "update_run": RunRecord,
    "update_existing_run": RunRecord,
    "update_run_if_cluster_state": RunRecord,
    "update_run_unless_over": RunRecord,
    "update_stage": StageRecord,
    "put_context": RunContext,
}
#: keyword arguments of the writers that are no field
NOT_FIELDS = {"only_if", "expected"}


# ------------------------------------------------------------------ every written field is declared
def _dict_keys(function: ast.AST, name: str, functions: dict[str, ast.FunctionDef]) -> set[str]:
    """The keys a function gives its dict variable ``name``: a dict literal assigned to it,
    ``name["key"] = ...``, ``name.update(key=...)``, and when it is assigned a call of a function
    of the same module, the keys of the dict that function builds."""
    keys: set[str] = set()
    for node in ast.walk(function):
        value = None
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
        ) or (
            isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name
        ):
            value = node.value
        if isinstance(value, ast.Dict):
            keys |= {k.value for k in value.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
        elif isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id in functions:
            callee = functions[value.func.id]
            returned = [
                r.value.id
                for r in ast.walk(callee)
                if isinstance(r, ast.Return) and isinstance(r.value, ast.Name)
            ]
            for var in returned:
                keys |= _dict_keys(callee, var, functions)
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.ctx, ast.Store)
            and isinstance(node.value, ast.Name)
            and node.value.id == name
            and isinstance(node.slice, ast.Constant)
        ):
            keys.add(str(node.slice.value))
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "update"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == name
        ):
            keys |= {k.arg for k in node.keywords if k.arg}
    return keys


def _written_fields() -> dict[str, set[tuple[str, str]]]:
    """writer → {(field, where)} over the layer and the operator's library."""
    written: dict[str, set[tuple[str, str]]] = {w: set() for w in WRITERS}
    for path in SOURCES:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        functions = {f.name: f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)}
        for function in functions.values():
            for call in ast.walk(function):
                if not isinstance(call, ast.Call):
                    continue
                func = call.func
                writer = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                if writer not in WRITERS or function.name == writer:
                    continue
                where = f"{path.relative_to(ROOT)}:{call.lineno}"
                for keyword in call.keywords:
                    if keyword.arg is not None:
                        written[writer].add((keyword.arg, where))
                    elif isinstance(keyword.value, ast.Name):
                        for key in _dict_keys(function, keyword.value.id, functions):
                            written[writer].add((key, where))
    return written


def test_every_field_the_code_writes_is_declared_on_the_record() -> None:
    written = _written_fields()
    record_writes = sum(len(fields) for writer, fields in written.items() if WRITERS[writer] is RunRecord)
    assert record_writes > 60, "the walk finds the writes"
    assert len(written["update_stage"]) > 8
    undeclared = sorted(
        f"{WRITERS[writer].__name__}.{name} ({where})"
        for writer, fields in written.items()
        for name, where in fields
        if name not in NOT_FIELDS and name not in WRITERS[writer].model_fields
    )
    assert undeclared == []


def test_every_list_the_code_appends_to_is_a_list_field_of_the_record() -> None:
    appended = set()
    for path in SOURCES:
        for call in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(call, ast.Call)
                and isinstance(call.func, ast.Attribute)
                and call.func.attr == "append_to"
                and len(call.args) > 1
                and isinstance(call.args[1], ast.Constant)
            ):
                appended.add(str(call.args[1].value))
    assert appended >= {"decisions", "mails", "placements_tried"}
    for name in appended:
        default = RunRecord.model_fields[name].default_factory
        assert default is list, f"RunRecord.{name} is no list field"


# ------------------------------------------------------------------ the store on moto
@pytest.fixture
def table() -> Iterator[Any]:
    with mock_aws():
        ddb = boto3.resource("dynamodb", region_name="us-east-1")
        yield ddb.create_table(
            TableName="runs-store-test",
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
        )


RECORD = RunRecord(
    run_id="cgrp-20260101T000000-1a2b",
    status="RUNNING",
    created_at="2026-01-01T00:00:00+00:00",
    dataset="cgrp",
    trigger="eventbridge-s3",
    execution_arn="arn:aws:states:us-east-1:123456789012:execution:run:cgrp-20260101T000000-1a2b",
    manifest={"bucket": "in", "key": "datasets/cgrp/cryopilot.yaml", "version_id": "v1"},
    start_input=json.dumps({"manifest": {"bucket": "in"}}),
    data_s3_uri="s3://in/datasets/cgrp/",
    notify=["a@example.org"],
    admitted_epoch=1_767_225_600.25,
    preset="cgrp",
    layout="whitepaper",
    settings={"min_poll_seconds": 60, "max_poll_seconds": 1800},
    started_epoch=1_767_225_601.5,
    current_step="stage:motion",
    cluster_name="cryopilot-cgrp-1a2b",
    cluster_state="CREATE_COMPLETE",
    placement="us-east-1a p4d",
    placement_attempt=1,
    placements_tried=[{"label": "us-east-1b p5", "cluster": "c0", "reason": "no capacity"}],
    abandoned_clusters=["c0"],
    cryosparc_project="P3",
    stages={
        "motion": StageRecord(
            title="Patch motion",
            lane="gpu8",
            gpus=8,
            state="running",
            jobs=["J3"],
            job_types=["patch"],
            progress=0.4213,
            started_at=1_767_226_400.75,
            polls=3,
            last_wait_seconds=600,
            cost_usd=12.3456,
        )
    },
    decisions=[{"stage_id": "select2d", "summary": "kept 12 of 50", "scores": [0.5, 0.25]}],
    resolution_A=2.871,
    cost_usd=88.4,
    janitor_delete_attempts=2,
    mails=[{"kind": "failed", "subject": "s", "at": "2026-01-01T01:00:00+00:00"}],
)


def test_a_record_written_through_the_store_reads_back_equal(table: Any) -> None:
    store = RunStore(table)
    fields = RECORD.model_dump(exclude={"run_id", "decisions"})
    assert store.create_run(RECORD.run_id, **fields)
    assert not store.create_run(RECORD.run_id), "created once"
    store.append_to(RECORD.run_id, "decisions", *RECORD.decisions)
    back = store.get_run(RECORD.run_id)
    assert back is not None
    assert back.model_dump(exclude={"updated_at"}) == RECORD.model_dump(exclude={"updated_at"})
    assert back == RunRecord.model_validate(store.get_run_item(RECORD.run_id))
    # the item's shapes: numbers as DynamoDB numbers, decisions as JSON text
    item = table.get_item(Key={"pk": f"run#{RECORD.run_id}"})["Item"]
    assert item["kind"] == "run"
    assert item["cost_usd"] == Decimal("88.4")
    assert item["stages"]["motion"]["cost_usd"] == Decimal("12.3456")
    assert item["decisions"] == [json.dumps(RECORD.decisions[0], sort_keys=True, separators=(",", ":"))]


def test_updates_and_projections_read_back_typed(table: Any) -> None:
    store = RunStore(table)
    store.create_run("r1", current_step="queued")
    store.update_run("r1", status="FAILED", error={"type": "E", "message": "m", "step": "export"})
    store.update_run("r1", stages={"motion": {"title": "Motion", "state": "pending"}})
    store.update_stage("r1", "motion", state="completed", completed_at=5.5, progress=None)
    assert not store.update_existing_run("nope", status="FAILED"), "never creates a record"
    only_once = "attribute_not_exists(admitted_at)"
    assert store.update_existing_run("r1", only_if=only_once, admitted_at="x")
    assert not store.update_existing_run("r1", only_if=only_once, admitted_at="y")
    # the create step and a deletion race on the cluster: only the first to write wins
    store.update_run("r1", cluster_state="CREATE_REQUESTED")
    pending = ("CREATE_REQUESTED", "DELETE_REQUESTED_CREATE_PENDING")
    assert store.update_run_if_cluster_state("r1", pending, cluster_state="DELETE_REQUESTED_CREATE_PENDING")
    requested = ("CREATE_REQUESTED",)
    assert not store.update_run_if_cluster_state("r1", requested, cluster_state="CREATE_IN_PROGRESS")
    assert not store.update_run_if_cluster_state("nope", pending, cluster_state="X"), "never creates a record"
    assert (store.get_run("r1") or RunRecord(run_id="r1")).cluster_state == "DELETE_REQUESTED_CREATE_PENDING"
    # a step that starts something never undoes a cancel that came first (r1 is FAILED: over)
    assert not store.update_run_unless_over("r1", status="RUNNING", current_step="validate")
    assert not store.update_run_unless_over("nope", status="RUNNING"), "never creates a record"
    store.create_run("r2", current_step="queued")
    assert store.update_run_unless_over("r2", status="RUNNING")
    store.mark_cancelled("r2", {"type": "Cancelled", "message": "by hand", "step": "queued"})
    assert not store.update_run_unless_over("r2", status="RUNNING", cluster_state="CREATE_REQUESTED")
    r2 = store.get_run("r2")
    assert r2 is not None
    assert (r2.status, r2.cluster_state) == ("CANCELLED", None)
    part = store.get_run("r1", ["status"])
    assert part is not None
    assert (part.status, part.current_step) == ("FAILED", None)
    full = store.get_run("r1")
    assert full is not None
    assert full.is_over
    assert full.error == {"type": "E", "message": "m", "step": "export"}
    assert full.stages["motion"].completed_at == 5.5
    assert full.stages["motion"].progress is None
    store.forget_admission("r1", "queued")
    record = store.get_run("r1")
    assert record is not None
    assert (record.admitted_at, record.current_step) == (None, "queued")
    store.mark_cancelled("r1", {"type": "ExecutionAborted"})
    record = store.get_run("r1")
    assert record is not None
    assert record.status == "CANCELLED"
    assert record.error is not None
    assert record.error["type"] == "E", "an error already there stays"


def test_context_plan_and_manifest_claims(table: Any) -> None:
    store = RunStore(table)
    assert store.get_context("r1") is None
    store.put_context("r1", settings={"min_poll_seconds": 1}, limits={"max_cost_usd": 100.5}, costs={})
    store.put_context_cost("r1", "motion", 3.25)
    store.put_context("r1", head_node_instance_id="i-1", gpu8_instance_type="p4d.24xlarge")
    assert store.get_context("r1") == RunContext(
        run_id="r1",
        settings={"min_poll_seconds": 1},
        limits={"max_cost_usd": 100.5},
        costs={"motion": 3.25},
        head_node_instance_id="i-1",
        gpu8_instance_type="p4d.24xlarge",
    )
    stage = PlannedStage(
        id="motion",
        title="Motion",
        job_type="patch",
        lane="gpu8",
        gpus=8,
        params={"x": 1.5},
        inputs=[],
        time_limit_seconds=3600,
        expected_seconds=1200,
    )
    assert store.get_plan("r1") == []
    store.put_plan("r1", [stage])
    item = table.get_item(Key={"pk": "plan#r1"})["Item"]
    assert (item["kind"], item["plan"]) == (
        "plan",
        [json.loads(json.dumps(stage.model_dump(mode="json")), parse_float=Decimal)],
    )
    assert store.get_plan("r1") == [stage]
    cached, uncached = RunStore(table, cache_plans=True), RunStore(table)
    assert cached.get_plan("r1") == [stage]
    table.delete_item(Key={"pk": "plan#r1"})
    assert cached.get_plan("r1") == [stage], "a plan never changes: read once"
    assert uncached.get_plan("r1") == []
    assert store.claim_manifest("d1", "r1", {"key": "k"}) == ("r1", True)
    assert store.claim_manifest("d1", "r2", {"key": "k"}) == ("r1", False)


# ------------------------------------------------------------------ a record that outgrew the item limit
def _full_record(table: Any, run_id: str) -> RunStore:
    """A run record a few bytes short of moto's item limit (405,000 bytes of names and values)."""
    store = RunStore(table)
    store.create_run(
        run_id, status="RUNNING", dataset="BIG", cluster_name="cp-big", cluster_state="CREATE_COMPLETE"
    )
    used = sum(
        len(k) + len(json.dumps(v)) for k, v in table.get_item(Key={"pk": f"run#{run_id}"})["Item"].items()
    )
    table.update_item(
        Key={"pk": f"run#{run_id}"},
        UpdateExpression="SET decisions = :d",
        ExpressionAttributeValues={":d": [json.dumps({"note": "x" * (404_000 - used)})]},
    )
    return store


def test_a_write_past_the_item_limit_is_one_line_naming_the_field(table: Any) -> None:
    from cryopilot.core.errors import RecordTooLargeError

    store = _full_record(table, "r1")
    with pytest.raises(RecordTooLargeError) as info:
        store.update_run("r1", error={"type": "X", "message": "m" * 2000, "step": "stage:ctf"})
    assert str(info.value) == (
        "run record r1: writing error (2,049 bytes) would make it larger than DynamoDB's 400 KB item limit"
    )
    with pytest.raises(RecordTooLargeError, match="run record r1: writing mails "):
        store.append_to("r1", "mails", {"kind": "failed", "subject": "s" * 2000})


def test_a_full_record_is_cut_down_to_its_essentials(table: Any) -> None:
    store = _full_record(table, "r2")
    store.replace_with_essentials("r2", status="FAILED", error={"type": "X", "message": "m", "step": "s"})
    run = store.get_run("r2")
    assert run is not None
    assert (run.status, run.dataset, run.cluster_name, run.cluster_state) == (
        "FAILED",
        "BIG",
        "cp-big",
        "CREATE_COMPLETE",
    )
    assert run.record_truncated is True
    assert run.decisions == []
    store.update_run("r2", finished_at="now")  # it takes writes again
