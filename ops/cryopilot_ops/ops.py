"""The operator's view of a stack: submit, status, watch, cancel and report, from a workstation.

A :class:`Stack` names the deployed resources (from CloudFormation's outputs, or given directly
for the local stack); every command goes through the same AWS APIs an operator's credentials
reach: Step Functions, DynamoDB, S3 and, for ``cancel``, the stack's own cluster function, so
the cluster is deleted by the code that created it. Nothing here runs inside Lambda.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError
from cryopilot.adapters import admission, campaigns, subscriptions
from cryopilot.adapters.runs import RunStore
from cryopilot.core.errors import ManifestError
from cryopilot.core.formatting import fmt_duration
from cryopilot.core.status import CLUSTER_DELETE_AWAITS_CREATE, EXECUTION_OVER
from cryopilot.domain.billing import cost_text
from cryopilot.domain.campaign import campaign_prefix
from cryopilot.domain.location import data_uri_problem, foreign_bucket, run_id_for
from cryopilot.domain.manifest import Manifest, parse_manifest
from cryopilot.domain.record import RunRecord, StageRecord
from cryopilot.domain.report import campaign as campaign_page
from cryopilot.domain.subscriptions import policy_for, without_dataset
from cryopilot.protocol.stage import PlannedStage
from pydantic import Field

#: Exit codes of the operator commands.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_AWS = 0, 1, 2, 3, 4


class OperatorError(Exception):
    """A command cannot go on; ``exit_code`` says why (see the EXIT_* constants)."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Stack:
    """The resources of one cryopilot stack that the operator commands use."""

    name: str
    region: str
    input_bucket: str
    results_bucket: str
    runs_table: str
    state_machine_arn: str
    cluster_function: str
    #: StartRun: ``cryopilot submit`` goes through it, so an operator's run takes a slot like any
    start_function: str
    #: the topic every mail goes to (``cryopilot unsubscribe``)
    topic_arn: str = ""
    #: Validate: ``cryopilot preflight`` runs its checks through it (action ``preflight``)
    validate_function: str = ""
    #: where the head nodes' files are (output ``HeadNodeBootstrapUri``): ``cryopilot smoke``
    bootstrap_uri: str = ""
    #: every Lambda function of the stack, ``cryopilot smoke`` checks each can be invoked (empty:
    #: listed from CloudFormation when needed, so other commands need no ListStackResources)
    functions: tuple[str, ...] = ()

    @classmethod
    def from_cloudformation(cls, name: str, region: str) -> Stack:
        cfn = boto3.client("cloudformation", region_name=region)
        try:
            stack = cfn.describe_stacks(StackName=name)["Stacks"][0]
            functions = {
                logical: cfn.describe_stack_resource(StackName=name, LogicalResourceId=logical)[
                    "StackResourceDetail"
                ]["PhysicalResourceId"]
                for logical in ("ClusterFunction", "StartRunFunction", "ValidateFunction")
            }
        except ClientError as exc:
            message = exc.response["Error"].get("Message", "")
            if "does not exist" in message:
                raise OperatorError(f"stack {name} not found in {region}", EXIT_NOT_FOUND) from None
            raise OperatorError(f"stack {name}: {message}", EXIT_AWS) from None
        except BotoCoreError as exc:
            raise OperatorError(f"stack {name}: {exc}", EXIT_AWS) from None
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
        wanted = (
            "InputBucketName",
            "ResultsBucketName",
            "RunsTableName",
            "RunStateMachineArn",
            "NotificationTopicArn",
        )
        missing = [k for k in wanted if k not in outputs]
        if missing:
            raise OperatorError(
                f"stack {name} is not a cryopilot stack (no output {', '.join(missing)})", EXIT_NOT_FOUND
            )
        return cls(
            name=name,
            region=region,
            input_bucket=outputs["InputBucketName"],
            results_bucket=outputs["ResultsBucketName"],
            runs_table=outputs["RunsTableName"],
            state_machine_arn=outputs["RunStateMachineArn"],
            cluster_function=functions["ClusterFunction"],
            start_function=functions["StartRunFunction"],
            topic_arn=outputs["NotificationTopicArn"],
            validate_function=functions["ValidateFunction"],
            bootstrap_uri=outputs.get("HeadNodeBootstrapUri", ""),
        )

    def client(self, service: str) -> Any:
        return boto3.client(service, region_name=self.region)

    def execution_arn(self, run_id: str) -> str:
        prefix, _, machine = self.state_machine_arn.rpartition(":stateMachine:")
        return f"{prefix}:execution:{machine}:{run_id}"


