"""The run table in DynamoDB: the run record, read by the CLI, written by every step.

Step Functions is the source of truth for *what happens*; the record is the readable account of
it (:mod:`cryopilot.domain.record` declares its schema). Items: ``pk = "run#<run id>"`` for runs,
``ctx#<run id>`` and ``plan#<run id>`` for a run's step context and plan; ``pk = "manifest#<digest>"``
for idempotency records; ``pk = "folder#<digest>"`` for the current run of a dataset folder;
``pk = "admission"`` for the slots and the queue of waiting runs
(:mod:`cryopilot.adapters.admission`).

:class:`RunStore` owns every read and write of the run, ctx, plan and manifest items of one table;
the Lambdas take theirs from :func:`store` (the stack's table), the operator's command line builds
its own.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

from botocore.exceptions import ClientError

from cryopilot.adapters import aws
from cryopilot.adapters.settings import get_settings
from cryopilot.core import clock
from cryopilot.core.errors import RecordTooLargeError
from cryopilot.core.status import RUN_OVER
from cryopilot.domain.record import RunContext, RunRecord
from cryopilot.protocol.stage import PlannedStage


def to_ddb(value: Any) -> Any:
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

#: How many runs' plans a store keeps (a plan never changes once Validate wrote it).
PLAN_CACHE_SIZE = 64


def decode(item: dict[str, Any]) -> dict[str, Any]:
    """A stored run item as Python values: numbers as int/float, JSON-text entries as dicts."""
    record: dict[str, Any] = _from_ddb(item)
    for name in JSON_LIST_FIELDS:
        if isinstance(record.get(name), list):
            record[name] = [json.loads(e) if isinstance(e, str) else e for e in record[name]]
    return record


def run_key(run_id: str) -> dict[str, str]:
    return {"pk": f"run#{run_id}"}


def _condition_failed(exc: ClientError) -> bool:
    return bool(exc.response["Error"]["Code"] == "ConditionalCheckFailedException")


def _too_large(exc: ClientError) -> bool:
    """DynamoDB's answer to a write that would make an item exceed 400 KB (a ValidationException
    whose message says "Item size ... has exceeded the maximum allowed size")."""
    error = exc.response.get("Error", {})
    return error.get("Code") == "ValidationException" and "size" in str(error.get("Message", "")).lower()


def too_large_error(item: str, fields: dict[str, Any]) -> RecordTooLargeError:
    """One line naming the item and its largest field being written."""
    sizes = {k: len(json.dumps(v, default=str)) for k, v in fields.items() if k != "updated_at"}
    largest = max(sizes, key=lambda k: sizes[k]) if sizes else "?"
    return RecordTooLargeError(
        f"{item}: writing {largest} ({sizes.get(largest, 0):,} bytes) would make it larger than "
        "DynamoDB's 400 KB item limit"
    )


@contextmanager
def _sized(item: str, fields: dict[str, Any]) -> Iterator[None]:
    """A write of ``fields`` to ``item``: DynamoDB's item-size refusal becomes a one-line
    :class:`RecordTooLargeError` naming the item and the field (never a raw ClientError)."""
    try:
        yield
    except ClientError as exc:
        if _too_large(exc):
            raise too_large_error(item, fields) from None
        raise


#: What a run record keeps when it has grown too large to take another write (see
#: :meth:`RunStore.replace_with_essentials`): enough for the failure mail, the cleanup and the CLI.
ESSENTIAL_FIELDS = (
    "kind", "run_id", "status", "created_at", "dataset", "trigger", "execution_arn", "manifest",
    "data_s3_uri", "notify", "preset", "layout", "settings", "started_at", "started_epoch",
    "current_step", "current_stage", "cluster_name", "cluster_state", "cluster_deleted",
    "cluster_deleted_at", "delete_requested_at", "head_node_instance_id", "admitted_at",
    "queued_at", "slot_released_at", "cost_usd", "error", "finished_at", "finished_epoch",
)  # fmt: skip


class RunStore:
    """The run, ctx, plan and manifest-claim items of one run table (a boto3 ``Table``).

    ``cache_plans``: keep the plans read (for the life of a Lambda container)."""

    def __init__(self, table: Any, *, cache_plans: bool = False) -> None:
        self.table = table
        self._plans: OrderedDict[str, tuple[PlannedStage, ...]] | None = (
            OrderedDict() if cache_plans else None
        )

    # -------------------------------------------------------------- the run item
    def create_run(self, run_id: str, **fields: Any) -> bool:
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
            with _sized(f"run record {run_id}", fields):
                self.table.put_item(Item=to_ddb(item), ConditionExpression="attribute_not_exists(pk)")
        except ClientError as exc:
            if _condition_failed(exc):
                return False
            raise
        return True

    def get_run_item(self, run_id: str, fields: list[str] | None = None) -> dict[str, Any] | None:
        """The stored record as Python values (:func:`decode`), or only ``fields`` of it
        (top-level attribute names): for readers that take the record as it is stored."""
        kwargs: dict[str, Any] = {"Key": run_key(run_id), "ConsistentRead": True}
        if fields:
            names = {f"#p{i}": f for i, f in enumerate(["run_id", *fields])}
            kwargs["ProjectionExpression"] = ", ".join(names)
            kwargs["ExpressionAttributeNames"] = names
        item = self.table.get_item(**kwargs).get("Item")
        return decode(item) if item else None

    def get_run(self, run_id: str, fields: list[str] | None = None) -> RunRecord | None:
        """The run record, or only ``fields`` of it (the others at their defaults)."""
        item = self.get_run_item(run_id, fields)
        return RunRecord.model_validate(item) if item is not None else None

    def list_runs(self, limit: int = 50) -> list[RunRecord]:
        """Most recent runs first (GSI ``ByCreated``)."""
        resp = self.table.query(
            IndexName="ByCreated",
            KeyConditionExpression="kind = :k",
            ExpressionAttributeValues={":k": "run"},
            ScanIndexForward=False,
            Limit=limit,
        )
        return [RunRecord.model_validate(decode(i)) for i in resp.get("Items", [])]

    def update_run(self, run_id: str, **fields: Any) -> None:
        """Set top-level fields (creating the record if a manual start skipped StartRun)."""
        self._set_fields(run_id, fields)

    def replace_with_essentials(self, run_id: str, **fields: Any) -> None:
        """Rewrite a record too large to take another update: keep :data:`ESSENTIAL_FIELDS`
        (mails, decisions and stage details are dropped), set ``fields``, and say so
        (``record_truncated``). The failure path and the cleanup use it so that a run that failed
        never stays RUNNING for want of space."""
        item = self.table.get_item(Key=run_key(run_id), ConsistentRead=True).get("Item") or {}
        kept = {k: v for k, v in item.items() if k in ESSENTIAL_FIELDS}
        kept.update(to_ddb({**fields, "record_truncated": True, "updated_at": clock.now_iso()}))
        self.table.put_item(Item={**run_key(run_id), "kind": "run", "run_id": run_id, **kept})

    def update_existing_run(self, run_id: str, *, only_if: str | None = None, **fields: Any) -> bool:
        """Set top-level fields of a record that exists (never creates one); with ``only_if`` (a
        DynamoDB condition expression), only when that holds too. False when nothing was set."""
        condition = "attribute_exists(pk)" + (f" AND {only_if}" if only_if else "")
        try:
            self._set_fields(run_id, fields, condition=condition)
        except ClientError as exc:
            if not _condition_failed(exc):
                raise
            return False
        return True

    def update_run_unless_over(self, run_id: str, **fields: Any) -> bool:
        """Set top-level fields only while the run is not over (its ``status`` not final): a step
        that starts something must not undo a cancel or a supersede that came first. False when
        the run was over already."""
        over = {f":over{i}": status for i, status in enumerate(sorted(RUN_OVER))}
        condition = f"attribute_exists(pk) AND (attribute_not_exists(#st) OR NOT #st IN ({', '.join(over)}))"
        try:
            self._set_fields(run_id, fields, condition=condition, names={"#st": "status"}, values=over)
        except ClientError as exc:
            if not _condition_failed(exc):
                raise
            return False
        return True

    def update_run_if_cluster_state(self, run_id: str, expected: tuple[str, ...], **fields: Any) -> bool:
        """Set top-level fields only while the record's ``cluster_state`` is one of ``expected``
        (two writers racing on the cluster: the create step and a deletion). False when it was not."""
        states = {f":cs{i}": state for i, state in enumerate(expected)}
        condition = f"attribute_exists(pk) AND #cs IN ({', '.join(states)})"
        try:
            self._set_fields(
                run_id, fields, condition=condition, names={"#cs": "cluster_state"}, values=states
            )
        except ClientError as exc:
            if not _condition_failed(exc):
                raise
            return False
        return True

    def _set_fields(
        self,
        run_id: str,
        fields: dict[str, Any],
        condition: str | None = None,
        *,
        names: dict[str, str] | None = None,
        values: dict[str, Any] | None = None,
    ) -> None:
        fields = {**fields, "updated_at": clock.now_iso()}
        extra: dict[str, Any] = {"ConditionExpression": condition} if condition else {}
        names = {**(names or {}), **{f"#f{i}": k for i, k in enumerate(fields)}}
        values = {**(values or {}), **{f":v{i}": v for i, v in enumerate(fields.values())}}
        with _sized(f"run record {run_id}", fields):
            self.table.update_item(
                Key=run_key(run_id),
                UpdateExpression="SET " + ", ".join(f"#f{i} = :v{i}" for i in range(len(fields))),
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=to_ddb(values),
                **extra,
            )

    def forget_admission(self, run_id: str, step: str) -> None:
        """Remove ``admitted_at`` and ``admitted_epoch`` and set ``current_step`` (an admission
        whose start failed), when the record exists."""
        try:
            self.table.update_item(
                Key=run_key(run_id),
                UpdateExpression="REMOVE admitted_at, admitted_epoch SET current_step = :step",
                ConditionExpression="attribute_exists(pk)",
                ExpressionAttributeValues={":step": step},
            )
        except ClientError as exc:
            if not _condition_failed(exc):
                raise

    def mark_cancelled(self, run_id: str, error: dict[str, Any]) -> None:
        """Status CANCELLED, and ``error`` unless the record has one already."""
        self.table.update_item(
            Key=run_key(run_id),
            UpdateExpression="SET #s = :s, #e = if_not_exists(#e, :e)",
            ExpressionAttributeNames={"#s": "status", "#e": "error"},
            ExpressionAttributeValues={":s": "CANCELLED", ":e": error},
        )

    def update_stage(self, run_id: str, stage_id: str, **fields: Any) -> None:
        """Set ``fields`` inside ``stages.<stage_id>`` (Validate created every stage's map)."""
        fields = {k: v for k, v in fields.items() if v is not None}
        if not fields:
            return
        names = {"#s": "stages", "#id": stage_id, **{f"#f{i}": k for i, k in enumerate(fields)}}
        values = {f":v{i}": v for i, v in enumerate(fields.values())}
        values[":now"] = clock.now_iso()
        sets = ", ".join(f"#s.#id.#f{i} = :v{i}" for i in range(len(fields)))
        with _sized(f"run record {run_id}", {f"stages.{stage_id}.{k}": v for k, v in fields.items()}):
            self.table.update_item(
                Key=run_key(run_id),
                UpdateExpression=f"SET {sets}, updated_at = :now",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=to_ddb(values),
            )

    def append_to(self, run_id: str, field: str, *entries: Any) -> None:
        """Append entries to a list field."""
        if not entries:
            return
        if field in JSON_LIST_FIELDS:
            entries = tuple(json.dumps(e, sort_keys=True, separators=(",", ":")) for e in entries)
        with _sized(f"run record {run_id}", {field: list(entries)}):
            self.table.update_item(
                Key=run_key(run_id),
                UpdateExpression="SET #f = list_append(if_not_exists(#f, :empty), :new), updated_at = :now",
                ExpressionAttributeNames={"#f": field},
                ExpressionAttributeValues=to_ddb(
                    {":empty": [], ":new": list(entries), ":now": clock.now_iso()}
                ),
            )

    # -------------------------------------------------------------- the plan
    def put_plan(self, run_id: str, plan: list[PlannedStage]) -> None:
        """Store the run's planned stages in an item of their own (``plan#<run id>``): it is the
        largest and the most read part of a run, and never changes once Validate wrote it."""
        stages = [s.model_dump(mode="json") for s in plan]
        with _sized(f"plan of run {run_id}", {"plan": stages}):
            self.table.put_item(
                Item=to_ddb({"pk": f"plan#{run_id}", "kind": "plan", "run_id": run_id, "plan": stages})
            )

    def get_plan(self, run_id: str) -> list[PlannedStage]:
        """The run's planned stages ([] before Validate wrote them); kept once read when the
        store caches plans."""
        if self._plans is not None and run_id in self._plans:
            self._plans.move_to_end(run_id)
            return list(self._plans[run_id])
        item = self.table.get_item(Key={"pk": f"plan#{run_id}"}, ConsistentRead=True).get("Item")
        plan = tuple(PlannedStage.model_validate(s) for s in _from_ddb(item)["plan"]) if item else ()
        if self._plans is not None and plan:
            self._plans[run_id] = plan
            while len(self._plans) > PLAN_CACHE_SIZE:
                self._plans.popitem(last=False)
        return list(plan)

    # -------------------------------------------------------------- the step context
    def put_context(self, run_id: str, **fields: Any) -> None:
        """Set fields of the run's step context (``ctx#<run id>``): the few values every stage
        poll reads (head node, waits). A small item of its own, so a poll never reads the whole
        record, which grows with every stage and decision."""
        names = {f"#f{i}": k for i, k in enumerate(fields)}
        values = {f":v{i}": v for i, v in enumerate(fields.values())}
        with _sized(f"step context of run {run_id}", fields):
            self.table.update_item(
                Key={"pk": f"ctx#{run_id}"},
                UpdateExpression="SET " + ", ".join(f"#f{i} = :v{i}" for i in range(len(fields))),
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=to_ddb(values),
            )

    def put_context_cost(self, run_id: str, stage_id: str, cost_usd: float) -> None:
        """Keep one stage's cost so far in the step context (``costs.<stage id>``; Validate
        created the map)."""
        self.table.update_item(
            Key={"pk": f"ctx#{run_id}"},
            UpdateExpression="SET #c.#s = :v",
            ExpressionAttributeNames={"#c": "costs", "#s": stage_id},
            ExpressionAttributeValues=to_ddb({":v": cost_usd}),
        )

    def get_context(self, run_id: str) -> RunContext | None:
        item = self.table.get_item(Key={"pk": f"ctx#{run_id}"}, ConsistentRead=True).get("Item")
        if item is None:
            return None
        ctx = _from_ddb(item)
        ctx.pop("pk", None)
        return RunContext.model_validate({"run_id": run_id, **ctx})

    # -------------------------------------------------------------- manifest claims
    def claim_manifest(self, digest: str, run_id: str, location: dict[str, Any]) -> tuple[str, bool]:
        """Record that manifest version ``digest`` belongs to ``run_id``. Returns the owning run
        id and whether this call made the claim (False: the same manifest version was seen before)."""
        item = {
            "pk": f"manifest#{digest}",
            "kind": "idempotency",
            "run_id": run_id,
            "manifest": location,
            "created_at": clock.now_iso(),
        }
        try:
            self.table.put_item(Item=to_ddb(item), ConditionExpression="attribute_not_exists(pk)")
        except ClientError as exc:
            if not _condition_failed(exc):
                raise
            existing = self.table.get_item(Key={"pk": f"manifest#{digest}"}, ConsistentRead=True)
            return str(existing["Item"]["run_id"]), False
        return run_id, True

    def take_folder(self, folder_digest: str, run_id: str, location: dict[str, Any]) -> str | None:
        """Make ``run_id`` the current run of a dataset folder (``folder#<digest>``); the run that
        was current before, if another."""
        resp = self.table.update_item(
            Key={"pk": f"folder#{folder_digest}"},
            UpdateExpression="SET #k = :kind, run_id = :run, manifest = :loc, updated_at = :now",
            ExpressionAttributeNames={"#k": "kind"},
            ExpressionAttributeValues=to_ddb(
                {":kind": "folder", ":run": run_id, ":loc": location, ":now": clock.now_iso()}
            ),
            ReturnValues="UPDATED_OLD",
        )
        previous = resp.get("Attributes", {}).get("run_id")
        return str(previous) if previous and previous != run_id else None


@aws.cached_factory
def store() -> RunStore:
    """The stack's run table (``Settings.runs_table``), built once per Lambda container; its plan
    cache lives as long (``aws.reset`` forgets both)."""
    return RunStore(aws.resource("dynamodb").Table(get_settings().runs_table), cache_plans=True)


def table() -> Any:
    """The run table (boto3 ``Table``), for the modules that keep items of their own in it."""
    return store().table
