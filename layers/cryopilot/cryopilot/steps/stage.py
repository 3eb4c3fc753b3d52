"""The cryoSPARC stage steps: submit a stage through the agent, poll it, bound it in time."""

import base64
import json
from typing import Any

from pydantic import BaseModel

from cryopilot.adapters import runs
from cryopilot.adapters.agent_client import agent_for
from cryopilot.adapters.clusters import api
from cryopilot.adapters.observability import MetricUnit, logger, metrics
from cryopilot.adapters.pricing import queue_nodes
from cryopilot.adapters.settings import get_settings
from cryopilot.core import clock
from cryopilot.core.errors import AgentError, CryopilotError, JobFailedError, JobKilledError, JobStuckError
from cryopilot.core.spot import is_spot_queue, on_demand_queue
from cryopilot.domain import billing, capacity, limits, mails, nodes
from cryopilot.domain.catalogue import Catalogue, CostingError
from cryopilot.domain.record import RunContext, RunRecord
from cryopilot.protocol.agent import (
    KillResult,
    LaneState,
    RequeueResult,
    StageStatus,
    StatusResult,
    SubmitResult,
)
from cryopilot.protocol.stage import PlannedStage


class StageMail(BaseModel):
    """``$.stage.mail``: a mail the state machine publishes before the next wait (a stage that has
    waited ``CapacityMailMinutes`` for capacity), or None."""

    subject: str
    message: str
    dataset: str = "unknown"


class StageStep(BaseModel):
    """``$.stage`` in the state machine."""

    index: int
    id: str
    title: str
    state: str
    polls: int = 0
    waited_seconds: int = 0
    wait_seconds: int = 60
    done: bool = False
    last: bool = False
    next_index: int
    mail: StageMail | None = None


def _run(run_id: str) -> tuple[RunContext, list[PlannedStage]]:
    """What a stage step reads: the run's small step context (head node, waits) and its plan
    (read once per container: the store caches it), never the whole record."""
    store = runs.store()
    ctx = store.get_context(run_id)
    if ctx is None:
        raise AgentError(f"run {run_id} has no record")
    return ctx, store.get_plan(run_id)


def _stage_record(status: StageStatus) -> dict[str, Any]:
    jobs = status.jobs
    started = [j.started_at for j in jobs if j.started_at]
    completed = [j.completed_at for j in jobs if j.completed_at]
    progress = sum(j.progress for j in jobs) / len(jobs) if jobs else 0.0
    rec: dict[str, Any] = {
        "state": status.state,
        "jobs": [j.uid for j in jobs],
        "job_types": [j.job_type for j in jobs],
        "progress": round(progress, 4),
    }
    if started:
        rec["started_at"] = min(started)
    if completed and status.state == "completed":
        rec["completed_at"] = max(completed)
    counts = [j.num_particles for j in jobs if j.num_particles is not None]
    if counts:
        rec["num_particles"] = counts[-1]
    mics = [j.num_micrographs for j in jobs if j.num_micrographs is not None]
    if mics:
        rec["num_micrographs"] = mics[-1]
    if status.resolution_A is not None:
        rec["resolution_A"] = status.resolution_A
    return rec


#: Agent calls one invocation makes at most: a poll asks for the status, then may requeue the stage
#: (Spot interruption) or kill it (time limit). Each is bounded by the stack's agent timeout, and
#: together they must end before the function's own timeout (tests/unit/test_asl.py).
AGENT_CALLS_PER_INVOCATION = 2

#: Share of the estimated time left that the next poll waits: the estimate is refined at every poll,
#: so the waits halve towards the stage's end (a handful of polls per stage, few state transitions)
#: and the end is seen at most ``min_poll_seconds`` late when progress is steady.
POLL_FRACTION = 0.5
#: Once the estimated end is less than two minimum polls away, the next poll is this long after it.
END_MARGIN_SECONDS = 5


#: (polls, seconds): a stage polled this many times waits at least this long before its next poll.
#: A Step Functions execution fails, uncaught, past 25,000 history events, and each poll adds about
#: ten: a stage stuck, or waiting for capacity, for a day at one poll a minute would add 14,000.
#: With these steps a stage polls at most 120 times in its first 6 hours and 4 an hour after
#: that (tests/unit/test_asl.py bounds a whole run's events with them). A stage that ends normally
#: polls a handful of times and never reaches them.
POLL_BACKOFF: tuple[tuple[int, int], ...] = ((60, 300), (120, 900))