# ------------------------------------------------------------------ reading runs
class RunView(RunRecord):
    """A run as the operator's commands show it: its record, its plan and, while it waits for a
    slot (``MaxConcurrentRuns``), its place in the queue (1: the next to start) and how many runs
    hold a slot."""

    plan: list[PlannedStage] = Field(default_factory=list)
    queue_position: int | None = None
    active_runs: int | None = None


def _table(stack: Stack) -> Any:
    return boto3.resource("dynamodb", region_name=stack.region).Table(stack.runs_table)


def _store(stack: Stack) -> RunStore:
    return RunStore(_table(stack))


def get_run(stack: Stack, run_id: str) -> RunView:
    """The run record with its plan; :class:`OperatorError` when there is none."""
    store = _store(stack)
    record = store.get_run(run_id)
    if record is None:
        raise OperatorError(f"no run {run_id} in stack {stack.name}", EXIT_NOT_FOUND)
    run = RunView.model_validate({**record.model_dump(), "plan": store.get_plan(run_id)})
    if run.status == "QUEUED":
        _with_queue_positions(store, [run])
    return run


def campaign_view(stack: Stack, name: str) -> str:
    """``cryopilot campaign NAME``: every run of the campaign (compound, date, resolution,
    particles, time to structure, cost, links to its map and report), as the campaign page lists
    them; :class:`OperatorError` when the stack has no such campaign."""
    store = _store(stack)
    item = campaigns.get(store, name)
    if item is None:
        raise OperatorError(f"no campaign {name} in stack {stack.name}", EXIT_NOT_FOUND)
    rows = campaign_page.rows_for(
        campaigns.runs_of(store, name),
        results_bucket=stack.results_bucket,
        reference_run=item.get("reference_run_id"),
    )
    text = campaign_page.render_text(name, rows, item.get("reference"))
    page = f"s3://{stack.results_bucket}/{campaign_prefix(name)}campaign.html"
    return text + f"page: {page}\n"


def list_runs(stack: Stack, limit: int = 20) -> list[RunView]:
    """The most recent runs, newest first; a run waiting for a slot has its ``queue_position``."""
    store = _store(stack)
    found = [RunView.model_validate(r.model_dump()) for r in store.list_runs(limit)]
    if any(r.status == "QUEUED" for r in found):
        _with_queue_positions(store, found)
    return found


def _with_queue_positions(store: RunStore, found: list[RunView]) -> None:
    """Set ``queue_position`` and ``active_runs`` on the runs that wait for a slot, from the
    stack's admission item."""
    state = admission.read(store.table)
    for run in found:
        position = state.position(run.run_id)
        if position is not None:
            run.queue_position = position
            run.active_runs = state.active


def execution_status(stack: Stack, run_id: str) -> str | None:
    try:
        arn = stack.execution_arn(run_id)
        return str(stack.client("stepfunctions").describe_execution(executionArn=arn)["status"])
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "ExecutionDoesNotExist":
            return None
        raise


# ------------------------------------------------------------------ rendering
def _bar(fraction: float, width: int = 20) -> str:
    filled = max(0, min(width, round(fraction * width)))
    return "█" * filled + "░" * (width - filled)


