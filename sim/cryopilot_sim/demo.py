"""``cryopilot demo``: one whole run on the local stand-ins, shown live in the terminal.

A sample dataset (small generated files and a manifest) is dropped into the local input bucket;
the template's EventBridge rule routes the upload to StartRun; the real state machine runs; the
terminal shows each stage, its queue and GPUs, and the cluster's state, on the simulated clock.
Outputs under ``.cryopilot/local/``: ``outbox/`` (one file per SNS message) and ``last-run.json``.

``--fail SCENARIO`` rehearses a fault (:data:`REHEARSALS`): armed before the upload, or done
mid-run once the second stage started; after the executions end, the cleanup function's answer
is awaited and, while a cluster is left, the janitor's schedule fires on the simulated clock.
The run is then judged against what the scenario expects (:func:`_verdict`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from cryopilot.core.formatting import fmt_duration
from cryopilot.core.status import EXECUTION_UNFINISHED, RUN_STATUS_FOR_EXECUTION
from cryopilot.domain.record import RunRecord, StageRecord
from cryopilot.protocol.stage import PlannedStage

from cryopilot_sim.clock import VirtualClock
from cryopilot_sim.template import ROOT, load_template

if TYPE_CHECKING:  # the local stack (moto, boto3) loads when a demo runs, not when the CLI starts
    from cryopilot_sim.harness import LocalCloud

PROFILES = {"cgrp": "cgrp.yaml", "glp1r": "glp1r.yaml", "spike": "spike.yaml"}


@dataclass(frozen=True)
class MailExpected:
    """A mail the rehearsal must have sent: every ``subject`` fragment in its subject, every
    ``body`` fragment in its text (``{dataset}`` stands for the run's dataset)."""

    subject: tuple[str, ...]
    body: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rehearsal:
    """A fault the demo rehearses, and how the run must end for the rehearsal to pass."""

    status: str  # the execution's end status
    what: str  # what is rehearsed, in a line
    error: str | None = None  # the run record's error type
    mails: tuple[MailExpected, ...] = ()
    #: the scheduled janitor is expected to finish the cluster's deletion
    janitor: bool = False
    #: something done mid-run, once the run's second stage started: ``lose-head-node``,
    #: ``stop`` (Step Functions StopExecution, as from the console) or ``cancel`` (``cryopilot cancel``)
    during: str | None = None


def _failed_mail(error: str, *body: str) -> MailExpected:
    return MailExpected(("{dataset} failed at ", f": {error}"), (f"Reason: {error}: ", *body))


_DONE = MailExpected(("{dataset} done: ",), ("Final resolution", "is being deleted now"))
_CLEAN = "has been deleted; nothing is left running"
REHEARSALS: dict[str, Rehearsal] = {
    "none": Rehearsal("SUCCEEDED", "a run without faults", mails=(_DONE,)),
    "cluster-create": Rehearsal(
        "FAILED",
        "a cluster that never comes up (CREATE_FAILED, not for capacity)",
        "ClusterCreateFailedError",
        (_failed_mail("ClusterCreateFailedError", _CLEAN),),
    ),
    "config-error": Rehearsal(
        "FAILED",
        "the ParallelCluster API rejects the cluster's configuration: fails fast, never retried",
        "ClusterConfigError",
        (
            _failed_mail(
                "ClusterConfigError", "is not supported in the Availability Zone", "No cluster was created."
            ),
        ),
    ),
    "capacity": Rehearsal(
        "SUCCEEDED",
        "no p4d.24xlarge capacity at node launch: ParallelCluster fails gpu8 over to p4de.24xlarge",
        mails=(
            MailExpected(("{dataset} done: ",), ("Capacity (", "p4d.24xlarge InsufficientInstanceCapacity")),
        ),
    ),
    "capacity-exhausted": Rehearsal(
        "FAILED",
        "no capacity in any gpu8 compute resource: a fast, clear failure (CapacityWaitMinutes)",
        "CapacityError",
        (_failed_mail("CapacityError", "no capacity in any compute resource", _CLEAN),),
    ),
    "quota": Rehearsal(
        "FAILED",
        "a P-instance vCPU quota of 0 (VcpuLimitExceeded): failed within two polls, the quota named",
        "CapacityError",
        (_failed_mail("CapacityError", "VcpuLimitExceeded", "L-417A185B", _CLEAN),),
    ),
    "spot-interrupt": Rehearsal(
        "SUCCEEDED",
        "capacity: spot-where-safe, and EC2 interrupts the first Spot node (two minutes' notice):"
        " its stage is resubmitted On-Demand once and completes",
        mails=(MailExpected(("{dataset} done: ",), ("Spot: on Spot: ", "(interrupted; completed on ")),),
    ),
    "head-node-capacity": Rehearsal(
        "SUCCEEDED",
        "no head-node capacity in the first subnet: the cluster is created in the next placement",
        mails=(MailExpected(("{dataset} done: ",), ("No capacity for: ", "The cluster ran in: ")),),
    ),
    "head-node-capacity-exhausted": Rehearsal(
        "FAILED",
        "no head-node capacity in any placement: a clean failure",
        "CapacityError",
        (_failed_mail("CapacityError", "no capacity in any placement tried", "No capacity for: "),),
    ),
    "throttle": Rehearsal(
        "SUCCEEDED", "the ParallelCluster API answers 429 and 500 for a while: retried", mails=(_DONE,)
    ),
    "delete-failed": Rehearsal(
        "FAILED",
        "the finished run's cluster ends DELETE_FAILED, and again on the retries: the janitor deletes it",
        "ClusterDeleteFailedError",
        (
            _DONE,
            _failed_mail("ClusterDeleteFailedError", "could NOT be confirmed deleted"),
            MailExpected(("janitor: 1 cluster(s) cleaned up",), ("delete_retried",)),
        ),
        janitor=True,
    ),
    "ssm-timeout": Rehearsal(
        "SUCCEEDED", "an SSM command to the head node times out once: retried", mails=(_DONE,)
    ),
    "ssm-timeout-always": Rehearsal(
        "FAILED",
        "every SSM command to the head node times out: retried, then a clean failure",
        "AgentTimeoutError",
        (_failed_mail("AgentTimeoutError", _CLEAN),),
    ),
    "head-node-lost": Rehearsal(
        "FAILED",
        "the head node disappears mid-run",
        "HeadNodeUnreachableError",
        (_failed_mail("HeadNodeUnreachableError", "does not answer SSM", _CLEAN),),
        during="lose-head-node",
    ),
    "job": Rehearsal(
        "FAILED",
        "a cryoSPARC job fails mid-pipeline (2D classification)",
        "JobFailedError",
        (_failed_mail("JobFailedError", _CLEAN),),
    ),
    "job-killed": Rehearsal(
        "FAILED",
        "a cryoSPARC job is killed outside cryopilot (particle picking)",
        "JobKilledError",
        (_failed_mail("JobKilledError", _CLEAN),),
    ),
    "job-stuck": Rehearsal(
        "FAILED",
        "a cryoSPARC job never ends (CTF estimation): killed once its stage's time limit passed",
        "JobStuckError",
        (_failed_mail("JobStuckError", "ran past its limit of", _CLEAN),),
    ),
    "export": Rehearsal(
        "FAILED",
        "the results bucket refuses the export: retried, then failed; the data is kept",
        "ExportError",
        (_failed_mail("ExportError", "The results were NOT exported.", "snapshot", "/shared"),),
    ),
    "stopped": Rehearsal(
        "ABORTED",
        "the execution is stopped by hand mid-run (Step Functions StopExecution)",
        "ExecutionAborted",
        (MailExpected(("{dataset} was stopped",), ("is being deleted now",)),),
        during="stop",
    ),
    "cancel": Rehearsal(
        "ABORTED",
        "the operator cancels the run mid-run (cryopilot cancel)",
        "ExecutionAborted",
        mails=(MailExpected(("{dataset} was stopped",), ("(execution ABORTED)",)),),
        during="cancel",
    ),
    "quota-zero": Rehearsal(
        "FAILED",
        "the account's 'Running On-Demand P instances' quota is 0 vCPUs (a new account's): preflight"
        " fails the run at Validate",
        "PreflightError",
        (_failed_mail("PreflightError", "quota L-417A185B", "is 0 vCPUs", "No cluster was created."),),
    ),
    "no-egress": Rehearsal(
        "FAILED",
        "the compute subnets have no route out (no NAT gateway, no VPC endpoint): preflight fails the"
        " run at Validate",
        "PreflightError",
        (
            _failed_mail(
                "PreflightError", "no default route through a NAT gateway", "No cluster was created."
            ),
        ),
    ),
    "missing-data": Rehearsal(
        "FAILED",
        "the manifest arrives before half its files (fewer than input.expected_files): preflight fails"
        " the run at Validate",
        "PreflightError",
        (_failed_mail("PreflightError", "input.expected_files is", "No cluster was created."),),
    ),
}
#: The rehearsals preflight ends at Validate: one mail, no cluster ever requested.
PREFLIGHT_FAULTS = ("quota-zero", "no-egress", "missing-data")
#: Each fault and the end status its rehearsal expects.
FAULTS = {name: r.status for name, r in REHEARSALS.items()}
STATE_DIR = ROOT / ".cryopilot" / "local"


#: The most datasets one demo drops at once (``--datasets``).
MAX_DATASETS = 50


@dataclass
class DemoOptions:
    profile: str = "cgrp"
    pace: float = 20000.0
    fail: str = "none"
    state_dir: Path = STATE_DIR
    quiet: bool = False
    datasets: int = 1
    #: the stack's MaxConcurrentRuns (None: the template's default); runs beyond it wait, QUEUED
    max_concurrent_runs: int | None = None

    @property
    def expected_status(self) -> str:
        return FAULTS[self.fail]

    @property
    def rehearsal(self) -> Rehearsal:
        return REHEARSALS[self.fail]


def sample_dataset(profile: str) -> tuple[str, str, dict[str, bytes]]:
    """(folder, manifest text, files) of a small generated dataset for ``profile``."""
    text = (ROOT / "events" / "manifests" / PROFILES[profile]).read_text(encoding="utf-8")
    doc = yaml.safe_load(text)
    folder = doc["dataset"]
    pattern = doc["input"]["glob"]
    directory, _, suffix = pattern.rpartition("/*")
    files = {f"{directory}/sample_{i:04d}{suffix}": bytes([i % 256]) * 256 for i in range(8)}
    gain = doc.get("acquisition", {}).get("gain_reference")
    if gain:
        files[gain] = b"\x01" * 256
    doc["input"].pop("expected_files", None)
    return folder, yaml.safe_dump(doc, sort_keys=False), files


def with_missing_data(manifest: str, files: dict[str, bytes]) -> tuple[str, dict[str, bytes]]:
    """The sample dataset with half its data files not (yet) uploaded, and a manifest that expects
    them all (``input.expected_files``): ``--fail missing-data``."""
    doc = yaml.safe_load(manifest)
    directory = doc["input"]["glob"].rpartition("/")[0] + "/"
    data = sorted(k for k in files if k.startswith(directory))
    doc["input"]["expected_files"] = len(data)
    kept = {k: v for k, v in files.items() if k not in data[len(data) // 2 :]}
    return yaml.safe_dump(doc, sort_keys=False), kept


def _render(record: RunRecord | None, plan: list[PlannedStage], start: float, now: float) -> Any:
    from rich.table import Table

    table = Table(title=f"cryopilot demo — simulated time {fmt_duration(now - start)}", expand=False)
    table.add_column("stage")
    table.add_column("queue")
    table.add_column("GPUs", justify="right")
    table.add_column("progress")
    table.add_column("state")
    table.add_column("elapsed", justify="right")
    if not record:
        table.add_row("(waiting for the run to start)", "", "", "", "", "")
        return table
    table.caption = (
        f"run {record.run_id} · cluster {record.cluster_name or '-'}: "
        f"{record.cluster_state or 'not requested'} · step {record.current_step}"
    )
    for planned in plan:
        rec = record.stages.get(planned.id) or StageRecord()
        progress = float(rec.progress or 0.0)
        state = rec.state
        if state == "completed":
            progress = 1.0
        bar = "█" * int(progress * 20) + "░" * (20 - int(progress * 20))
        elapsed = ""
        if rec.started_at:
            end = rec.completed_at or now
            elapsed = fmt_duration(float(end) - float(rec.started_at))
        table.add_row(
            planned.title,
            planned.lane or "master",
            str(planned.gpus),
            f"{bar} {progress * 100:5.1f}%",
            state,
            elapsed,
        )
    return table


def _inject(cloud: LocalCloud, fail: str, runs: int = 1) -> None:
    """Arm the fault before the datasets are dropped (mid-run faults: :func:`_act_during`)."""
    if fail == "cluster-create":
        cloud.pcluster.inject("create_failed", count=runs)
    elif fail == "config-error":
        cloud.pcluster.inject("config_error", count=runs, operation="create_cluster")
    elif fail == "head-node-capacity-exhausted":
        cloud.pcluster.inject("create_failed_capacity", count=100)
    elif fail == "capacity":
        cloud.inject_capacity("p4d.24xlarge")
    elif fail == "capacity-exhausted":
        for instance_type in cloud.settings_queue_types("gpu8"):
            cloud.inject_capacity(instance_type)
    elif fail == "quota":
        # a new account: 0 vCPUs for every P type (quota L-417A185B), whatever the queue
        for instance_type in cloud.settings_queue_types():
            if instance_type.startswith("p"):
                cloud.inject_capacity(instance_type, "VcpuLimitExceeded")
    elif fail == "spot-interrupt":
        # the account may buy Spot (a new account's Spot quotas are often 0: preflight says so)
        for code in ("L-7212CCBC", "L-3819A6DF"):
            name, _ = cloud.ec2_quotas[code]
            cloud.ec2_quotas[code] = (name, 1152.0)
        for _ in range(runs):
            cloud.inject_spot_interruption(after_seconds=600)
    elif fail == "delete-failed":
        # the success path's delete, the failure path's retry, the cleanup function's: all fail
        cloud.pcluster.inject("delete_failed", count=3 * runs)
    elif fail == "ssm-timeout":
        cloud.ssm_faults.append(["timeout", "status", runs])
    elif fail == "ssm-timeout-always":
        cloud.ssm_faults.append(["timeout", None, 10_000])
    elif fail == "job-killed":
        cloud.cryosparc_setup.append(lambda cs: cs.inject("kill", "blob_picker_gpu"))
    elif fail == "job-stuck":
        cloud.cryosparc_setup.append(lambda cs: cs.inject("stuck", "patch_ctf_estimation_multi"))
    elif fail == "head-node-capacity":
        first_subnet = str(cloud.resolver.parameter_values["ComputeSubnetIds"][0]) if cloud.resolver else None
        cloud.pcluster.inject("create_failed_capacity", count=100, subnet_id=first_subnet)
    elif fail == "job":
        cloud.cryosparc_setup.append(lambda cs: cs.inject("fail", "class_2D_new"))
    elif fail == "throttle":
        cloud.pcluster.inject("throttle", count=4, operation="create_cluster")
        cloud.pcluster.inject("server_error", count=2, operation="describe_cluster")
        cloud.pcluster.inject("throttle", count=2, operation="delete_cluster")
    elif fail == "quota-zero":
        name, _ = cloud.ec2_quotas["L-417A185B"]
        cloud.ec2_quotas["L-417A185B"] = (name, 0.0)
    elif fail == "no-egress":
        for subnet in cloud.resolver.parameter_values["ComputeSubnetIds"] if cloud.resolver else []:
            cloud.remove_egress(str(subnet))
    elif fail == "export":
        deny = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "RehearseAnExportFailure",
                    "Effect": "Deny",
                    "Principal": "*",
                    "Action": "s3:PutObject",
                    "Resource": f"arn:aws:s3:::{cloud.results_bucket}/runs/*/results/*",
                }
            ],
        }
        cloud.client("s3").put_bucket_policy(Bucket=cloud.results_bucket, Policy=json.dumps(deny))


