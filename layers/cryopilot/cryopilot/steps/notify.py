"""What the run tells people: the failure record and the mails (composed here, sent by the state
machine's ``sns:publish`` states)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from cryopilot.adapters import runs
from cryopilot.adapters.observability import MetricUnit, metrics
from cryopilot.adapters.settings import get_settings
from cryopilot.core import clock
from cryopilot.core.formatting import fmt_duration

SUBJECT_MAX = 100  # SNS subject limit


class Mail(BaseModel):
    subject: str
    message: str
    dataset: str = "unknown"


class FailureRecord(BaseModel):
    has_cluster: bool
    reason: str
    delete_poll_seconds: int = 30
    max_delete_polls: int = 120


def _subject(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SUBJECT_MAX else text[: SUBJECT_MAX - 1] + "…"


def parse_error(error: Any) -> tuple[str, str]:
    """(error type, message) from a Catch's ``$.error`` (``Error`` and ``Cause``)."""
    if not isinstance(error, dict):
        return "UnknownError", str(error)
    etype = str(error.get("Error") or "UnknownError")
    cause = error.get("Cause")
    message = str(cause or "")
    if isinstance(cause, str):
        try:
            doc = json.loads(cause)
        except json.JSONDecodeError:
            doc = None
        if isinstance(doc, dict):
            message = str(doc.get("errorMessage") or doc.get("Message") or message)
            etype = str(doc.get("errorType") or etype)
    if etype == "States.Timeout" and not message:
        message = "a step took longer than its timeout"
    return etype, message[:2000]


def record_failure(run_id: str, error: Any) -> FailureRecord:
    etype, message = parse_error(error)
    runs.create_run(run_id, current_step="unknown")
    run = runs.get_run(run_id) or {}
    step = run.get("current_step") or "unknown"
    runs.update_run(
        run_id,
        status="FAILED",
        error={"type": etype, "message": message, "step": step},
        finished_at=clock.now_iso(),
        finished_epoch=clock.now(),
    )
    metrics.add_metric(name="RunsFailed", unit=MetricUnit.Count, value=1)
    has_cluster = bool(run.get("cluster_name")) and run.get("cluster_state") not in (
        None,
        "NOT_CREATED",
        "DELETED",
    )
    settings = run.get("settings") or {}
    return FailureRecord(
        has_cluster=has_cluster,
        reason=f"{etype}: {message}",
        delete_poll_seconds=int(settings.get("delete_poll_seconds", 30)),
        max_delete_polls=int(settings.get("max_delete_polls", 120)),
    )


def _console_link(run: dict[str, Any]) -> str:
    arn = run.get("execution_arn") or ""
    region = get_settings().region
    return f"https://{region}.console.aws.amazon.com/states/home?region={region}#/v2/executions/details/{arn}"


def _stage_table(run: dict[str, Any]) -> list[str]:
    rows = [f"{'stage':<40} GPUs  queue  state       wall time"]
    stages = run.get("stages") or {}
    for planned in runs.get_plan(run["run_id"]) if run.get("run_id") else []:
        rec = stages.get(planned["id"], {})
        wall = ""
        if rec.get("started_at") and rec.get("completed_at"):
            wall = fmt_duration(float(rec["completed_at"]) - float(rec["started_at"]))
        rows.append(
            f"{planned['title'][:40]:<40} {planned.get('gpus', 0):>4}  {planned.get('lane') or 'master':<6} "
            f"{rec.get('state', 'pending'):<11} {wall}"
        )
    return rows


def _decisions(run: dict[str, Any]) -> list[str]:
    return [f"- {d.get('stage_id')}: {d.get('summary')}" for d in run.get("decisions") or []]


def _placement(run: dict[str, Any]) -> list[str]:
    """Where the cluster ran, and the placements that had no capacity before it."""
    lines = []
    tried = run.get("placements_tried") or []
    if tried:
        lines.append("No capacity for: " + "; ".join(t["label"] for t in tried))
    if run.get("placement"):
        verb = "ran in" if run.get("status") == "SUCCEEDED" else "was placed in"
        lines.append(f"The cluster {verb}: {run['placement']}")
    return lines


def _elapsed(run: dict[str, Any]) -> float:
    start = run.get("started_epoch")
    end = run.get("export_finished_at") or run.get("finished_epoch") or clock.now()
    return float(end) - float(start) if start else 0.0


def _report_lines(run: dict[str, Any]) -> list[str]:
    """Where the run's report is: its S3 location and a console link to open it."""
    uri = (run.get("report") or {}).get("html")
    if not uri:
        return []
    bucket, _, key = str(uri).removeprefix("s3://").partition("/")
    region = get_settings().region
    console = f"https://{region}.console.aws.amazon.com/s3/object/{bucket}?region={region}&prefix={key}"
    return [f"Report (timeline, stage table, decisions): {uri}", f"  open in the console: {console}"]


def _where_the_data_is(run: dict[str, Any]) -> list[str]:
    """After a late failure: what was not exported, and where the work is kept."""
    exported = (run.get("results") or {}).get("files") or []
    return [
        "The results were NOT exported." if not exported else "Some results were exported (below).",
        "Nothing is lost: the cluster's /shared volume (cryoSPARC's database and project "
        f"{run.get('cryosparc_project') or ''}, every job's output) is kept as an EBS snapshot when the "
        f"cluster {run.get('cluster_name')} is deleted (EC2 console, Snapshots: the snapshot of its "
        "shared volume). Restore it to a volume, or start a run on it, to export by hand.",
    ]