def render_status(run: RunView, execution: str | None, now: float | None = None) -> str:
    """A run as text: header, cluster, one line per stage with a progress bar, and the outcome."""
    now = time.time() if now is None else now
    dataset = run.dataset if run.dataset is not None else "?"
    lines = [
        f"run {run.run_id}  dataset {dataset}  status {run.status}"
        + (f"  (execution {execution})" if execution else ""),
        f"cluster {run.cluster_name or '-'}: {run.cluster_state or 'not requested'}"
        + (f" · {run.placement}" if run.placement else "")
        + f" · step {run.current_step or '-'}",
    ]
    if run.queue_position:
        active = run.active_runs if run.active_runs is not None else "?"
        lines.append(
            f"waiting for a free slot: #{run.queue_position} in the queue, "
            f"{active} run(s) active (MaxConcurrentRuns); starts when one ends"
        )
    width = max([len(p.title) for p in run.plan] + [5])
    for planned in run.plan:
        rec = run.stages.get(planned.id) or StageRecord()
        state = rec.state
        progress = 1.0 if state == "completed" else float(rec.progress or 0.0)
        elapsed = ""
        if rec.started_at:
            end = rec.completed_at or now
            elapsed = fmt_duration(float(end) - float(rec.started_at))
        lane = planned.lane or "-"
        lines.append(
            f"  {planned.title:<{width}}  {lane:<5} {planned.gpus:>2} GPU"
            f"  {_bar(progress)} {progress * 100:5.1f}%  {state:<9} {elapsed}"
        )
        if rec.capacity_note and (rec.capacity_waiting or state != "completed"):
            lines.append(f"    {rec.capacity_note}")  # e.g. waiting for capacity on gpu8 since 10:42 UTC: ...
    if run.resolution_A is not None:
        lines.append(f"resolution {float(run.resolution_A):.2f} Å")
    stage_costs = [float(s.cost_usd) for s in run.stages.values() if s.cost_usd is not None]
    if run.cost_usd is not None:
        lines.append(f"cost {cost_text(float(run.cost_usd), run.cost_basis)}")
        if run.gpu_hours_paid is not None:
            lines.append(f"GPU-hours {float(run.gpu_hours_paid):,.1f} paid for")
    elif run.nodes_cost_usd is not None:
        lines.append(
            f"cost so far about ${float(run.nodes_cost_usd):,.2f} (compute nodes that ran: "
            f"{len(run.compute_nodes)} listed, {float(run.nodes_gpu_hours or 0):,.1f} GPU-hours)"
        )
    elif stage_costs:
        lines.append(f"cost so far {cost_text(sum(stage_costs), None)}")
    if run.error:
        err = run.error
        lines.append(f"failed at {err.get('step')}: {err.get('type')}: {err.get('message')}")
    if run.report:
        lines.append(f"report {run.report.get('html') or run.report}")
    return "\n".join(lines)


def watch(
    stack: Stack,
    run_id: str,
    *,
    interval: float = 30.0,
    emit: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
    max_updates: int | None = None,
) -> str:
    """Show the run until its execution ends (or ``max_updates``); returns the final status."""
    shown = None
    updates = 0
    while True:
        execution = execution_status(stack, run_id)
        try:
            run = get_run(stack, run_id)
        except OperatorError:
            if execution is None:
                raise
            # Validate has not written it yet (STARTING is no status a record has)
            run = RunView.model_construct(run_id=run_id, status="STARTING")  # type: ignore[arg-type]
        text = render_status(run, execution)
        if text != shown:
            emit(text)
            shown = text
        updates += 1
        if execution in EXECUTION_OVER or (execution is None and run.status in ("SUCCEEDED", "FAILED")):
            return str(execution or run.status)
        if max_updates is not None and updates >= max_updates:
            return str(execution or run.status)
        sleep(interval)


# ------------------------------------------------------------------ submit
@dataclass(frozen=True)
class Submitted:
    run_id: str
    execution_arn: str
    already: bool
    #: waiting for a slot (``MaxConcurrentRuns``): its place in the queue, 1 = next
    queue_position: int | None = None
    #: it waits for a slot rather than running
    queued: bool = False
    #: submitted before: the status of its execution (RUNNING, SUCCEEDED), None if it has none yet
    execution: str | None = None


def _read_local(path: str) -> bytes:
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise OperatorError(f"{path}: no such file", EXIT_USAGE)
    return p.read_bytes()


def _manifest_input(
    stack: Stack, manifest: str, data_s3_uri: str | None
) -> tuple[dict[str, Any], Any, bytes]:
    """The part of an execution input that names the manifest (a local file is checked here first
    and sent inline with its data folder), the parsed manifest, and its bytes."""
    execution_input: dict[str, Any] = {}
    if manifest.startswith("s3://"):
        bucket, _, key = manifest[len("s3://") :].partition("/")
        if not bucket or not key:
            raise OperatorError(f"{manifest}: not an s3://bucket/key URI", EXIT_USAGE)
        try:
            body = stack.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as exc:
            code = exc.response["Error"]["Code"]
            raise OperatorError(f"{manifest}: cannot be read ({code})", EXIT_NOT_FOUND) from None
        parsed = _parse(body, manifest)
        execution_input["manifest_s3_uri"] = manifest
    else:
        body = _read_local(manifest)
        parsed = _parse(body, manifest)
        folder = data_s3_uri or f"s3://{stack.input_bucket}/datasets/{parsed.dataset}/"
        problem = data_uri_problem(folder)
        if problem:
            raise OperatorError(f"--data {folder}: {problem}", EXIT_USAGE)
        foreign = foreign_bucket(folder, stack.input_bucket)
        if foreign:
            raise OperatorError(f"--data {foreign}", EXIT_USAGE)
        execution_input["manifest_inline"] = parsed.model_dump(mode="json", exclude_none=True)
        execution_input["data_s3_uri"] = folder
    return execution_input, parsed, body