def poll_floor(polls: int) -> int:
    """The shortest wait before a stage's next poll, after ``polls`` polls (0: no floor yet)."""
    floor = 0
    for after, seconds in POLL_BACKOFF:
        if polls >= after:
            floor = seconds
    return floor


def _next_wait(stage: PlannedStage, status: StageStatus, waited: int, settings: dict[str, Any]) -> int:
    """Poll often when the stage is about to end, rarely while it has far to go: half the estimated
    time left, within [min_poll_seconds, max_poll_seconds], and once the end is near, just after it
    (a stage that is not done then is polled again the same way). The estimate is the jobs' progress rate
    since they started running (time spent waiting for a compute node does not count)."""
    lo = int(settings.get("min_poll_seconds", 60))
    hi = int(settings.get("max_poll_seconds", 1800))
    jobs = status.jobs
    progress = sum(j.progress for j in jobs) / len(jobs) if jobs else 0.0
    started = [j.started_at for j in jobs if j.started_at]
    running = clock.now() - min(started) if started else 0.0
    if 0.02 < progress < 1.0 and running > 0:
        remaining = running * (1.0 - progress) / progress
        # close to the end: poll just after the estimated end instead of up to a whole poll late
        wait = remaining + END_MARGIN_SECONDS if remaining <= 2 * lo else remaining * POLL_FRACTION
        return int(max(END_MARGIN_SECONDS, min(hi, wait)))
    remaining = float(stage.expected_seconds or 0) - waited
    return int(max(lo, min(hi, remaining * POLL_FRACTION)))


def observe_nodes(run_id: str, ctx: RunContext) -> RunContext:
    """List the cluster's GPU nodes (describeClusterInstances), at most every
    ``nodes.CHECK_SECONDS``, and keep them on the run (``compute_nodes``) and each queue's latest
    type in the step context. A failed listing is logged and tried at a later poll."""
    now = clock.now()
    if not ctx.cluster_name or (
        ctx.nodes_checked_epoch is not None and now - ctx.nodes_checked_epoch < nodes.CHECK_SECONDS
    ):
        return ctx
    store = runs.store()
    try:
        listed = api().describe_cluster_instances(ctx.cluster_name, node_type="ComputeNode")
    except CryopilotError as exc:
        logger.warning("could not list the cluster's nodes", extra={"run_id": run_id, "error": str(exc)})
        return ctx
    seen = store.get_run(run_id, ["compute_nodes"])
    merged = nodes.merge(
        seen.compute_nodes if seen else {},
        (
            {
                "id": i.instance_id,
                "instance_type": i.instance_type,
                "queue": i.queue_name,
                "launched_at": i.launch_time.timestamp() if i.launch_time else now,
            }
            for i in listed
        ),
        now,
    )
    types = nodes.queue_types(merged)
    store.update_run(run_id, compute_nodes=merged, **nodes_so_far(merged, now))
    store.put_context(run_id, nodes_checked_epoch=now, queue_types=types)
    return ctx.model_copy(update={"nodes_checked_epoch": now, "queue_types": types})


def nodes_so_far(merged: dict[str, dict[str, Any]], now: float) -> dict[str, float]:
    """The bill so far of the nodes listed (``nodes_cost_usd``, ``nodes_gpu_hours``): each node from
    its launch to now, or to the listing that no longer had it (an upper bound within one listing;
    the report places each end exactly). Empty when a type has no price."""
    settings = get_settings()
    try:
        catalogue = Catalogue.for_deployment(settings.price_overrides)
    except CostingError:
        return {}

    def price(instance_type: str) -> float | None:
        try:
            return float(catalogue.price(instance_type, settings.region))
        except CostingError:
            return None

    lives = billing.node_lives(merged, prices=price, jobs={}, idle_seconds=0.0, until=now)
    if lives is None:
        return {}
    cost, gpu_hours = billing.lifetime_bill(lives)
    return {"nodes_cost_usd": round(cost, 2), "nodes_gpu_hours": round(gpu_hours, 2)}


