"""The local stack's speed seams give moto's own answers (cryopilot_sim.seams)."""

from __future__ import annotations

import base64
from contextlib import ExitStack
from decimal import Decimal
from typing import Any

import boto3
from cryopilot_sim.seams import _install_dynamodb_speedups
from moto import mock_aws

#: An item shaped like a run record: nested maps and lists, numbers, booleans, nulls, empty
#: containers, binary, and the three set types.
ITEM: dict[str, Any] = {
    "pk": {"S": "run#r1"},
    "kind": {"S": "run"},
    "status": {"S": "RUNNING"},
    "cost_usd": {"N": "12.5"},
    "done": {"BOOL": False},
    "error": {"NULL": True},
    "blob": {"B": base64.b64decode(base64.b64encode(b"\x00\x01mrc"))},
    "tags": {"SS": ["a", "b"]},
    "sizes": {"NS": ["1", "2.5"]},
    "raw": {"BS": [b"x", b"y"]},
    "empty_map": {"M": {}},
    "empty_list": {"L": []},
    "stages": {
        "M": {
            "ctf": {
                "M": {
                    "state": {"S": "completed"},
                    "jobs": {"L": [{"S": "J3"}, {"S": "J4"}]},
                    "polls": {"N": "4"},
                    "note": {"NULL": True},
                    "nodes": {"L": [{"M": {"id": {"S": "i-1"}, "spot": {"BOOL": True}}}]},
                }
            },
            "nurefine": {"M": {"state": {"S": "pending"}, "resolution": {"N": "2.81"}}},
        }
    },
    "decisions": {"L": [{"S": '{"rule":"x"}'}, {"S": '{"rule":"y"}'}]},
}

PROJECTIONS: list[tuple[str, dict[str, str] | None]] = [
    ("#a, #b, #c", {"#a": "status", "#b": "cost_usd", "#c": "stages"}),
    ("#s.#c.#j", {"#s": "stages", "#c": "ctf", "#j": "jobs"}),  # a nested path
    ("stages.ctf.jobs[1], decisions[0]", None),  # list items
    ("#s.#c, #s.#n", {"#s": "stages", "#c": "ctf", "#n": "nurefine"}),  # two paths, one attribute
    ("#e, #m, #l, #x", {"#e": "error", "#m": "empty_map", "#l": "empty_list", "#x": "missing"}),
    ("#b, #t, #z, #r", {"#b": "blob", "#t": "tags", "#z": "sizes", "#r": "raw"}),
]


def _answers() -> list[Any]:
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    ddb.create_table(
        TableName="t",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    ddb.put_item(TableName="t", Item=ITEM)
    out: list[Any] = [ddb.get_item(TableName="t", Key={"pk": {"S": "run#r1"}})["Item"]]
    for expression, names in PROJECTIONS:
        kwargs: dict[str, Any] = {"ProjectionExpression": expression}
        if names:
            kwargs["ExpressionAttributeNames"] = names
        out.append(ddb.get_item(TableName="t", Key={"pk": {"S": "run#r1"}}, **kwargs).get("Item"))
    out.append(ddb.scan(TableName="t")["Items"])
    table = boto3.resource("dynamodb", region_name="us-east-1").Table("t")
    out.append(table.get_item(Key={"pk": "run#r1"})["Item"])
    table.update_item(
        Key={"pk": "run#r1"},
        UpdateExpression="SET #s.#c.#p = :p",
        ExpressionAttributeNames={"#s": "stages", "#c": "ctf", "#p": "polls"},
        ExpressionAttributeValues={":p": Decimal("5")},
    )
    out.append(table.get_item(Key={"pk": "run#r1"}, ProjectionExpression="stages")["Item"])
    return out


def test_dynamodb_speedups_answer_as_moto_does() -> None:
    with mock_aws():
        expected = _answers()
    with mock_aws(), ExitStack() as st:
        _install_dynamodb_speedups(st)
        got = _answers()
    assert got == expected
    assert expected[1] == {k: ITEM[k] for k in ("status", "cost_usd", "stages")}  # the check can tell