def _stack_functions(cfn: Any, name: str) -> tuple[str, ...]:
    """The physical names of the stack's Lambda functions (its nested stacks' excepted)."""
    found = []
    for page in cfn.get_paginator("list_stack_resources").paginate(StackName=name):
        for res in page.get("StackResourceSummaries", []):
            if res.get("ResourceType") == "AWS::Lambda::Function" and res.get("PhysicalResourceId"):
                found.append(str(res["PhysicalResourceId"]))
    return tuple(sorted(found))


def preflight(stack: Stack, manifest: str | None = None, *, data_s3_uri: str | None = None) -> dict[str, Any]:
    """The preflight checks of the stack (and of the manifest's data, with ``manifest``), run by the
    stack's Validate function with its own role, exactly as a run's Validate runs them: ``{"ok":
    bool, "checks": [{name, status, detail, fix}, ...]}``. Nothing is started or written."""
    named = _manifest_input(stack, manifest, data_s3_uri)[0] if manifest else None
    return _invoke(stack, stack.validate_function, {"action": "preflight", "input": named})


#: StartRun's harmless event for ``cryopilot smoke``: an S3 deletion, which it ignores with a reason.
IGNORED_EVENT = {"source": "aws.s3", "detail-type": "Object Deleted", "detail": {}}


def _check(name: str, ok: bool, detail: str, fix: str = "") -> dict[str, str]:
    return {"name": name, "status": "ok" if ok else "fail", "detail": detail, "fix": "" if ok else fix}


def smoke_dryrun(stack: Stack, run_id: str, run_fields: dict[str, Any]) -> dict[str, str]:
    """The configuration a run of ``run_fields`` would get, sent by the stack's cluster function to
    its ParallelCluster API with ``dryrun=true`` (412: it would succeed; nothing is created)."""
    answer = _invoke(stack, stack.cluster_function, {"action": "dryrun", "run_id": run_id, "run": run_fields})
    if answer.get("ok"):
        warnings = answer.get("warnings") or []
        said = f"; {len(warnings)} validator warning(s): {'; '.join(warnings)}" if warnings else ""
        return _check(
            "cluster dryrun", True, f"ParallelCluster would create {answer.get('cluster_name')}{said}"
        )
    return _check(
        "cluster dryrun",
        False,
        f"ParallelCluster refuses the configuration ({answer.get('status')}): {answer.get('message')}",
        "see `cryopilot cluster-config` for the configuration; fix the stack's parameters it names",
    )


def smoke_bundle(stack: Stack) -> dict[str, str]:
    """The head node's files are in the artifacts bucket with the SHA-256 ``bundle.json`` lists."""
    name = "head-node bundle"
    fix = "deploy the stack again (`sam deploy`): its HeadNodeBootstrap resource uploads the files"
    bucket, _, prefix = stack.bootstrap_uri.removeprefix("s3://").partition("/")
    if not bucket:
        return _check(name, False, "the stack has no HeadNodeBootstrapUri output", fix)
    s3 = stack.client("s3")
    try:
        listed = json.loads(s3.get_object(Bucket=bucket, Key=prefix + "bundle.json")["Body"].read())
    except ClientError as exc:
        return _check(name, False, f"{stack.bootstrap_uri}bundle.json cannot be read ({_code(exc)})", fix)
    except ValueError:
        return _check(name, False, f"{stack.bootstrap_uri}bundle.json is not JSON", fix)
    wrong = []
    for file, meta in sorted(listed.items()):
        try:
            body = s3.get_object(Bucket=bucket, Key=prefix + file)["Body"].read()
        except ClientError as exc:
            wrong.append(f"{file} cannot be read ({_code(exc)})")
            continue
        digest = hashlib.sha256(body).hexdigest()
        if digest != meta.get("sha256"):
            wrong.append(
                f"{file}'s SHA-256 is {digest[:12]}…, bundle.json lists {str(meta.get('sha256'))[:12]}…"
            )
    if wrong or not listed:
        return _check(name, False, "; ".join(wrong) or "bundle.json lists no file", fix)
    return _check(name, True, f"{len(listed)} files match bundle.json ({stack.bootstrap_uri})")


