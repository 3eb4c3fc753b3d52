"""Every mail a run sends, as text: pure functions from the run record (and what else they need)
to a :class:`Mail`. The steps read the record, call these, publish to SNS and note the mail on
the record (``mails``).

* :func:`succeeded` and :func:`failed`: the end of a run (the state machine publishes them);
* :func:`capacity_waiting`: a stage has waited ``CapacityMailMinutes`` for GPU capacity (once per stage);
* :func:`execution_ended`: an execution that ended outside the state machine's own catches;
* :func:`janitor`: what a janitor pass did.
"""

from collections.abc import Sequence
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from cryopilot.core.formatting import fmt_duration
from cryopilot.domain.billing import NODE_LIFETIMES, cost_text
from cryopilot.domain.record import RunRecord
from cryopilot.protocol.stage import PlannedStage

SUBJECT_MAX = 100  # SNS subject limit

#: How the execution ended, in the cleanup mail's words.
ENDED = {"ABORTED": "was stopped", "TIMED_OUT": "timed out", "FAILED": "failed"}


class Mail(BaseModel):
    """One mail: ``kind`` is what the run record's ``mails`` entry calls it; ``attributes`` are
    the SNS message attributes (subscriptions filter on ``dataset``)."""

    model_config = ConfigDict(frozen=True)

    kind: str
    subject: str
    body: str
    attributes: dict[str, str] = Field(default_factory=dict)