def stage_cost(ctx: RunContext, stage: PlannedStage, rec: dict[str, Any]) -> float | None:
    """What the stage's nodes cost so far (on-demand; whole nodes, from the stage's first job's
    start to its end or now). None for the head node's stages, or a type without a price. A gpu8
    stage is priced at the type of the queue's latest node seen (a fail-over's type), if any."""
    started = rec.get("started_at")
    gpu8 = ctx.queue_types.get("gpu8") or ctx.gpu8_instance_type
    node = queue_nodes(get_settings(), gpu8).get(stage.lane) if stage.lane else None
    if node is None or not started:
        return None
    job = billing.Job(
        went=float(started),
        start=float(started),
        end=float(rec.get("completed_at") or clock.now()),
        nodes=node.nodes_for(int(stage.gpus or 1)),
    )
    return round(billing.run_time_cost(node, job), 4)


def check_limits(ctx: RunContext, plan: list[PlannedStage], index: int) -> None:
    """Stop the run (:class:`RunLimitError`) past ``limits.max_hours``, or when the cost so far
    plus the estimate for the stages left would exceed ``limits.max_cost_usd``."""
    limits.check_hours(ctx.limits, ctx.started_epoch, clock.now())
    settings = get_settings()
    limits.check_cost(
        ctx.limits,
        ctx.costs,
        plan[index:],
        preset=ctx.preset,
        nodes=queue_nodes(settings, ctx.gpu8_instance_type),
        catalogue=Catalogue.for_deployment(settings.price_overrides),
    )


def _count_duration(stage_id: str, rec: dict[str, Any]) -> None:
    """The ``StageDuration`` metric of a completed stage: its jobs' first start to last end."""
    if rec.get("started_at") and rec.get("completed_at"):
        metrics.add_dimension(name="stage", value=stage_id)
        seconds = max(0.0, float(rec["completed_at"]) - float(rec["started_at"]))
        metrics.add_metric(name="StageDuration", unit=MetricUnit.Seconds, value=seconds)


def watch_capacity(
    run_id: str, ctx: RunContext, stage: PlannedStage, lane: LaneState, rec: dict[str, Any]
) -> tuple[bool, StageMail | None]:
    """Record what the stage's lane says of its capacity (``rec``: the stage's record, updated; the
    run's ``capacity_events`` when it changes), and fail the run (:class:`CapacityError`) when no node
    can come: a launch error ParallelCluster does not fail over, or every compute resource of the
    lane down for ``CapacityWaitMinutes``. (True while the stage waits for capacity, and the mail to
    send once it has waited ``CapacityMailMinutes``: once per stage.)"""
    settings = get_settings()
    store = runs.store()
    now = clock.now()
    types = settings.queue_compute_types(ctx.gpu8_instance_type, spot=True).get(lane.lane, [])
    view = capacity.lane_capacity(lane, types)
    before = ctx.capacity.get(stage.id) or {}
    if not view.down and not before.get("since"):
        return False, None  # nothing down, nothing waited for: the common case writes nothing
    since: float | None = None
    all_down_since: float | None = None
    if view.waiting:
        since = float(before.get("since") or now)
        # every compute resource down: counted from the first poll that saw it so
        all_down_since = float(before.get("all_down_since") or now) if view.all_down else None
        text = capacity.note(view, since)
    elif view.down:
        failed = ", ".join(f"{t} {c}" for t, c in view.down)
        text = f"{lane.lane}: {failed}; ParallelCluster failed over to {view.trying or 'none'}"
    else:
        text = f"capacity found on {lane.lane} (was: {before.get('note', '?')})"
    rec.update(capacity_note=text, capacity_waiting=view.waiting)
    if text != before.get("note"):
        store.append_to(run_id, "capacity_events", {"stage": stage.id, "at": now, "note": text})
        logger.info("capacity", extra={"run_id": run_id, "stage": stage.id, "note": text})
    state = {"since": since, "all_down_since": all_down_since, "note": text, "mailed": before.get("mailed")}
    if state != before:
        store.put_context(run_id, capacity={**ctx.capacity, stage.id: state})
    if not view.waiting:
        return False, None
    catalogue = Catalogue.for_deployment(settings.price_overrides)
    vcpus = {t: catalogue.instances[t].vcpus for t in types if t in catalogue.instances}
    try:
        capacity.raise_if_hopeless(
            view,
            waited_seconds=now - all_down_since if all_down_since is not None else 0.0,
            limit_seconds=settings.capacity_wait_minutes * 60.0,
            region=settings.region,
            vcpus=vcpus,
            stage=stage.id,
        )
    except CryopilotError:
        store.update_stage(run_id, stage.id, **rec)
        raise
    assert since is not None  # waiting
    if before.get("mailed") or now - since < settings.capacity_mail_minutes * 60.0:
        return True, None
    store.put_context(run_id, capacity={**ctx.capacity, stage.id: {**state, "mailed": now}})
    run = store.get_run(run_id, ["dataset"])
    mail = mails.capacity_waiting(
        run or RunRecord(run_id=run_id),
        stage.title,
        text,
        now - since,
        fail_minutes=settings.capacity_wait_minutes,
    )
    store.append_to(run_id, "mails", {"kind": mail.kind, "subject": mail.subject, "at": clock.now_iso()})
    return True, StageMail(subject=mail.subject, message=mail.body, dataset=mail.attributes["dataset"])