def smoke_functions(stack: Stack) -> list[dict[str, str]]:
    """Every function of the stack may be invoked (Lambda Invoke, InvocationType DryRun: the
    function is not run), and StartRun runs on a harmless event and ignores it."""
    lam = stack.client("lambda")
    out = []
    for function in stack.functions or _stack_functions(stack.client("cloudformation"), stack.name):
        try:
            lam.invoke(FunctionName=function, InvocationType="DryRun")
        except ClientError as exc:
            out.append(
                _check(
                    f"invoke {function}",
                    False,
                    f"cannot be invoked ({_code(exc)})",
                    "check the function exists and your lambda:InvokeFunction permission",
                )
            )
        else:
            out.append(_check(f"invoke {function}", True, "may be invoked"))
    try:
        outcomes = _invoke(stack, stack.start_function, IGNORED_EVENT).get("outcomes") or []
    except OperatorError as exc:
        out.append(_check("StartRun runs", False, str(exc), "see the function's log in CloudWatch"))
    else:
        ignored = [o for o in outcomes if o.get("status") == "ignored"]
        out.append(
            _check(
                "StartRun runs",
                len(ignored) == len(outcomes) == 1,
                f"a harmless event was ignored: {ignored[0].get('reason')}"
                if ignored
                else f"answered {outcomes}",
                "StartRun acted on an event it must ignore: see its log",
            )
        )
    return out


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code") or "error")


def submit(
    stack: Stack,
    manifest: str,
    *,
    data_s3_uri: str | None = None,
    settings: dict[str, Any] | None = None,
    now: bool = False,
) -> Submitted:
    """Start a run from a local manifest file (its data already in S3) or an ``s3://`` manifest.
    A local manifest is checked here first, so a bad one fails before anything starts.

    The run goes through the stack's StartRun function: beyond ``MaxConcurrentRuns`` it waits
    for a slot (``queued``). ``now`` starts it at once, outside the limit."""
    execution_input: dict[str, Any] = {"trigger": "operator"}
    if settings:
        execution_input["settings"] = settings
    named, parsed, body = _manifest_input(stack, manifest, data_s3_uri)
    execution_input.update(named)
    digest = hashlib.sha256(body + json.dumps(execution_input, sort_keys=True).encode()).hexdigest()
    run_id = run_id_for(parsed.dataset, f"op{digest[:10]}")
    arn = stack.execution_arn(run_id)
    if now:
        return _start_now(stack, run_id, execution_input)
    outcome = _invoke(
        stack,
        stack.start_function,
        {"operator_start": {"run_id": run_id, "dataset": parsed.dataset, "input": execution_input}},
    )["outcomes"][0]
    status = outcome.get("status")
    if status == "ignored":
        raise OperatorError(f"refused: {outcome.get('reason')}", EXIT_USAGE)
    position = outcome.get("queue_position")
    waiting = status == "queued" or (status == "duplicate" and position is not None)
    execution = _refuse_if_over(stack, run_id) if status == "duplicate" else None
    return Submitted(
        run_id,
        arn,
        already=status == "duplicate",
        queue_position=position,
        queued=waiting,
        execution=execution,
    )


#: How a run that will not start again ended, by its execution's status (or, for a run that
#: never started, its record's).
_ENDED = {"ABORTED": "was cancelled", "FAILED": "failed", "TIMED_OUT": "timed out"}
_ENDED_UNSTARTED = {"CANCELLED": "was cancelled", "FAILED": "failed"}


