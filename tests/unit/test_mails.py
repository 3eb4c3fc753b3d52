"""Every kind of mail, rendered by :mod:`cryopilot.domain.mails` from fixed run records, is the
text the controller sent before the mails moved there (``mail_golden.json``: subject, body and
attributes, byte for byte)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryopilot.domain import mails
from cryopilot.domain.record import RunRecord
from cryopilot.protocol.stage import PlannedStage
from cryopilot.steps.cleanup import LOUD_AFTER, JanitorAction

from tests.unit import mail_cases as cases

GOLDEN: dict[str, dict[str, str]] = json.loads(
    (Path(__file__).parent / "mail_golden.json").read_text(encoding="utf-8")
)
PLAN = [PlannedStage.model_validate(s) for s in cases.PLAN]


def _record(doc: dict[str, Any], run_id: str) -> RunRecord:
    return RunRecord.model_validate({**doc, "run_id": run_id})


def test_every_golden_mail_is_checked() -> None:
    names = {"succeeded"}
    names |= {f"failed:{n}" for n, _ in cases.FAILURES}
    names |= {f"cleanup:{n}" for n, *_ in cases.CLEANUPS}
    names |= {f"janitor:{n}" for n, *_ in cases.JANITORS}
    assert names == set(GOLDEN)


def test_success_mail() -> None:
    run = _record(cases.SUCCEEDED, cases.SUCCEEDED["run_id"])
    mail = mails.succeeded(
        run, PLAN, region=cases.REGION, results_bucket=cases.RESULTS_BUCKET, now=2_000_000_000.0
    )
    want = GOLDEN["succeeded"]
    assert (mail.kind, mail.subject, mail.body) == ("succeeded", want["subject"], want["message"])
    assert mail.attributes == {"dataset": want["dataset"]}


@pytest.mark.parametrize("index", range(len(cases.FAILURES)))
def test_failure_mail(index: int) -> None:
    name, doc = cases.FAILURES[index]
    run = _record(doc, f"{doc['run_id']}-{index}")
    mail = mails.failed(run, PLAN, region=cases.REGION, stack_name=cases.STACK)
    want = GOLDEN[f"failed:{name}"]
    assert (mail.kind, mail.subject, mail.body) == ("failed", want["subject"], want["message"])
    assert mail.attributes == {"dataset": want["dataset"]}


@pytest.mark.parametrize("index", range(len(cases.CLEANUPS)))
def test_cleanup_mail(index: int) -> None:
    name, doc, status, action = cases.CLEANUPS[index]
    mail = mails.execution_ended(_record(doc, f"{doc['run_id']}-c{index}"), status, action)
    want = GOLDEN[f"cleanup:{name}"]
    assert (mail.kind, mail.subject, mail.body) == ("cleanup", want["subject"], want["message"])
    assert mail.attributes == {"event": "cleanup", "dataset": want["dataset"]}


@pytest.mark.parametrize("index", range(len(cases.JANITORS)))
def test_janitor_mail(index: int) -> None:
    name, checked, actions = cases.JANITORS[index]
    acted = [JanitorAction(**a) for a in actions if a["action"] != "deleting"]
    mail = mails.janitor(checked, acted, LOUD_AFTER)
    want = GOLDEN[f"janitor:{name}"]
    assert (mail.kind, mail.subject, mail.body) == ("janitor", want["subject"], want["message"])
    assert mail.attributes == {"event": "janitor"}


# ------------------------------------------------------------------ through the steps and the store
@pytest.fixture
def stored(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[dict[str, Any]], str]]:
    """A run table on moto; the fixture's function stores a record and the plan, as the steps
    would have written them."""
    import boto3
    from cryopilot.adapters import aws, runs
    from cryopilot.adapters.settings import get_settings
    from moto import mock_aws

    monkeypatch.setenv("CRYOPILOT_RESULTS_BUCKET", cases.RESULTS_BUCKET)
    monkeypatch.setenv("CRYOPILOT_STACK_NAME", cases.STACK)
    monkeypatch.setenv("CRYOPILOT_RUNS_TABLE", "mails-test")
    monkeypatch.setenv("AWS_REGION", cases.REGION)
    with mock_aws():
        boto3.client("dynamodb", region_name=cases.REGION).create_table(
            TableName="mails-test",
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
        )
        get_settings.cache_clear()
        aws.reset()

        def put(doc: dict[str, Any]) -> str:
            store = runs.store()
            store.create_run(doc["run_id"], **{k: v for k, v in doc.items() if k != "run_id"})
            store.put_plan(doc["run_id"], PLAN)
            return str(doc["run_id"])

        yield put
        aws.reset()


def test_the_steps_send_the_same_mails_and_note_them_on_the_record(
    stored: Callable[[dict[str, Any]], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from cryopilot.adapters import runs
    from cryopilot.steps import cleanup, notify

    run_id = stored(cases.SUCCEEDED)
    assert notify.success_mail(run_id).model_dump() == GOLDEN["succeeded"]
    for index, (name, doc) in enumerate(cases.FAILURES):
        run_id = stored({**doc, "run_id": f"{doc['run_id']}-{index}"})
        assert notify.failure_mail(run_id).model_dump() == GOLDEN[f"failed:{name}"]
    sent: list[mails.Mail] = []
    monkeypatch.setattr(cleanup, "_publish", sent.append)
    for index, (name, doc, status, action) in enumerate(cases.CLEANUPS):
        run_id = stored({**doc, "run_id": f"{doc['run_id']}-c{index}"})
        record = runs.store().get_run(run_id)
        assert record is not None
        assert cleanup._mail_end(record, status, action)
        want = GOLDEN[f"cleanup:{name}"]
        assert (sent[-1].subject, sent[-1].body) == (want["subject"], want["message"])
        noted = runs.store().get_run(run_id)
        assert noted is not None
        assert [(m["kind"], m["subject"]) for m in noted.mails] == [("cleanup", want["subject"])]
    record = runs.store().get_run(cases.SUCCEEDED["run_id"])
    assert record is not None
    assert record.status == "SUCCEEDED"
    assert [(m["kind"], m["subject"]) for m in record.mails] == [
        ("succeeded", GOLDEN["succeeded"]["subject"])
    ]


def test_cleanup_mail_of_a_superseded_run_and_of_a_deletion_pending_on_its_create() -> None:
    superseded = _record(
        {
            **cases.BASE,
            "status": "CANCELLED",
            "error": {
                "type": "Superseded",
                "message": "superseded by a new version of its manifest (s3://b/k, version v2):"
                " run cgrp-2 replaces it",
                "step": "stage:motion",
            },
        },
        "cgrp-1",
    )
    mail = mails.execution_ended(superseded, "ABORTED", "delete_requested")
    dataset = cases.BASE["dataset"]
    assert mail.subject == f"[cryopilot] {dataset} was superseded by a new manifest version"
    assert "It was superseded by a new version of its manifest (s3://b/k, version v2)" in mail.body
    assert "run cgrp-2 replaces it." in mail.body
    assert "is being deleted now" in mail.body

    pending = mails.execution_ended(
        _record({**cases.BASE, "status": "CANCELLED"}, "r"), "ABORTED", "delete_pending"
    )
    assert pending.subject == f"[cryopilot] {dataset} was stopped"
    assert "its deletion is pending" in pending.body
    assert "nothing is left running" not in pending.body


def test_success_mail_adds_the_fsx_file_systems_cost_when_the_report_recorded_it() -> None:
    doc = {**cases.SUCCEEDED, "fsx_storage_gib": 4800, "fsx_throughput_mb_per_tib": 250}
    plain = mails.succeeded(
        _record(doc, doc["run_id"]), PLAN, region=cases.REGION, results_bucket=cases.RESULTS_BUCKET, now=2e9
    )
    assert "FSx for Lustre" not in plain.body  # no figure recorded: no line
    doc["storage_cost_usd"] = 36.46
    mail = mails.succeeded(
        _record(doc, doc["run_id"]), PLAN, region=cases.REGION, results_bucket=cases.RESULTS_BUCKET, now=2e9
    )
    lines = mail.body.splitlines()
    cost = next(i for i, line in enumerate(lines) if line.startswith("Cost: "))
    assert (
        lines[cost + 1]
        == "  and the FSx for Lustre file system: about $36 (4,800 GiB at 250 MB/s/TiB, estimated)"
    )