#: The janitor's schedule in the template (``rate(30 minutes)``), and the passes the demo waits for.
JANITOR_EVERY_SECONDS = 1800
JANITOR_PASSES = 4


def _record(cloud: LocalCloud, run_id: str) -> RunRecord | None:
    """The run record, read while the handlers write it: moto's tables take no lock, so a read
    that races a write of the same item can fail ("dictionary changed size during iteration");
    read again then."""
    for _ in range(20):
        try:
            item = cloud.run_record(run_id)
            break
        except RuntimeError:
            time.sleep(0.01)
    else:
        item = cloud.run_record(run_id)
    return RunRecord.model_validate(item) if item is not None else None


def _act_during(cloud: LocalCloud, kind: str, arns: dict[str, str], pending: set[str], emit: Any) -> set[str]:
    """Do the mid-run fault to each pending run whose second stage has started; the runs done."""
    done: set[str] = set()
    for rid in sorted(pending):
        record = _record(cloud, rid)
        if record is None or sum(1 for st in record.stages.values() if st.started_at) < 2:
            continue
        if kind == "lose-head-node":
            if record.cluster_name is None:
                continue
            try:
                instance = cloud.lose_head_node(record.cluster_name)
            except KeyError:
                continue  # no head node (yet, or any more)
            emit(f"[red]the head node {instance} of {record.cluster_name} disappeared[/red]")
        elif kind == "stop":
            cloud.client("stepfunctions").stop_execution(
                executionArn=arns[rid], error="StoppedByHand", cause="stopped from the console"
            )
            emit(f"[red]execution {rid} stopped by hand (StopExecution)[/red]")
        elif kind == "cancel":
            from cryopilot_ops import ops

            emit(f"[red]$ cryopilot cancel {rid}[/red]")
            ops.cancel(cloud.operator_stack(), rid, interval=300, sleep=cloud.clock.sleep, emit=emit)
        else:
            raise ValueError(f"unknown mid-run fault {kind!r}")
        done.add(rid)
    return done