def _refuse_if_over(stack: Stack, run_id: str) -> str | None:
    """A manifest submitted again whose run is over and did not succeed: nothing starts (its run id
    is taken: StartRun runs a manifest version once), so say what happened and what
    to do (:class:`OperatorError`, exit 1). A run still going, or one that succeeded, is no error."""
    execution = execution_status(stack, run_id)
    if execution in _ENDED:
        how = f"{_ENDED[execution]} (execution {execution})"
    else:
        run = _store(stack).get_run(run_id, ["status"]) if execution is None else None
        if run is None or run.status not in _ENDED_UNSTARTED:
            return execution
        how = f"{_ENDED_UNSTARTED[run.status]} (before it started)"
    raise OperatorError(
        f"run {run_id} of this manifest {how}; nothing was started. A run's id comes from its"
        " manifest and input: change the manifest (a comment will do) and submit it again",
        EXIT_FAILED,
    )


def _start_now(stack: Stack, run_id: str, execution_input: dict[str, Any]) -> Submitted:
    """Start the execution at once, without a slot (``--now``): it does not count against
    ``MaxConcurrentRuns`` and is not held back by it."""
    arn = stack.execution_arn(run_id)
    execution = _refuse_if_over(stack, run_id)  # an ended run (or one cancelled while waiting)
    if execution is not None:
        # (StartExecution itself answers a repeat with the running execution, silently.)
        return Submitted(run_id, arn, already=True, execution=execution)
    try:
        stack.client("stepfunctions").start_execution(
            stateMachineArn=stack.state_machine_arn, name=run_id, input=json.dumps(execution_input)
        )
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "ExecutionAlreadyExists":
            return Submitted(run_id, arn, already=True)
        raise OperatorError(f"cannot start the run: {exc.response['Error']['Message']}", EXIT_AWS) from None
    return Submitted(run_id, arn, already=False)


def _parse(body: bytes, source: str) -> Manifest:
    try:
        return parse_manifest(body, source=source)
    except ManifestError as exc:
        raise OperatorError(str(exc), EXIT_USAGE) from None


# ------------------------------------------------------------------ cancel
def _invoke_cluster(stack: Stack, payload: dict[str, Any]) -> dict[str, Any]:
    return _invoke(stack, stack.cluster_function, payload)