def _subject(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SUBJECT_MAX else text[: SUBJECT_MAX - 1] + "…"


def _console_link(run: RunRecord, region: str) -> str:
    arn = run.execution_arn or ""
    return f"https://{region}.console.aws.amazon.com/states/home?region={region}#/v2/executions/details/{arn}"


def _stage_table(run: RunRecord, plan: Sequence[PlannedStage]) -> list[str]:
    rows = [f"{'stage':<40} GPUs  queue  state       wall time"]
    for planned in plan:
        rec = run.stages.get(planned.id)
        wall = ""
        if rec is not None and rec.started_at and rec.completed_at:
            wall = fmt_duration(float(rec.completed_at) - float(rec.started_at))
        state = rec.state if rec is not None else "pending"
        rows.append(
            f"{planned.title[:40]:<40} {planned.gpus:>4}  {planned.lane or 'master':<6} {state:<11} {wall}"
        )
    return rows


def _decisions(run: RunRecord) -> list[str]:
    return [f"- {d.get('stage_id')}: {d.get('summary')}" for d in run.decisions]


def _placement(run: RunRecord, status: str) -> list[str]:
    """Where the cluster ran, and the placements that had no capacity before it."""
    lines = []
    if run.placements_tried:
        lines.append("No capacity for: " + "; ".join(t["label"] for t in run.placements_tried))
    if run.placement:
        verb = "ran in" if status == "SUCCEEDED" else "was placed in"
        lines.append(f"The cluster {verb}: {run.placement}")
    # GPU capacity at node launch (ParallelCluster's fail-over inside the cluster), as polls saw it
    lines.extend(f"Capacity ({e.get('stage')}): {e.get('note')}" for e in run.capacity_events)
    return lines


def elapsed_seconds(run: RunRecord, now: float) -> float:
    """From the run's start to its export (or its end, or now)."""
    start = run.started_epoch
    end = run.export_finished_at or run.finished_epoch or now
    return float(end) - float(start) if start else 0.0


def _report_lines(run: RunRecord, region: str) -> list[str]:
    """Where the run's report is: its S3 location and a console link to open it."""
    uri = (run.report or {}).get("html")
    if not uri:
        return []
    bucket, _, key = str(uri).removeprefix("s3://").partition("/")
    console = f"https://{region}.console.aws.amazon.com/s3/object/{bucket}?region={region}&prefix={key}"
    return [f"Report (timeline, stage table, decisions): {uri}", f"  open in the console: {console}"]


def _where_the_data_is(run: RunRecord) -> list[str]:
    """After a late failure: what was not exported, and where the work is kept."""
    exported = (run.results or {}).get("files") or []
    return [
        "The results were NOT exported." if not exported else "Some results were exported (below).",
        "The cluster's /shared volume (cryoSPARC's install and database) is kept as an EBS snapshot "
        f"when the cluster {run.cluster_name} is deleted (EC2 console, Snapshots: the snapshot of its "
        f"shared volume). The cryoSPARC project {run.cryosparc_project or ''} (every job's output) "
        "lives on the cluster's FSx for Lustre file system, which is deleted with the cluster: "
        "only what was exported to the results bucket is kept of it.",
    ]


def _what_was_exported(run: RunRecord) -> list[str]:
    """What the export took to S3 and what it left (the manifest's ``export``)."""
    results = run.results or {}
    if results.get("project_uri"):
        return [
            f"Also exported: the whole cryoSPARC project (every job's output) to {results['project_uri']};"
            " attach it to your own cryoSPARC instance. Not exported: the raw data, which stays at"
            f" {run.data_s3_uri or 'its S3 prefix'}.",
        ]
    return [
        "Not exported: the cryoSPARC project (every job's output), deleted with the cluster's FSx file"
        " system. To keep it next time, set 'export: project' in the manifest.",
    ]


class CampaignContext(BaseModel):
    """What a campaign run's "done" mail compares it with: its reference (its run and compound)
    and the median of the campaign's other runs that succeeded."""

    reference_run: str | None = None
    reference_compound: str | None = None
    others: int = 0
    median_resolution_A: float | None = None
    median_time_to_structure_seconds: float | None = None


def _label(run: RunRecord) -> str:
    """The dataset, and its compound when the manifest named one (every mail's subject)."""
    dataset = str(run.dataset or run.run_id)
    return f"{dataset} ({run.compound})" if run.compound else dataset


def _compound_lines(run: RunRecord) -> list[str]:
    lines = []
    if run.compound:
        lines.append(f"Compound: {run.compound}" + (f" (campaign {run.campaign})" if run.campaign else ""))
    elif run.campaign:
        lines.append(f"Campaign: {run.campaign}")
    if run.preset_reason and (run.campaign or run.reference):
        lines.append(f"Preset: {run.preset} ({run.preset_reason})")
    return lines


#: The verdict's problems in a few words, for the subject.
_PROBLEM_WORDS = (("did not improve", "map did NOT improve"), ("particle yield", "low particle yield"))


def _verdict_words(run: RunRecord) -> list[str]:
    problems = (run.repeat_verdict or {}).get("problems") or []
    return [words for key, words in _PROBLEM_WORDS if any(key in str(p) for p in problems)]


def _campaign_lines(run: RunRecord, campaign: CampaignContext | None, elapsed: float) -> list[str]:
    """A repeat run against its reference and the campaign's median; the verdict's problems, plainly."""
    lines: list[str] = []
    verdict = run.repeat_verdict or {}
    if verdict:
        ref_res = verdict.get("reference_resolution_A")
        res = verdict.get("resolution_A")
        who = ""
        if campaign is not None and campaign.reference_run:
            who = f" (run {campaign.reference_run}" + (
                f", compound {campaign.reference_compound})" if campaign.reference_compound else ")"
            )
        text = f"Compared with the reference{who}: resolution "
        text += f"{res:.2f} Å" if res is not None else "unknown"
        text += f" against {ref_res:.2f} Å" if ref_res is not None else " (the reference's is unknown)"
        if verdict.get("resolution_loss_A") is not None:
            text += f" ({float(verdict['resolution_loss_A']):+.2f} Å)"
        if verdict.get("particles") is not None and verdict.get("reference_particles"):
            text += (
                f"; particles {int(verdict['particles']):,} against {int(verdict['reference_particles']):,}"
                f" ({float(verdict.get('particle_yield') or 0):.0%})"
            )
        lines.append(text)
    if campaign is not None and campaign.others:
        parts = []
        if campaign.median_resolution_A is not None:
            delta = (
                f" (this run {run.resolution_A - campaign.median_resolution_A:+.2f} Å)"
                if run.resolution_A
                else ""
            )
            parts.append(f"resolution {campaign.median_resolution_A:.2f} Å{delta}")
        if campaign.median_time_to_structure_seconds is not None:
            parts.append(
                f"time to structure {fmt_duration(campaign.median_time_to_structure_seconds)}"
                f" (this run {fmt_duration(elapsed)})"
            )
        if parts:
            lines.append(
                f"Campaign median of {campaign.others} other run(s) that succeeded: " + "; ".join(parts)
            )
    problems = verdict.get("problems") or []
    lines += [f"WARNING: {p}." for p in problems]
    if problems:
        lines.append(
            "This run is NOT a success against its reference: check the map and the reference before"
            " using it (a wrong reference, another protein, or a bad dataset). To run it without the"
            " reference, name the full preset in the manifest (pipeline.preset: movies or micrographs)."
        )
    return lines


def _cost(run: RunRecord) -> str | None:
    return f"${float(run.cost_usd):,.0f}" if run.cost_usd is not None else None


def _cost_line(run: RunRecord) -> str:
    if run.cost_usd is None:
        return "not known"
    return cost_text(float(run.cost_usd), run.cost_basis, digits=0)


def _gpu_hours_line(run: RunRecord) -> list[str]:
    """The GPU-hours the nodes that ran were paid for, when the bill counts them (``node lifetimes``)."""
    if run.cost_basis != NODE_LIFETIMES or run.gpu_hours_paid is None:
        return []
    busy = f", {float(run.gpu_hours_busy):,.1f} of them busy" if run.gpu_hours_busy is not None else ""
    return [f"  GPU-hours: {float(run.gpu_hours_paid):,.1f} paid for{busy}"]


def _storage_cost_line(run: RunRecord) -> list[str]:
    """The FSx file system's estimated cost, when the report recorded it (``storage_cost_usd``)."""
    if run.storage_cost_usd is None or not run.fsx_storage_gib:
        return []
    lines = [
        f"  and the FSx for Lustre file system: about ${float(run.storage_cost_usd):,.0f}"
        f" ({run.fsx_storage_gib:,} GiB at {run.fsx_throughput_mb_per_tib} MB/s/TiB, estimated)"
    ]
    if run.snapshot_cost_usd is not None:
        lines.append(
            f"  and the /shared snapshot kept after it: about ${float(run.snapshot_cost_usd):,.2f}"
            " (estimated)"
        )
    return lines


def succeeded(
    run: RunRecord,
    plan: Sequence[PlannedStage],
    *,
    region: str,
    results_bucket: str,
    now: float,
    campaign: CampaignContext | None = None,
) -> Mail:
    """The mail of a run that made its map: resolution, time, cost, results, stages, decisions; for
    a campaign's run, its compound and how it compares with the reference and the campaign."""
    run_id = run.run_id
    dataset = run.dataset if run.dataset is not None else run_id
    res = run.resolution_A
    res_txt = f"{res:.2f} Å" if res is not None else "resolution unknown"
    elapsed = fmt_duration(elapsed_seconds(run, now))
    results = run.results or {}
    lines = [
        f"cryopilot finished run {run_id} for dataset {dataset}.",
        *_compound_lines(run),
        "",
        f"Final resolution: {res_txt} (gold-standard FSC 0.143)",
        *_campaign_lines(run, campaign, elapsed_seconds(run, now)),
        f"Time to structure: {elapsed}",
        f"Cost: {_cost_line(run)}",
        *_gpu_hours_line(run),
        *([f"  Spot: {run.spot_summary}"] if run.spot_summary else []),
        *_storage_cost_line(run),
        f"Results: {results.get('uri', '(not exported)')}",
    ]
    for f in results.get("files") or []:
        lines.append(f"  - {f['kind']}: s3://{results_bucket}/{f['key']} ({f['size']:,} bytes)")
    lines += _what_was_exported(run)
    lines += _report_lines(run, region)
    lines += _placement(run, "SUCCEEDED")
    lines += ["", "Stages:", *_stage_table(run, plan)]
    decisions = _decisions(run)
    if decisions:
        lines += ["", "Automatic decisions:", *decisions]
    lines += [
        "",
        f"The cluster {run.cluster_name} is being deleted now.",
        f"Execution: {_console_link(run, region)}",
    ]
    cost = _cost(run)
    warned = _verdict_words(run)
    done = f"done, {' and '.join(warned)}" if warned else "done"
    return Mail(
        kind="succeeded",
        subject=_subject(
            f"[cryopilot] {_label(run)} {done}: {res_txt} in {elapsed}" + (f", {cost}" if cost else "")
        ),
        body="\n".join(lines),
        attributes={"dataset": dataset},
    )


def failed(run: RunRecord, plan: Sequence[PlannedStage], *, region: str, stack_name: str) -> Mail:
    """The mail of a run that failed: where, why, what became of its cluster and its data."""
    run_id = run.run_id
    dataset = run.dataset or run_id
    error = run.error or {}
    step = error.get("step", "unknown")
    where = step.removeprefix("stage:")
    stage = run.stages.get(where)
    stage_title = stage.title if stage is not None else None
    if stage_title is None and step.startswith("stage:"):  # it failed before it was submitted
        stage_title = next((p.title for p in plan if p.id == where), None)
    stage_title = stage_title or where
    reason = error.get("message", "unknown reason")
    if run.cluster_deleted:
        cluster_line = f"The cluster {run.cluster_name} has been deleted; nothing is left running."
    elif not run.cluster_name or run.cluster_state in (None, "NOT_CREATED"):
        cluster_line = "No cluster was created."
    else:
        cluster_line = (
            f"WARNING: the cluster {run.cluster_name} could NOT be confirmed deleted "
            f"(state {run.cluster_state}); the janitor will retry. Check it."
        )
    lines = [
        f"cryopilot run {run_id} for dataset {dataset} failed.",
        *_compound_lines(run),
        "",
        f"Failed at: {stage_title}",
        f"Reason: {error.get('type', 'error')}: {reason}",
        "",
        cluster_line,
        *_placement(run, run.status),
        "",
        f"Execution and logs: {_console_link(run, region)}",
        f"Lambda logs: CloudWatch log groups /aws/lambda/{stack_name}-*",
        *_report_lines(run, region),
    ]
    if _cost(run):
        lines.append(f"Cost so far: {_cost_line(run)}")
    partial = run.partial_export or {}
    if partial.get("uri"):
        lines += [
            "",
            f"The run was stopped early: the maps made so far (stage {partial.get('stage')}) and their"
            f" particles were exported to {partial['uri']}",
        ]
    elif partial:
        lines += ["", f"The run was stopped early; nothing was exported: {partial.get('reason')}."]
    if step == "export" or (step.startswith("stage:") and run.resolution_A is not None):
        lines += ["", *_where_the_data_is(run)]
    if run.stages and step.startswith("stage:"):
        lines += ["", "Stages:", *_stage_table(run, plan)]
    subject = f"[cryopilot] {_label(run)} failed at {stage_title}: {error.get('type', 'error')}"
    return Mail(
        kind="failed", subject=_subject(subject), body="\n".join(lines), attributes={"dataset": str(dataset)}
    )


def execution_ended(run: RunRecord, status: str, action: str) -> Mail:
    """The cleanup function's mail for an execution that ended ``status`` (FAILED, TIMED_OUT,
    ABORTED) outside the state machine's catches, after it did ``action`` to the cluster."""
    dataset = str(run.dataset or run.run_id)
    name = run.cluster_name
    cluster_line = {
        "delete_requested": f"Its cluster {name} is being deleted now; the janitor confirms it is gone.",
        "delete_failed": f"ACTION NEEDED: its cluster {name} could NOT be deleted; the janitor retries.",
        "delete_pending": (
            f"Its cluster {name} was being created when it stopped, and ParallelCluster has none of that"
            " name yet; its deletion is pending: the janitor looks again and deletes it if it appears."
        ),
        "already_deleted": f"Its cluster {name} was already deleted; nothing is left running.",
        "no_cluster": "No cluster was created.",
    }[action]
    error = run.error or {}
    superseded = error.get("type") == "Superseded"
    succeeded = run.status == "SUCCEEDED"  # its "done" mail went out; then its cluster's deletion
    ended = "was superseded by a new manifest version" if superseded else ENDED[status]
    if succeeded:
        ended = "succeeded"
    subject = f"[cryopilot] {_label(run)} {ended}" + (
        " - cluster NOT deleted" if action == "delete_failed" else ""
    )
    first = (
        f"cryopilot run {run.run_id} for dataset {dataset} succeeded; its execution then ended"
        f" {status} while its cluster was being deleted."
        if succeeded
        else f"cryopilot run {run.run_id} for dataset {dataset} {ENDED[status]} "
        f"(execution {status}) at step {run.current_step or 'unknown'}."
    )
    body = "\n".join(
        [
            first,
            *_compound_lines(run),
            *([f"It was {error.get('message')}."] if superseded else []),
            "",
            cluster_line,
            "Results exported before this point stay in the results bucket; the cluster's /shared "
            "volume (cryoSPARC's database) is kept as a snapshot when the cluster is deleted; the "
            "cryoSPARC project on its FSx file system is deleted with it.",
        ]
    )
    attributes = {"event": "cleanup"}
    if dataset:
        attributes["dataset"] = dataset
    return Mail(kind="cleanup", subject=subject, body=body, attributes=attributes)


class JanitorDeed(Protocol):
    """What the janitor did to one cluster (``steps.cleanup.JanitorAction``)."""

    @property
    def cluster(self) -> str: ...
    @property
    def run_id(self) -> str | None: ...
    @property
    def reason(self) -> str: ...
    @property
    def action(self) -> str: ...
    @property
    def attempts(self) -> int: ...
    @property
    def loud(self) -> bool: ...
    @property
    def detail(self) -> str: ...


class SnapshotDeed(Protocol):
    """A /shared snapshot the janitor retired (``steps.cleanup.SnapshotAction``)."""

    @property
    def snapshot_id(self) -> str: ...
    @property
    def run_id(self) -> str | None: ...
    @property
    def age_days(self) -> float: ...
    @property
    def gib(self) -> int: ...
    @property
    def deleted(self) -> bool: ...
    @property
    def detail(self) -> str: ...


def janitor(
    checked: int,
    acted: Sequence[JanitorDeed],
    loud_after: int,
    *,
    snapshots: Sequence[SnapshotDeed] = (),
    retention_days: int = 0,
) -> Mail:
    """A janitor pass that acted on the clusters ``acted`` (of ``checked``) and retired the
    ``snapshots`` older than ``retention_days``; loud when a cluster failed to delete ``loud_after``
    times or more."""
    loud = [a for a in acted if a.loud]
    deleted = [s for s in snapshots if s.deleted]
    if loud:
        subject = f"[cryopilot] ACTION NEEDED: {len(loud)} cluster(s) cannot be deleted"
    elif acted:
        subject = f"[cryopilot] janitor: {len(acted)} cluster(s) cleaned up"
    else:
        subject = f"[cryopilot] janitor: {len(deleted)} old snapshot(s) deleted"
    lines = [
        f"The cryopilot janitor checked {checked} cluster(s) of this stack and acted on {len(acted)}:",
        "",
    ]
    for a in acted:
        lines.append(
            f"- {a.cluster} (run {a.run_id or 'unknown'}): {a.action}, attempt {a.attempts} - {a.reason}"
            + (f" ({a.detail})" if a.detail else "")
        )
    if loud:
        lines += [
            "",
            f"These clusters failed to delete {loud_after} times or more and still cost money. Delete "
            "them by hand (pcluster delete-cluster, or their CloudFormation stacks) and check the "
            "stack events for what blocks the deletion.",
        ]
    if snapshots:
        lines += [
            "",
            f"Snapshots of the runs' /shared volumes (cryoSPARC's database) older than {retention_days}"
            " days (stack parameter SnapshotRetentionDays):",
        ]
        for snap in snapshots:
            what = "deleted" if snap.deleted else f"NOT deleted ({snap.detail})"
            lines.append(
                f"- {snap.snapshot_id} (run {snap.run_id or 'unknown'}, {snap.gib} GiB,"
                f" {snap.age_days:.0f} days old): {what}"
            )
        lines.append("The runs' results in the results bucket are never deleted by cryopilot.")
    return Mail(kind="janitor", subject=subject, body="\n".join(lines), attributes={"event": "janitor"})


def capacity_waiting(
    run: RunRecord,
    stage_title: str,
    note: str,
    waited_seconds: float,
    *,
    fail_minutes: float,
) -> Mail:
    """A stage has waited ``waited_seconds`` for GPU capacity (``note``: the lane's capacity, as
    :func:`cryopilot.domain.capacity.note` words it); the run goes on waiting."""
    dataset = run.dataset if run.dataset is not None else run.run_id
    lines = [
        f"cryopilot run {run.run_id} for dataset {dataset} has waited {fmt_duration(waited_seconds)}"
        f" for GPU capacity at the stage '{stage_title}'.",
        "",
        note,
        "",
        "ParallelCluster keeps trying the queue's compute resources in turn; the run goes on waiting and"
        " needs nothing from you. If every compute resource of the queue stays down for"
        f" CapacityWaitMinutes ({fail_minutes:g} min), the run fails with CapacityError and its cluster"
        " is deleted. You will get a mail then, or when the structure is done. The cluster's head node"
        " is paid while the stage waits.",
    ]
    return Mail(
        kind="capacity_waiting",
        subject=_subject(f"[cryopilot] {dataset} waiting for GPU capacity: {stage_title}"),
        body="\n".join(lines),
        attributes={"dataset": str(dataset)},
    )