def submit_argv(run_id: str, stage: PlannedStage) -> list[str]:
    """The agent's ``submit`` verb for one planned stage (its spec as base64 JSON). Fields left at
    their default are not sent: an agent of an earlier version, still on a cluster while the stack
    is updated, refuses a field it does not know (``extra="forbid"``), and a stage that does not use
    a newer field (``resample``) must still reach it."""
    spec = base64.b64encode(
        json.dumps(stage.model_dump(mode="json", exclude_defaults=True)).encode()
    ).decode()
    return ["submit", "--project", run_id, "--spec-b64", spec]


def submit(run_id: str, index: int) -> StageStep:
    store = runs.store()
    ctx, plan = _run(run_id)
    if not 0 <= index < len(plan):
        raise AgentError(f"run {run_id} has no stage #{index}")
    stage = plan[index]
    # a failure from here on (the limits, the head node, SSM) is this stage's, not the one before
    store.update_run(run_id, current_step=f"stage:{stage.id}")
    check_limits(ctx, plan, index)
    agent = agent_for(run_id, ctx.head_node_instance_id)
    result = agent.call(submit_argv(run_id, stage), SubmitResult)
    rec = _stage_record(result.stage)
    rec["submitted_at"] = clock.now()
    store.update_stage(run_id, stage.id, **rec)
    store.update_run(
        run_id,
        current_step=f"stage:{stage.id}",
        current_stage=stage.id,
        cryosparc_project=result.project_uid,
    )
    if result.stage.decisions and not result.already_submitted:
        store.append_to(run_id, "decisions", *[d.model_dump() for d in result.stage.decisions])
    logger.info("stage submitted", extra={"run_id": run_id, "stage": stage.id, "jobs": rec["jobs"]})
    done = result.stage.state == "completed"
    if done:
        _count_duration(stage.id, rec)
    return StageStep(
        index=index,
        id=stage.id,
        title=stage.title,
        state=result.stage.state,
        wait_seconds=_next_wait(stage, result.stage, 0, ctx.settings),
        done=done,
        last=index == len(plan) - 1,
        next_index=index + 1,
    )


def resubmit_on_demand(run_id: str, ctx: RunContext, stage: PlannedStage, status: StageStatus) -> bool:
    """A stage whose job failed on a Spot lane (its node reclaimed by a Spot interruption, as a
    rule) goes once to the lane's On-Demand queue: the failed jobs are queued again there, the stage
    records the interruption and the run's capacity events say so. False when the stage is not on
    Spot or was resubmitted already (the failure then fails the run, as on any lane)."""
    if not is_spot_queue(stage.lane) or stage.id in ctx.lanes:
        return False
    assert stage.lane is not None
    lane = on_demand_queue(stage.lane)
    store = runs.store()
    now = clock.now()
    failed = [j for j in status.jobs if j.status == "failed"]
    agent = agent_for(run_id, ctx.head_node_instance_id)
    agent.call(["requeue", "--project", run_id, "--stage", stage.id, "--lane", lane], RequeueResult)
    lost = [
        {
            "at": now,
            "job": j.uid,
            "lane": stage.lane,
            "ended_at": j.completed_at,
            "error": j.error or "failed",
        }
        for j in failed
    ]
    store.put_context(run_id, lanes={**ctx.lanes, stage.id: lane})
    store.update_stage(run_id, stage.id, state="queued", spot_interruptions=lost, resubmitted_on=lane)
    jobs = ", ".join(j.uid for j in failed) or "?"
    error = failed[0].error if failed else "failed"
    note = f"{stage.lane}: job {jobs} lost on Spot ({error}); resubmitted on {lane}"
    store.append_to(run_id, "capacity_events", {"stage": stage.id, "at": now, "note": note})
    logger.info("stage resubmitted on demand", extra={"run_id": run_id, "stage": stage.id, "note": note})
    return True


