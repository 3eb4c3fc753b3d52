"""What the run tells people: the failure record and the end-of-run mails (their text is
:mod:`cryopilot.domain.mails`; the state machine's ``sns:publish`` states send them)."""

from typing import Any

from pydantic import BaseModel

from cryopilot.adapters import campaigns, runs
from cryopilot.adapters.observability import MetricUnit, logger, metrics
from cryopilot.adapters.settings import get_settings
from cryopilot.core import clock
from cryopilot.core.errors import RecordTooLargeError, parse_error
from cryopilot.domain import mails
from cryopilot.domain.campaign import median, time_to_structure
from cryopilot.domain.record import RunRecord


class Mail(BaseModel):
    """``$.mail``: what the state machine's ``sns:publish`` state sends."""

    subject: str
    message: str
    dataset: str = "unknown"


class FailureRecord(BaseModel):
    has_cluster: bool
    reason: str
    delete_poll_seconds: int = 30
    max_delete_polls: int = 120


def record_failure(run_id: str, error: Any) -> FailureRecord:
    etype, message = parse_error(error)
    store = runs.store()
    store.create_run(run_id, current_step="unknown")
    run = store.get_run(run_id) or RunRecord(run_id=run_id)
    step = run.current_step or "unknown"
    failure = {
        "status": "FAILED",
        "error": {"type": etype, "message": message, "step": step},
        "finished_at": clock.now_iso(),
        "finished_epoch": clock.now(),
    }
    if run.status == "CANCELLED":  # cancelled or superseded before the step that failed: it stays so
        failure = {k: v for k, v in failure.items() if k not in ("status", "error")}
    try:
        store.update_run(run_id, **failure)
    except RecordTooLargeError as exc:  # the run must not stay RUNNING: keep what its end needs
        logger.error(
            "run record too large; cut down to its essentials", extra={"run_id": run_id, "error": str(exc)}
        )
        store.replace_with_essentials(run_id, **failure)
    metrics.add_metric(name="RunsFailed", unit=MetricUnit.Count, value=1)
    has_cluster = bool(run.cluster_name) and run.cluster_state not in (None, "NOT_CREATED", "DELETED")
    settings = run.settings
    return FailureRecord(
        has_cluster=has_cluster,
        reason=f"{etype}: {message}",
        delete_poll_seconds=int(settings.get("delete_poll_seconds", 30)),
        max_delete_polls=int(settings.get("max_delete_polls", 120)),
    )


def _note_mail_on_record(run_id: str, mail: mails.Mail) -> Mail:
    """Add the mail to the record's ``mails`` and give it to the state machine to publish (also
    when the record is too large to note it: the mail matters more than the note)."""
    try:
        runs.store().append_to(
            run_id, "mails", {"kind": mail.kind, "subject": mail.subject, "at": clock.now_iso()}
        )
    except RecordTooLargeError as exc:
        logger.error("mail not noted on the run record", extra={"run_id": run_id, "error": str(exc)})
    return Mail(subject=mail.subject, message=mail.body, dataset=mail.attributes["dataset"])


def success_mail(run_id: str) -> Mail:
    store = runs.store()
    run = store.get_run(run_id) or RunRecord(run_id=run_id)
    store.update_run(run_id, status="SUCCEEDED", finished_at=clock.now_iso(), finished_epoch=clock.now())
    metrics.add_metric(name="RunsSucceeded", unit=MetricUnit.Count, value=1)
    metrics.add_metric(
        name="TimeToStructure", unit=MetricUnit.Seconds, value=mails.elapsed_seconds(run, clock.now())
    )
    if run.cost_usd is not None:
        metrics.add_metric(name="RunCost", unit=MetricUnit.NoUnit, value=float(run.cost_usd))
    settings = get_settings()
    mail = mails.succeeded(
        run,
        store.get_plan(run_id),
        region=settings.region,
        results_bucket=settings.results_bucket,
        now=clock.now(),
        campaign=campaign_context(run),
    )
    return _note_mail_on_record(run_id, mail)


def campaign_context(run: RunRecord) -> mails.CampaignContext | None:
    """What a campaign run's "done" mail compares it with: its reference and the median of the
    campaign's other runs that succeeded."""
    if not run.campaign:
        return None
    store = runs.store()
    item = campaigns.get(store, run.campaign) or {}
    reference = item.get("reference") or {}
    source = (run.reference or {}).get("source") or reference
    others = [
        m
        for m in campaigns.runs_of(store, run.campaign)
        if m.run_id != run.run_id and m.status == "SUCCEEDED"
    ]
    return mails.CampaignContext(
        reference_run=source.get("run_id"),
        reference_compound=source.get("compound"),
        others=len(others),
        median_resolution_A=median([m.resolution_A for m in others]),
        median_time_to_structure_seconds=median([time_to_structure(m) for m in others]),
    )


def failure_mail(run_id: str) -> Mail:
    store = runs.store()
    run = store.get_run(run_id) or RunRecord(run_id=run_id)
    settings = get_settings()
    mail = mails.failed(run, store.get_plan(run_id), region=settings.region, stack_name=settings.stack_name)
    return _note_mail_on_record(run_id, mail)