def _invoke(stack: Stack, function: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Invoke one of the stack's functions and wait for its answer."""
    try:
        resp = stack.client("lambda").invoke(FunctionName=function, Payload=json.dumps(payload).encode())
    except ClientError as exc:
        message = exc.response["Error"]["Message"]
        raise OperatorError(f"cannot invoke {function}: {message}", EXIT_AWS) from None
    body = json.loads(resp["Payload"].read() or b"null")
    if resp.get("FunctionError"):
        error = f"{body.get('errorType')}: {body.get('errorMessage')}"
        raise OperatorError(f"{function} failed: {error}", EXIT_AWS)
    return dict(body)


def cancel(
    stack: Stack,
    run_id: str,
    *,
    wait: bool = True,
    interval: float = 30.0,
    max_polls: int = 120,
    sleep: Callable[[float], None] = time.sleep,
    emit: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Stop the run's execution, delete its cluster through the stack's cluster function, and
    (with ``wait``) wait until the cluster is gone. Safe to repeat.

    The execution is ABORTED as soon as it is stopped, while the step in flight goes on: what is
    reported is the cluster's own end, as the cluster function sees it (a create still in flight
    keeps its deletion pending until its cluster appears, or can no longer appear). A run that had
    already SUCCEEDED is not stopped: its execution is only deleting its cluster."""
    run = get_run(stack, run_id)
    store = _store(stack)
    status = execution_status(stack, run_id)
    if status is None and run.status == "QUEUED":
        # Cancelled first: a run taken from the queue meanwhile is then dropped, not started.
        _mark_cancelled(store, run)
        place = admission.withdraw(run_id, store.table)
        if place is not None:
            emit(f"run {run_id} was waiting for a slot (place {place}); taken out of the queue")
        status = execution_status(stack, run_id)  # unless it was started just before
    if run.status == "SUCCEEDED":
        emit(f"run {run_id} had already finished (SUCCEEDED, its results mailed); nothing to stop")
    elif status == "RUNNING":
        stack.client("stepfunctions").stop_execution(
            executionArn=stack.execution_arn(run_id),
            error="CancelledByOperator",
            cause="cryopilot cancel",
        )
        emit(f"stopped execution {run_id}")
    else:
        emit(f"execution {run_id} is {status or 'not found'}; nothing to stop")
    _mark_cancelled(store, run)
    step = _invoke_cluster(stack, {"action": "delete", "run_id": run_id})
    emit(_cluster_line(step))
    polls = 0
    while wait and not step.get("deleted"):
        if polls >= max_polls:
            raise OperatorError(_still_there(step, polls, run_id), EXIT_FAILED)
        sleep(interval)
        step = _invoke_cluster(
            stack, {"action": "check_deleted", "run_id": run_id, "polls": polls, "max_polls": max_polls + 1}
        )
        polls += 1
        emit(_cluster_line(step))
    return step


def _cluster_line(step: dict[str, Any]) -> str:
    line = f"cluster {step.get('name') or '-'}: {step.get('status')}"
    if step.get("status") == CLUSTER_DELETE_AWAITS_CREATE:
        line += " (its create was in flight and ParallelCluster has no cluster yet: deleted once it appears)"
    return line


def _still_there(step: dict[str, Any], polls: int, run_id: str) -> str:
    name, status = step.get("name"), step.get("status")
    if status == CLUSTER_DELETE_AWAITS_CREATE:
        return (
            f"cluster {name}: its deletion is still pending after {polls} checks (its create may still be"
            f" in flight); the janitor deletes it if it appears: check with `cryopilot status {run_id}`"
        )
    return (
        f"cluster {name} still {status} after {polls} checks; "
        "run `cryopilot cancel` again or delete it with pcluster"
    )


def _mark_cancelled(store: RunStore, run: RunRecord) -> None:
    if run.is_over:
        return
    # the step it was at stays, for the cleanup function's mail; the error is the one that function
    # records for a stopped execution, whichever of the two gets there first
    step = run.current_step or "unknown"
    store.mark_cancelled(
        run.run_id,
        {
            "type": "ExecutionAborted",
            "message": f"cancelled by the operator (cryopilot cancel) at {step}",
            "step": step,
        },
    )


# ------------------------------------------------------------------ report
def report_files(stack: Stack, run_id: str) -> Iterator[tuple[str, bytes]]:
    """The run's report files as stored next to its results (``runs/<run id>/report/``)."""
    s3 = stack.client("s3")
    prefix = f"runs/{run_id}/report/"
    listing = s3.list_objects_v2(Bucket=stack.results_bucket, Prefix=prefix)
    keys = [o["Key"] for o in listing.get("Contents", [])]
    if not keys:
        get_run(stack, run_id)  # no such run → its own message
        raise OperatorError(f"run {run_id} has no report yet (s3://{stack.results_bucket}/{prefix})")
    for key in sorted(keys):
        yield key[len(prefix) :], s3.get_object(Bucket=stack.results_bucket, Key=key)["Body"].read()


# ------------------------------------------------------------------ unsubscribe
def unsubscribe(stack: Stack, address: str, dataset: str | None = None) -> str:
    """Stop ``address`` receiving the mails of ``dataset`` (its other datasets stay), or, without
    ``dataset``, end its subscription. Returns what was done, as a line to show."""
    sns = stack.client("sns")
    arn = subscriptions.find(sns, stack.topic_arn, address)
    if arn is None:
        raise OperatorError(f"{address} has no subscription to the stack's mails", EXIT_NOT_FOUND)
    if arn == subscriptions.PENDING:
        raise OperatorError(
            f"{address}'s subscription is pending confirmation: SNS cannot delete it, and deletes it"
            f" itself if it is still unconfirmed {subscriptions.PENDING_EXPIRY_HOURS} hours after it"
            " was made",
            EXIT_NOT_FOUND,
        )
    if dataset is None:
        sns.unsubscribe(SubscriptionArn=arn)
        return f"{address}: subscription ended (every dataset)"
    policy = subscriptions.filter_policy(sns, arn)
    if policy is None:
        raise OperatorError(
            f"{address} receives every dataset's mails (no filter policy): end its subscription"
            " with `cryopilot unsubscribe` without --dataset",
            EXIT_USAGE,
        )
    left = without_dataset(policy, dataset)
    if left is None:
        raise OperatorError(f"{address} does not receive the mails of {dataset}", EXIT_NOT_FOUND)
    said = f"{address} no longer receives the mails of {dataset}"
    if not left:
        sns.unsubscribe(SubscriptionArn=arn)
        return f"{said}; it had no other dataset: its subscription ended"
    sns.set_subscription_attributes(
        SubscriptionArn=arn, AttributeName="FilterPolicy", AttributeValue=policy_for(left)
    )
    return said
