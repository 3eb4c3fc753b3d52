"""The run record in DynamoDB: one item per run, read by the CLI, written by every step.

Step Functions is the source of truth for *what happens*; the record is the readable account of
it (status, current step, cluster, stage times, job ids, decisions, resolution, cost, error).
Items: ``pk = "run#<run id>"`` for runs; ``pk = "manifest#<digest>"`` for idempotency records;
``pk = "admission"`` for the slots and the queue of waiting runs (:mod:`cryopilot.adapters.admission`).
"""

from __future__ import annotations

import json
from decimal import Decimal
from functools import lru_cache
from typing import Any

from botocore.exceptions import ClientError

from cryopilot.adapters import aws
from cryopilot.adapters.settings import get_settings
from cryopilot.core import clock


def _to_ddb(value: Any) -> Any:
    """Python → DynamoDB-ready value (floats as Decimal)."""
    return json.loads(json.dumps(value), parse_float=Decimal)


def _from_ddb(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _from_ddb(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_ddb(v) for v in value]
    return value


#: List fields whose entries are stored as JSON text: an automatic decision carries every class's
#: numbers, and as nested DynamoDB maps they would make most of the record's attributes (and of
#: the cost of every update, which rewrites the item). Readers get dicts back (:func:`decode`).
JSON_LIST_FIELDS = ("decisions",)


def decode(item: dict[str, Any]) -> dict[str, Any]:
    """A stored run item as Python values: numbers as int/float, JSON-text entries as dicts."""
    record: dict[str, Any] = _from_ddb(item)
    for name in JSON_LIST_FIELDS:
        if isinstance(record.get(name), list):
            record[name] = [json.loads(e) if isinstance(e, str) else e for e in record[name]]
    return record


def _resource_table() -> Any:
    return aws.resource("dynamodb").Table(get_settings().runs_table)


def table() -> Any:
    """The run table (boto3 ``Table``), for the modules that keep items of their own in it."""
    return _resource_table()


def run_key(run_id: str) -> dict[str, str]:
    return {"pk": f"run#{run_id}"}


def create_run(run_id: str, **fields: Any) -> bool:
    """Create the record if absent. Returns False when it already existed (nothing changed)."""
    now = clock.now_iso()
    item = {
        **run_key(run_id),
        "kind": "run",
        "run_id": run_id,
        "status": "QUEUED",
        "created_at": now,
        "updated_at": now,
        "stages": {},
        "decisions": [],
        "mails": [],
        **fields,
    }
    try:
        _resource_table().put_item(Item=_to_ddb(item), ConditionExpression="attribute_not_exists(pk)")
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
            return False
        raise
    return True


def get_run(run_id: str, fields: list[str] | None = None) -> dict[str, Any] | None:
    """The run record, or only ``fields`` of it (top-level attribute names)."""
    kwargs: dict[str, Any] = {"Key": run_key(run_id), "ConsistentRead": True}
    if fields:
        names = {f"#p{i}": f for i, f in enumerate(["run_id", *fields])}
        kwargs["ProjectionExpression"] = ", ".join(names)
        kwargs["ExpressionAttributeNames"] = names
    item = _resource_table().get_item(**kwargs).get("Item")
    return decode(item) if item else None


def put_plan(run_id: str, plan: list[dict[str, Any]]) -> None:
    """Store the run's planned stages in an item of their own (``plan#<run id>``): it is the
    largest and the most read part of a run, and never changes once Validate wrote it."""
    _resource_table().put_item(
        Item=_to_ddb({"pk": f"plan#{run_id}", "kind": "plan", "run_id": run_id, "plan": plan})
    )


@lru_cache(maxsize=64)
def _plan(run_id: str) -> tuple[dict[str, Any], ...]:
    item = _resource_table().get_item(Key={"pk": f"plan#{run_id}"}, ConsistentRead=True).get("Item")
    return tuple(_from_ddb(item)["plan"]) if item else ()


aws.on_reset(_plan.cache_clear)


def get_plan(run_id: str) -> list[dict[str, Any]]:
    """The run's planned stages, cached for the life of the Lambda container."""
    plan = _plan(run_id)
    if not plan:
        _plan.cache_clear()
    return [dict(stage) for stage in plan]


def put_context(run_id: str, **fields: Any) -> None:
    """Set fields of the run's step context (``ctx#<run id>``): the few values every stage poll
    reads (head node, waits). A small item of its own, so a poll never reads the whole record,
    which grows with every stage and decision."""
    names = {f"#f{i}": k for i, k in enumerate(fields)}
    values = {f":v{i}": v for i, v in enumerate(fields.values())}
    _resource_table().update_item(
        Key={"pk": f"ctx#{run_id}"},
        UpdateExpression="SET " + ", ".join(f"#f{i} = :v{i}" for i in range(len(fields))),
        ExpressionAttributeNames=names,
        ExpressionAttributeValues=_to_ddb(values),
    )


def put_context_cost(run_id: str, stage_id: str, cost_usd: float) -> None:
    """Keep one stage's cost so far in the step context (``costs.<stage id>``; Validate created
    the map)."""
    _resource_table().update_item(
        Key={"pk": f"ctx#{run_id}"},
        UpdateExpression="SET #c.#s = :v",
        ExpressionAttributeNames={"#c": "costs", "#s": stage_id},
        ExpressionAttributeValues=_to_ddb({":v": cost_usd}),
    )


def get_context(run_id: str) -> dict[str, Any] | None:
    item = _resource_table().get_item(Key={"pk": f"ctx#{run_id}"}, ConsistentRead=True).get("Item")
    if item is None:
        return None
    ctx = _from_ddb(item)
    ctx.pop("pk", None)
    return {"run_id": run_id, **ctx}


def update_run(run_id: str, **fields: Any) -> None:
    """Set top-level fields (creating the record if a manual start skipped StartRun)."""
    _set_fields(run_id, fields)


def update_existing_run(run_id: str, *, only_if: str | None = None, **fields: Any) -> bool:
    """Set top-level fields of a record that exists (never creates one); with ``only_if`` (a
    DynamoDB condition expression), only when that holds too. False when nothing was set."""
    condition = "attribute_exists(pk)" + (f" AND {only_if}" if only_if else "")
    try:
        _set_fields(run_id, fields, condition=condition)
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
            raise
        return False
    return True


def _set_fields(run_id: str, fields: dict[str, Any], condition: str | None = None) -> None:
    fields = {**fields, "updated_at": clock.now_iso()}
    names = {f"#f{i}": k for i, k in enumerate(fields)}
    values = {f":v{i}": v for i, v in enumerate(fields.values())}
    extra = {"ConditionExpression": condition} if condition else {}
    _resource_table().update_item(
        Key=run_key(run_id),
        UpdateExpression="SET " + ", ".join(f"#f{i} = :v{i}" for i in range(len(fields))),
        ExpressionAttributeNames=names,
        ExpressionAttributeValues=_to_ddb(values),
        **extra,
    )


def update_stage(run_id: str, stage_id: str, **fields: Any) -> None:
    """Set ``fields`` inside ``stages.<stage_id>`` (Validate created every stage's map)."""
    fields = {k: v for k, v in fields.items() if v is not None}
    if not fields:
        return
    names = {"#s": "stages", "#id": stage_id, **{f"#f{i}": k for i, k in enumerate(fields)}}
    values = {f":v{i}": v for i, v in enumerate(fields.values())}
    values[":now"] = clock.now_iso()
    sets = ", ".join(f"#s.#id.#f{i} = :v{i}" for i in range(len(fields)))
    _resource_table().update_item(
        Key=run_key(run_id),
        UpdateExpression=f"SET {sets}, updated_at = :now",
        ExpressionAttributeNames=names,
        ExpressionAttributeValues=_to_ddb(values),
    )


def append_to(run_id: str, field: str, *entries: Any) -> None:
    """Append entries to a list field."""
    if not entries:
        return
    if field in JSON_LIST_FIELDS:
        entries = tuple(json.dumps(e, sort_keys=True, separators=(",", ":")) for e in entries)
    _resource_table().update_item(
        Key=run_key(run_id),
        UpdateExpression="SET #f = list_append(if_not_exists(#f, :empty), :new), updated_at = :now",
        ExpressionAttributeNames={"#f": field},
        ExpressionAttributeValues=_to_ddb({":empty": [], ":new": list(entries), ":now": clock.now_iso()}),
    )


def claim_manifest(digest: str, run_id: str, location: dict[str, Any]) -> tuple[str, bool]:
    """Record that manifest version ``digest`` belongs to ``run_id``. Returns the owning run id
    and whether this call made the claim (False: the same manifest version was seen before)."""
    item = {
        "pk": f"manifest#{digest}",
        "kind": "idempotency",
        "run_id": run_id,
        "manifest": location,
        "created_at": clock.now_iso(),
    }
    try:
        _resource_table().put_item(Item=_to_ddb(item), ConditionExpression="attribute_not_exists(pk)")
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
            raise
        existing = _resource_table().get_item(Key={"pk": f"manifest#{digest}"}, ConsistentRead=True)
        return str(existing["Item"]["run_id"]), False
    return run_id, True


def list_runs(limit: int = 50) -> list[dict[str, Any]]:
    """Most recent runs first (GSI ``ByCreated``)."""
    resp = _resource_table().query(
        IndexName="ByCreated",
        KeyConditionExpression="kind = :k",
        ExpressionAttributeValues={":k": "run"},
        ScanIndexForward=False,
        Limit=limit,
    )
    return [decode(i) for i in resp.get("Items", [])]