def _cost(run: dict[str, Any]) -> str | None:
    cost = run.get("cost_usd")
    return f"${float(cost):,.0f}" if isinstance(cost, int | float) else None


def _cost_line(run: dict[str, Any]) -> str:
    from cryopilot.domain.report import cost_text

    cost = run.get("cost_usd")
    if not isinstance(cost, int | float):
        return "not known"
    return cost_text(float(cost), run.get("cost_basis"), digits=0)


def _remember(run_id: str, mail: Mail, kind: str) -> Mail:
    runs.append_to(run_id, "mails", {"kind": kind, "subject": mail.subject, "at": clock.now_iso()})
    return mail


def success_mail(run_id: str) -> Mail:
    run = runs.get_run(run_id) or {"run_id": run_id}
    runs.update_run(run_id, status="SUCCEEDED", finished_at=clock.now_iso(), finished_epoch=clock.now())
    metrics.add_metric(name="RunsSucceeded", unit=MetricUnit.Count, value=1)
    metrics.add_metric(name="TimeToStructure", unit=MetricUnit.Seconds, value=_elapsed(run))
    if isinstance(run.get("cost_usd"), int | float):
        metrics.add_metric(name="RunCost", unit=MetricUnit.NoUnit, value=float(run["cost_usd"]))
    dataset = run.get("dataset", run_id)
    res = run.get("resolution_A")
    res_txt = f"{res:.2f} Å" if isinstance(res, int | float) else "resolution unknown"
    elapsed = fmt_duration(_elapsed(run))
    results = run.get("results") or {}
    lines = [
        f"cryopilot finished run {run_id} for dataset {dataset}.",
        "",
        f"Final resolution: {res_txt} (gold-standard FSC 0.143)",
        f"Time to structure: {elapsed}",
        f"Cost: {_cost_line(run)}",
        f"Results: {results.get('uri', '(not exported)')}",
    ]
    for f in results.get("files") or []:
        lines.append(
            f"  - {f['kind']}: s3://{get_settings().results_bucket}/{f['key']} ({f['size']:,} bytes)"
        )
    lines += _report_lines(run)
    lines += _placement({**run, "status": "SUCCEEDED"})
    lines += ["", "Stages:", *_stage_table(run)]
    decisions = _decisions(run)
    if decisions:
        lines += ["", "Automatic decisions:", *decisions]
    lines += [
        "",
        f"The cluster {run.get('cluster_name')} is being deleted now.",
        f"Execution: {_console_link(run)}",
    ]
    mail = Mail(
        subject=_subject(
            f"[cryopilot] {dataset} done: {res_txt} in {elapsed}" + (f", {_cost(run)}" if _cost(run) else "")
        ),
        message="\n".join(lines),
        dataset=dataset,
    )
    return _remember(run_id, mail, "succeeded")


def failure_mail(run_id: str) -> Mail:
    run = runs.get_run(run_id) or {"run_id": run_id}
    dataset = run.get("dataset") or run_id
    error = run.get("error") or {}
    step = error.get("step", "unknown")
    where = step.removeprefix("stage:")
    stage_title = (run.get("stages") or {}).get(where, {}).get("title")
    if stage_title is None and step.startswith("stage:"):  # it failed before it was submitted
        stage_title = next((p["title"] for p in runs.get_plan(run_id) if p.get("id") == where), None)
    stage_title = stage_title or where
    reason = error.get("message", "unknown reason")
    if run.get("cluster_deleted"):
        cluster_line = f"The cluster {run.get('cluster_name')} has been deleted; nothing is left running."
    elif not run.get("cluster_name") or run.get("cluster_state") in (None, "NOT_CREATED"):
        cluster_line = "No cluster was created."
    else:
        cluster_line = (
            f"WARNING: the cluster {run.get('cluster_name')} could NOT be confirmed deleted "
            f"(state {run.get('cluster_state')}); the janitor will retry. Check it."
        )
    lines = [
        f"cryopilot run {run_id} for dataset {dataset} failed.",
        "",
        f"Failed at: {stage_title}",
        f"Reason: {error.get('type', 'error')}: {reason}",
        "",
        cluster_line,
        *_placement(run),
        "",
        f"Execution and logs: {_console_link(run)}",
        f"Lambda logs: CloudWatch log groups /aws/lambda/{get_settings().stack_name}-*",
        *_report_lines(run),
    ]
    if _cost(run):
        lines.append(f"Cost so far: {_cost_line(run)}")
    partial = run.get("partial_export") or {}
    if partial.get("uri"):
        lines += [
            "",
            f"The run was stopped early: the maps made so far (stage {partial.get('stage')}) and their"
            f" particles were exported to {partial['uri']}",
        ]
    elif partial:
        lines += ["", f"The run was stopped early; nothing was exported: {partial.get('reason')}."]
    if step == "export" or (step.startswith("stage:") and run.get("resolution_A") is not None):
        lines += ["", *_where_the_data_is(run)]
    if run.get("stages") and step.startswith("stage:"):
        lines += ["", "Stages:", *_stage_table(run)]
    subject = f"[cryopilot] {dataset} failed at {stage_title}: {error.get('type', 'error')}"
    mail = Mail(subject=_subject(subject), message="\n".join(lines), dataset=str(dataset))
    return _remember(run_id, mail, "failed")