def _await_cleanups(cloud: LocalCloud, statuses: dict[str, str], timeout: float = 30.0) -> dict[str, Any]:
    """The cleanup function's answer for each execution that ended FAILED, TIMED_OUT or ABORTED
    (Step Functions' status-change event reaches it after the execution ended), by run id."""
    ended = {rid for rid, st in statuses.items() if st in EXECUTION_UNFINISHED}
    deadline = time.monotonic() + timeout
    while True:
        answers = {
            d.result["run_id"]: d.result
            for d in list(cloud.deliveries)
            if d.function.endswith("CleanupFunction")
            and isinstance(d.result, dict)
            and d.result.get("run_id") in ended
        }
        if set(answers) >= ended or time.monotonic() > deadline:
            return answers
        time.sleep(0.05)


def _settle_clusters(cloud: LocalCloud, emit: Any) -> list[dict[str, Any]]:
    """Let the simulated clock run on while clusters are left: deletions in progress end, and
    every half hour the janitor's schedule fires (up to :data:`JANITOR_PASSES` times). Its
    reports, one per pass."""
    passes: list[dict[str, Any]] = []
    waited = 0
    while cloud.pcluster.clusters() and len(passes) < JANITOR_PASSES:
        cloud.clock.sleep(300)
        waited += 300
        if waited % JANITOR_EVERY_SECONDS == 0 and cloud.pcluster.clusters():
            report = cloud.run_schedule("CleanupFunction")
            passes.append(report)
            for a in report.get("actions") or []:
                emit(f"janitor pass {len(passes)}: {a['cluster']}: {a['action']} ({a['reason']})")
    for _ in range(JANITOR_EVERY_SECONDS // 300):  # the last deletion requested takes its time
        if not cloud.pcluster.clusters():
            break
        cloud.clock.sleep(300)
    return passes


def _failed_tasks(cloud: LocalCloud, arn: str) -> list[str]:
    """The error type of every task attempt that failed in the execution (retries included)."""
    out: list[str] = []
    try:
        history = cloud.history(arn)
    except Exception:  # a run still queued has no execution
        return out
    for event in history:
        if event["type"] == "TaskFailed":
            details = event["taskFailedEventDetails"]
            try:
                out.append(str(json.loads(details.get("cause") or "")["errorType"]))
            except (ValueError, KeyError, TypeError):
                out.append(str(details.get("error")))
    return out


def _verdict(
    cloud: LocalCloud,
    fail: str,
    arns: dict[str, str],
    statuses: dict[str, str],
    records: dict[str, dict[str, Any]],
    mails: list[dict[str, Any]],
    clusters_left: list[str],
    cleanups: dict[str, Any],
    janitor: list[dict[str, Any]],
) -> dict[str, Any]:
    """Did the runs end as the rehearsal of ``fail`` expects? Its problems, one line each."""
    r = REHEARSALS[fail]
    problems: list[str] = []
    if clusters_left:
        problems.append(f"{len(clusters_left)} cluster(s) left: {', '.join(clusters_left)}")
    janitor_acted = [a for p in janitor for a in p.get("actions") or [] if a["action"] != "deleting"]
    if r.janitor and not janitor_acted:
        problems.append("the janitor was expected to delete the cluster, and had nothing to do")
    if janitor_acted and not r.janitor:
        problems.append(f"the janitor had to delete {len(janitor_acted)} cluster(s) the run left behind")
    typed = {rid: RunRecord.model_validate({"run_id": rid, **item}) for rid, item in records.items() if item}
    for rid, arn in arns.items():
        rec = typed.get(rid) or RunRecord(run_id=rid)
        dataset = str(rec.dataset or rid)
        status = statuses[rid]
        error = (rec.error or {}).get("type")
        if status != r.status:
            problems.append(f"{rid} ended {status}, not {r.status}" + (f" ({error})" if error else ""))
        recorded = rec.status if rid in typed else None
        if recorded != RUN_STATUS_FOR_EXECUTION.get(r.status):
            problems.append(f"{rid}'s record says {recorded}, not {RUN_STATUS_FOR_EXECUTION.get(r.status)}")
        if r.error is not None and error != r.error:
            problems.append(f"{rid} failed with {error}, not {r.error}")
        if status in EXECUTION_UNFINISHED and rid not in cleanups:
            problems.append(f"the cleanup function never handled {rid}'s end ({status})")
        mine = [m for m in mails if m["attributes"].get("dataset") in (None, dataset)]
        for want in r.mails:
            subject = tuple(f.format(dataset=dataset) for f in want.subject)
            if not any(
                all(f in m["subject"] for f in subject) and all(b in m["message"] for b in want.body)
                for m in mine
            ):
                problems.append(
                    f"no mail for {dataset} with {' … '.join(subject)!r} in its subject"
                    + (f" and {', '.join(repr(b) for b in want.body)} in its text" if want.body else "")
                )
        problems += [f"{rid}: {p}" for p in _scenario_checks(cloud, fail, arn, rec, mails, cleanups.get(rid))]
    errors = sorted({str(rec.error.get("type")) for rec in typed.values() if rec.error})
    steps = sorted({str(rec.error.get("step")) for rec in typed.values() if rec.error})
    ended = sorted(set(statuses.values()))
    outcome = "/".join(ended)
    if errors:
        outcome += f" with {', '.join(errors)} at {', '.join(steps)}"
    outcome += f"; {len(mails)} mail(s)"
    last = [m["subject"] for m in mails if m["attributes"].get("event") != "started"]
    if last:
        outcome += f", last {last[-1]!r}"
    if janitor:
        outcome += f"; {len(janitor)} janitor pass(es)"
    outcome += f"; {len(clusters_left)} cluster(s) left"
    return {
        "scenario": fail,
        "what": r.what,
        "expected_status": r.status,
        "expected_error": r.error,
        "outcome": outcome,
        "passed": not problems,
        "problems": problems,
        "janitor_passes": len(janitor),
    }


def with_spot_where_safe(manifest: str) -> str:
    """The manifest with ``pipeline: {capacity: spot-where-safe}``."""
    doc = yaml.safe_load(manifest)
    doc.setdefault("pipeline", {})["capacity"] = "spot-where-safe"
    return yaml.safe_dump(doc, sort_keys=False)


def _scenario_checks(
    cloud: LocalCloud,
    fail: str,
    arn: str,
    rec: RunRecord,
    mails: list[dict[str, Any]],
    cleanup: dict[str, Any] | None,
) -> list[str]:
    """What a scenario promises beyond its end status, error and mails."""
    tried = _failed_tasks(cloud, arn)
    problems = []
    if fail == "config-error" and tried != ["ClusterConfigError"]:
        problems.append(f"a configuration error must fail at once, never retried: {tried}")
    elif fail == "throttle" and "ThrottledError" not in tried:
        problems.append("no throttled call was retried")
    elif fail == "ssm-timeout" and tried.count("AgentTimeoutError") != 1:
        problems.append(f"expected one timed-out SSM command, retried: {tried}")
    elif fail in ("ssm-timeout-always", "export"):
        error = "AgentTimeoutError" if fail == "ssm-timeout-always" else "ExportError"
        if tried.count(error) != 4:
            problems.append(f"expected the first try and 3 retries of {error}: {tried}")
    elif fail == "head-node-capacity" and len(rec.placements_tried) != 1:
        problems.append(f"expected one placement without capacity: {rec.placements_tried}")
    elif fail == "head-node-capacity-exhausted" and len(rec.placements_tried) < 2:
        problems.append(f"expected every placement tried: {rec.placements_tried}")
    elif fail in ("capacity", "capacity-exhausted", "quota"):
        if rec.placements_tried:
            problems.append(f"a GPU shortage must not fail the cluster's creation: {rec.placements_tried}")
        if not rec.capacity_events:
            problems.append("no capacity event was recorded on the run")
        if fail == "quota":
            stage = (rec.error or {}).get("step", "").removeprefix("stage:")
            polls = rec.stages[stage].polls if stage in rec.stages else None
            if polls is None or polls > 2:
                problems.append(f"the quota failure took {polls} polls of stage {stage} (at most 2)")
    elif fail == "spot-interrupt":
        hit = [sid for sid, st in rec.stages.items() if st.spot_interruptions]
        if len(hit) != 1:
            problems.append(f"expected one stage lost to the Spot interruption: {hit}")
        elif rec.stages[hit[0]].state != "completed" or not rec.stages[hit[0]].resubmitted_on:
            problems.append(f"stage {hit[0]} did not complete On-Demand: {rec.stages[hit[0]]}")
    elif fail == "job-stuck":
        stage = (rec.error or {}).get("step", "").removeprefix("stage:")
        if stage not in rec.stages or not rec.stages[stage].killed_for_time:
            problems.append(f"stage {stage} was not killed for its time limit")
    elif fail == "job-killed":
        stage = (rec.error or {}).get("step", "").removeprefix("stage:")
        if stage not in rec.stages or rec.stages[stage].state != "killed":
            problems.append(f"stage {stage} is not marked killed")
    elif fail in PREFLIGHT_FAULTS:
        if "CreateCluster" in cloud.states_entered(arn) or list(
            cloud.pcluster.requests_for("create_cluster")
        ):
            problems.append("a cluster was requested: preflight must end the run at Validate")
        dataset = rec.dataset
        if len([m for m in mails if m["attributes"].get("dataset") == dataset]) != 1:
            problems.append("expected one mail, the failure's")
    elif fail in ("stopped", "cancel"):
        dataset = rec.dataset
        stopped = [m for m in mails if m["subject"] == f"[cryopilot] {dataset} was stopped"]
        if len(stopped) != 1:
            problems.append(f"expected one 'was stopped' mail, got {len(stopped)}")
        if fail == "stopped" and (cleanup or {}).get("action") != "delete_requested":
            problems.append(f"the cleanup function did not delete the cluster: {cleanup}")
    return problems


def _render_many(records: list[RunRecord | None], plans: dict[str, int], start: float, now: float) -> Any:
    from rich.table import Table

    table = Table(title=f"cryopilot demo — {len(records)} runs — simulated time {fmt_duration(now - start)}")
    for col in ("run", "status", "step", "stages done", "cluster"):
        table.add_column(col)
    for rec in records:
        if not rec:
            continue
        done = sum(1 for st in rec.stages.values() if st.state == "completed")
        table.add_row(
            rec.run_id,
            rec.status,
            rec.current_step or "",
            f"{done}/{plans.get(rec.run_id, len(rec.stages))}",
            rec.cluster_state or "-",
        )
    return table


def _dropped_runs(cloud: LocalCloud, expected: int) -> dict[str, str]:
    """The run each upload started or queued (run id → its execution's ARN, which exists once the
    run has a slot), in the order of the uploads; a RuntimeError unless there is one per upload."""
    outcomes = [
        o
        for d in cloud.deliveries
        if d.function.endswith("StartRunFunction") and isinstance(d.result, dict)
        for o in d.result.get("outcomes") or []
    ]
    run_ids = list(dict.fromkeys(str(o["run_id"]) for o in outcomes if o["status"] in ("started", "queued")))
    if len(run_ids) != expected:
        raise RuntimeError(
            f"{expected} uploads started or queued {len(run_ids)} runs: "
            + json.dumps([d.result for d in cloud.deliveries])[:2000]
        )
    prefix = cloud.state_machine_arn.replace(":stateMachine:", ":execution:")
    return {rid: f"{prefix}:{rid}" for rid in run_ids}


def _statuses(sfn: Any, arns: dict[str, str]) -> dict[str, str]:
    """Each run's execution status; QUEUED while it waits for a slot (no execution yet)."""
    out = {}
    for rid, arn in arns.items():
        try:
            out[rid] = str(sfn.describe_execution(executionArn=arn)["status"])
        except sfn.exceptions.ExecutionDoesNotExist:
            out[rid] = "QUEUED"
    return out


class _PeakClusters:
    """The most clusters that existed at once: sampled while the runs go, and counted exactly
    afterwards from the stand-in's record of each cluster's creation and deletion."""

    #: wall seconds without any change after which runs still waiting are declared stuck
    STALL_SECONDS = 60.0

    def __init__(self, cloud: LocalCloud) -> None:
        self.cloud = cloud
        self.sampled = 0
        self._last: tuple[Any, ...] = ()
        self._since = time.monotonic()

    def sample(self) -> None:
        self.sampled = max(self.sampled, len(self.cloud.pcluster.clusters()))

    def stalled(self, statuses: dict[str, str]) -> bool:
        """Runs wait for a slot, none runs, and nothing changed for :data:`STALL_SECONDS`: a
        queue that never drains (the demo then ends, and says which runs never ran)."""
        state = tuple(sorted(statuses.items()))
        if state != self._last:
            self._last, self._since = state, time.monotonic()
            return False
        stuck = "RUNNING" not in statuses.values() and "QUEUED" in statuses.values()
        return stuck and time.monotonic() - self._since > self.STALL_SECONDS

    def peak(self) -> int:
        pc = self.cloud.pcluster
        edges: list[tuple[float, int]] = []
        for name, seen in pc.history.items():
            deletes = pc.delete_requests.get(name)
            edges.append((float(seen["created_at"]), 1))
            if deletes:
                edges.append((float(deletes[0]) + pc.delete_seconds, -1))
        current = exact = 0
        for _, step in sorted(edges):  # at a tie, a deletion ends before a creation starts
            current += step
            exact = max(exact, current)
        return max(exact, self.sampled)


def run_demo(options: DemoOptions) -> dict[str, Any]:
    from rich.console import Console
    from rich.live import Live

    if options.fail not in FAULTS:
        raise ValueError(f"unknown fault {options.fail!r}; one of {', '.join(FAULTS)}")
    if not 1 <= options.datasets <= MAX_DATASETS:
        raise ValueError(f"--datasets must be between 1 and {MAX_DATASETS}")
    console = Console(quiet=options.quiet)
    options.state_dir.mkdir(parents=True, exist_ok=True)
    _send_lambda_logs_to(options.state_dir / "lambda.log")
    from cryopilot_sim.harness import LocalCloud

    clock = VirtualClock(pace=options.pace)
    folder, manifest, files = sample_dataset(options.profile)
    if options.fail == "missing-data":
        manifest, files = with_missing_data(manifest, files)
    if options.fail == "spot-interrupt":
        manifest = with_spot_where_safe(manifest)
    limit = options.max_concurrent_runs or int(load_template()["Parameters"]["MaxConcurrentRuns"]["Default"])
    cloud = LocalCloud(clock=clock, profile=options.profile, parameters={"MaxConcurrentRuns": limit})
    with cloud:
        _inject(cloud, options.fail, options.datasets)
        folders = (
            [folder]
            if options.datasets == 1
            else [f"{folder}-{i:02d}" for i in range(1, options.datasets + 1)]
        )
        console.print(
            f"[bold]cryopilot demo[/bold]: {len(folders)} dataset(s) {folders[0]}"
            + (f" … {folders[-1]}" if len(folders) > 1 else "")
            + f" (profile {options.profile}"
            + (f", rehearsing fault: {options.fail}" if options.fail != "none" else "")
            + f") dropped into s3://{cloud.input_bucket}/datasets/"
        )
        wall0 = time.monotonic()
        for name in folders:
            text = (
                manifest if name == folder else manifest.replace(f"dataset: {folder}", f"dataset: {name}", 1)
            )
            cloud.drop_dataset(name, text, files)
        cloud.drain_events()
        arns = _dropped_runs(cloud, len(folders))
        sfn = cloud.client("stepfunctions")
        peak = _PeakClusters(cloud)
        from cryopilot.adapters import runs

        statuses: dict[str, str] = {}
        plan_sizes: dict[str, int] = {}
        rehearsal = options.rehearsal
        to_act_on = set(arns) if rehearsal.during else set()
        with Live(_render(None, [], clock.start, clock.now()), console=console, refresh_per_second=4) as live:
            while True:
                statuses = _statuses(sfn, arns)
                peak.sample()
                done = all(st not in ("RUNNING", "QUEUED") for st in statuses.values()) or peak.stalled(
                    statuses
                )
                if not options.quiet:  # quiet: nothing to show, leave the interpreter to the run
                    records = [_record(cloud, rid) for rid in arns]
                    if len(arns) == 1:
                        (rid,) = arns
                        record = records[0]
                        plan = runs.store().get_plan(rid) if record and record.preset else []
                        live.update(_render(record, plan, clock.start, clock.now()))
                    else:
                        for rec in records:
                            if rec and rec.preset and rec.run_id not in plan_sizes:
                                plan_sizes[rec.run_id] = len(runs.store().get_plan(rec.run_id))
                        live.update(_render_many(records, plan_sizes, clock.start, clock.now()))
                if done:
                    break
                if to_act_on:  # watch closely until the mid-run fault is done
                    to_act_on -= _act_during(
                        cloud, str(rehearsal.during), arns, to_act_on, live.console.print
                    )
                # many runs: look less often, so the display does not slow the runs down
                time.sleep(0.02 if to_act_on else 0.25 * max(1.0, len(arns) / 4))
        # what happens after the executions ended: the cleanup function, then the janitor
        cleanups = _await_cleanups(cloud, statuses)
        janitor = _settle_clusters(cloud, console.print)
        wall = time.monotonic() - wall0
        mails = cloud.mails()
        clusters_left = sorted(cloud.pcluster.clusters())
        summaries = []
        final: dict[str, dict[str, Any]] = {}
        for rid in arns:
            final[rid] = cloud.run_record(rid) or {}
            report = _fetch_report(cloud, rid, options.state_dir / "reports" / rid)
            summaries.append(_run_summary(final[rid], statuses[rid], report, clusters_left))
        verdict = _verdict(
            cloud, options.fail, arns, statuses, final, mails, clusters_left, cleanups, janitor
        )
        concurrency = {"max_concurrent_runs": limit, "peak_clusters": peak.peak()} if len(arns) > 1 else None
        summary = _write_outputs(
            options.state_dir, summaries, mails, wall, clock, clusters_left, verdict, concurrency
        )
    _print_summary(console, summary)
    return summary


def _fetch_report(cloud: LocalCloud, run_id: str, target: Path) -> str | None:
    """Copy the run's report from the local results bucket; the HTML page's path, or None."""
    s3 = cloud.client("s3")
    prefix = f"runs/{run_id}/report/"
    keys = [
        o["Key"] for o in s3.list_objects_v2(Bucket=cloud.results_bucket, Prefix=prefix).get("Contents", [])
    ]
    if not keys:
        return None
    target.mkdir(parents=True, exist_ok=True)
    for key in keys:
        (target / key[len(prefix) :]).write_bytes(
            s3.get_object(Bucket=cloud.results_bucket, Key=key)["Body"].read()
        )
    html = target / "report.html"
    return _shown(html) if html.exists() else None


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _run_summary(
    record: dict[str, Any], status: str, report: str | None, clusters_left: list[str] | None = None
) -> dict[str, Any]:
    """(``cluster_deleted``: as the record says, or, when the janitor finished the deletion after
    the run's record was closed, as the ParallelCluster API says: the cluster is gone; true too
    when no cluster was ever created: nothing is left.)"""
    start = record.get("started_epoch")
    name = record.get("cluster_name")
    deleted = (
        bool(record.get("cluster_deleted"))
        or record.get("cluster_state") in (None, "NOT_CREATED")
        or (clusters_left is not None and bool(name) and name not in clusters_left)
    )
    end = record.get("export_finished_at") or record.get("finished_epoch")
    return {
        "run_id": record.get("run_id"),
        "dataset": record.get("dataset"),
        "status": status,
        "resolution_A": record.get("resolution_A"),
        "time_to_structure_h": round((float(end) - float(start)) / 3600, 3) if start and end else None,
        "cost_usd": record.get("cost_usd"),
        "cost_basis": record.get("cost_basis"),
        "gpu_hours_paid": record.get("gpu_hours_paid"),
        "gpu_hours_busy": record.get("gpu_hours_busy"),
        "placement": record.get("placement"),
        "cluster_deleted": deleted,
        "error": record.get("error"),
        "report": report,
    }


def _send_lambda_logs_to(path: Path) -> None:
    """The handlers log JSON lines (as in CloudWatch); keep them out of the live display."""
    import logging
    import warnings

    from cryopilot.adapters.observability import logger as lambda_logger

    stream = path.open("w", encoding="utf-8")
    for handler in logging.getLogger(lambda_logger.name).handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(stream)
    # moto logs every Fail state it executes at ERROR level; the demo reports failures itself.
    logging.getLogger("moto").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", message="No application metrics to publish")
    warnings.filterwarnings("ignore", module="cryosparc")


def _write_outputs(
    state_dir: Path,
    summaries: list[dict[str, Any]],
    mails: list[dict[str, Any]],
    wall: float,
    clock: VirtualClock,
    clusters_left: list[str],
    rehearsal: dict[str, Any] | None = None,
    concurrency: dict[str, Any] | None = None,
) -> dict[str, Any]:
    outbox = state_dir / "outbox"
    outbox.mkdir(parents=True, exist_ok=True)
    for old in outbox.glob("*.txt"):
        old.unlink()
    for i, m in enumerate(mails, 1):
        (outbox / f"{i:03d}-{m['attributes'].get('event', 'mail')}.txt").write_text(
            f"Subject: {m['subject']}\n\n{m['message']}\n", encoding="utf-8"
        )
    first = summaries[0]
    summary = {
        **first,
        "mails": [m["subject"] for m in mails],
        "outbox": _shown(outbox),
        "lambda_log": _shown(state_dir / "lambda.log"),
        "wall_seconds": round(wall, 1),
        "simulated_hours": round((clock.now() - clock.start) / 3600, 2),
        "clusters_left": clusters_left,
    }
    if len(summaries) > 1:
        statuses = {s["status"] for s in summaries}
        summary["status"] = statuses.pop() if len(statuses) == 1 else "MIXED"
        summary["cluster_deleted"] = all(s["cluster_deleted"] for s in summaries) and not clusters_left
        summary["runs"] = summaries
    if rehearsal is not None:
        summary["rehearsal"] = rehearsal
    if concurrency is not None:
        summary["concurrency"] = concurrency
    (state_dir / "last-run.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _print_summary(console: Any, s: dict[str, Any]) -> None:
    ok = s["status"] == "SUCCEEDED"
    console.print(f"\nrun {s['run_id']}: [bold {'green' if ok else 'red'}]{s['status']}[/]")
    if s["resolution_A"] is not None:
        console.print(f"  resolution           {s['resolution_A']:.2f} Å")
    if s["time_to_structure_h"] is not None:
        label = "time to structure" if ok else "ran for"
        console.print(f"  {label:<20} {fmt_duration(s['time_to_structure_h'] * 3600)} (simulated)")
    if s["error"]:
        console.print(f"  failed at            {s['error'].get('step')}: {s['error'].get('type')}")
    console.print(f"  cluster deleted      {'yes' if s['cluster_deleted'] else 'NO'}")
    if s.get("gpu_hours_paid") is not None:
        console.print(
            f"  GPU-hours            {float(s['gpu_hours_busy'] or 0):,.1f} used of "
            f"{float(s['gpu_hours_paid']):,.1f} paid (the GPU nodes, launch and idle included)"
        )
    if s.get("cost_usd") is not None:
        from cryopilot.domain.billing import cost_text

        console.print(f"  cost                 {cost_text(float(s['cost_usd']), s.get('cost_basis'))}")
    if s.get("placement"):
        console.print(f"  placement            {s['placement']}")
    if s.get("runs"):
        done = sum(1 for r in s["runs"] if r["status"] == "SUCCEEDED")
        console.print(f"  runs                 {done} of {len(s['runs'])} succeeded")
        for r in s["runs"]:
            took = fmt_duration(r["time_to_structure_h"] * 3600) if r["time_to_structure_h"] else "-"
            deleted = "cluster deleted" if r["cluster_deleted"] else "cluster NOT deleted"
            console.print(f"    {r['status']:<10} {r['run_id']}  {took}  {deleted}")
    if s.get("concurrency"):
        c = s["concurrency"]
        limit = c["max_concurrent_runs"]
        console.print(f"  clusters at once     {c['peak_clusters']} at most (MaxConcurrentRuns {limit})")
    console.print(f"  clusters left        {len(s['clusters_left'])}")
    console.print(f"  mails                {len(s['mails'])} in {s['outbox']}/")
    if s.get("report"):
        console.print(f"  report               {s['report']}")
    console.print(f"  wall time            {s['wall_seconds']} s")
    r = s.get("rehearsal")
    if r:
        from rich.markup import escape

        verdict = "as expected" if r["passed"] else "NOT as expected: " + escape("; ".join(r["problems"]))
        console.print(
            f"\nrehearsed [bold]{r['scenario']}[/] ({escape(r['what'])}): {escape(r['outcome'])} — "
            f"[bold {'green' if r['passed'] else 'red'}]{verdict}[/]"
        )