def poll(run_id: str, step: StageStep) -> StageStep:
    store = runs.store()
    ctx, plan = _run(run_id)
    stage = plan[step.index]
    if stage.id in ctx.lanes:  # resubmitted On-Demand after a Spot interruption
        stage = stage.model_copy(update={"lane": ctx.lanes[stage.id]})
    waited = step.waited_seconds + step.wait_seconds
    agent = agent_for(run_id, ctx.head_node_instance_id)
    result = agent.call(["status", "--project", run_id, "--stage", stage.id], StatusResult)
    status = next((s for s in result.stages if s.stage_id == stage.id), None)
    if status is None:
        raise AgentError(f"agent status did not report stage {stage.id}")
    rec = _stage_record(status)
    rec["polls"] = step.polls + 1
    rec["last_wait_seconds"] = step.wait_seconds  # the poll interval that led to this poll
    lane = next((lane for lane in result.lanes if lane.lane == stage.lane), None)
    waiting, mail = watch_capacity(run_id, ctx, stage, lane, rec) if lane is not None else (False, None)
    ctx = observe_nodes(run_id, ctx)
    cost = stage_cost(ctx, stage, rec)
    if cost is not None:
        rec["cost_usd"] = cost
    store.update_stage(run_id, stage.id, **rec)
    if cost is not None and ctx.limits.get("max_cost_usd"):
        store.put_context_cost(run_id, stage.id, cost)
    if status.state == "failed" and resubmit_on_demand(run_id, ctx, stage, status):
        return step.model_copy(
            update={
                "state": "queued",
                "polls": step.polls + 1,
                "waited_seconds": waited,
                "wait_seconds": int(ctx.settings.get("min_poll_seconds", 60)),
                "mail": None,
            }
        )
    if status.state == "failed":
        failed = [j for j in status.jobs if j.status == "failed"]
        detail = "; ".join(
            f"job {j.uid} ({j.job_type}) failed" + (f": {j.error}" if j.error else "") for j in failed
        )
        raise JobFailedError(f"stage '{stage.title}': {detail or 'a job failed'}", stage=stage.id)
    if status.state == "killed":
        killed = ", ".join(j.uid for j in status.jobs if j.status == "killed")
        raise JobKilledError(f"stage '{stage.title}': job {killed or '?'} was killed", stage=stage.id)
    if status.state == "completed":
        _count_duration(stage.id, rec)
        if status.decisions:
            store.append_to(run_id, "decisions", *[d.model_dump() for d in status.decisions])
        if status.resolution_A is not None:
            store.update_run(run_id, resolution_A=status.resolution_A)
        return step.model_copy(
            update={
                "state": "completed",
                "polls": step.polls + 1,
                "waited_seconds": waited,
                "done": True,
                "mail": None,
            }
        )
    limits.check_hours(ctx.limits, ctx.started_epoch, clock.now())
    limit = stage.time_limit_seconds
    if limit and waited >= limit:
        kill = agent.call(["kill", "--project", run_id, "--stage", stage.id], KillResult)
        store.update_stage(run_id, stage.id, state="killed", killed_for_time=True)
        raise JobStuckError(
            f"stage '{stage.title}' ran past its limit of {limit / 3600:.1f} h; "
            f"killed job(s) {', '.join(kill.killed) or '(none running)'}",
            stage=stage.id,
        )
    # waiting for capacity: look again soon (a fail-over or a hopeless wait shows within a poll or two)
    lo = int(ctx.settings.get("min_poll_seconds", 60))
    wait = max(
        lo if waiting else _next_wait(stage, status, waited, ctx.settings),
        poll_floor(step.polls + 1),
    )
    return step.model_copy(
        update={
            "state": status.state,
            "polls": step.polls + 1,
            "waited_seconds": waited,
            "wait_seconds": wait,
            "mail": mail,
        }
    )
