"""The cryoSPARC stage steps: submit a stage through the agent, poll it, bound it in time."""

from __future__ import annotations

import base64
import json
from typing import Any

from pydantic import BaseModel

from cryopilot.adapters import runs
from cryopilot.adapters.agent_client import AgentClient
from cryopilot.adapters.observability import logger
from cryopilot.adapters.settings import get_settings
from cryopilot.core import clock
from cryopilot.core.errors import AgentError, JobFailedError, JobKilledError, JobStuckError, RunLimitError
from cryopilot.domain import billing
from cryopilot.domain.catalogue import PROFILE_FOR_PRESET, Catalogue, CostingError, load_profiles
from cryopilot.domain.estimate import REFERENCE_INSTANCE_TYPE, PlanStage, wall_seconds
from cryopilot.domain.presets import REPEATED_STAGE, profile_stage_id
from cryopilot.domain.record import RunContext
from cryopilot.protocol.agent import KillResult, StageStatus, StatusResult, SubmitResult
from cryopilot.protocol.stage import PlannedStage


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


def agent_for(run_id: str, head_node_instance_id: str | None) -> AgentClient:
    """The agent on the run's head node."""
    settings = get_settings()
    if not head_node_instance_id:
        raise AgentError(f"run {run_id} has no head node yet")
    return AgentClient(
        head_node_instance_id,
        output_bucket=settings.artifacts_bucket,
        output_prefix=f"ssm-output/{run_id}",
        timeout_seconds=settings.agent_timeout_seconds,
    )


def _run(run_id: str) -> tuple[RunContext, list[PlannedStage]]:
    """What a stage step reads: the run's small step context (head node, waits) and its plan
    (read once per container: the store caches it), never the whole record."""
    store = runs.store()
    ctx = store.get_context(run_id)
    if ctx is None:
        raise AgentError(f"run {run_id} has no record")
    return ctx, store.get_plan(run_id)


def _limits_view(ctx: RunContext, plan: list[PlannedStage]) -> dict[str, Any]:
    """The step context and plan as the limit and cost checks take them."""
    return {**ctx.model_dump(), "plan": [p.model_dump(mode="json") for p in plan]}


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


#: Share of the estimated time left that the next poll waits: the estimate is refined at every poll,
#: so the waits halve towards the stage's end (a handful of polls per stage, few state transitions)
#: and the end is seen at most ``min_poll_seconds`` late when progress is steady.
POLL_FRACTION = 0.5
#: Once the estimated end is less than two minimum polls away, the next poll is this long after it.
END_MARGIN_SECONDS = 5


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


def _node_type(run: dict[str, Any], lane: str | None) -> billing.NodeType | None:
    """The node of the run's queue ``lane`` (the placement's gpu8 type when the run recorded one),
    priced from the deployment's catalogue; None for the head node or a type without a price."""
    settings = get_settings()
    gpu8 = run.get("gpu8_instance_type")
    itype = settings.queue_instance_types(str(gpu8) if gpu8 else None).get(lane) if lane else None
    if itype is None:
        return None
    try:
        return billing.node_type(Catalogue.for_deployment(settings.price_overrides), itype, settings.region)
    except CostingError:
        return None


def stage_cost(run: dict[str, Any], stage: dict[str, Any], rec: dict[str, Any]) -> float | None:
    """What the stage's nodes cost so far (on-demand; whole nodes, from the stage's first job's
    start to its end or now). None for the head node's stages, or a type without a price."""
    started = rec.get("started_at")
    node = _node_type(run, stage.get("lane"))
    if node is None or not started:
        return None
    job = billing.Job(
        went=float(started),
        start=float(started),
        end=float(rec.get("completed_at") or clock.now()),
        nodes=node.nodes_for(int(stage.get("gpus") or 1)),
    )
    return round(billing.run_time_cost(node, job), 4)


def _remaining_cost(run: dict[str, Any], stages_left: list[dict[str, Any]]) -> float:
    """Estimated cost of ``stages_left``: Table 1 minutes of the preset's white-paper dataset on
    the queues' instance types (whole nodes; the catalogue's speed factors)."""
    profile = load_profiles().get(PROFILE_FOR_PRESET.get(str(run.get("preset")), "cgrp"))
    try:
        catalogue = Catalogue.for_deployment(get_settings().price_overrides)
    except CostingError:  # malformed overrides: no stage has a price
        return 0.0
    if profile is None:
        return 0.0
    total = 0.0
    for stage in stages_left:
        node = _node_type(run, stage.get("lane"))
        kind = profile_stage_id(stage["id"])
        if node is None or kind not in profile.minutes:
            continue
        minutes = profile.minutes[kind] / (profile.hetero_rounds if kind == REPEATED_STAGE else 1)
        timed = PlanStage(id=stage["id"], kind=kind, gpus=int(stage.get("gpus") or 1), minutes=minutes)
        try:
            seconds = wall_seconds(catalogue, timed, node.instance_type, REFERENCE_INSTANCE_TYPE)
        except CostingError:
            continue
        job = billing.Job(went=0.0, start=0.0, end=seconds, nodes=node.nodes_for(timed.gpus))
        total += billing.run_time_cost(node, job)
    return total


def _check_hours(run: dict[str, Any]) -> None:
    """:class:`RunLimitError` once the run has run longer than ``limits.max_hours``."""
    max_hours = (run.get("limits") or {}).get("max_hours")
    started = run.get("started_epoch")
    if max_hours and started:
        hours = (clock.now() - float(started)) / 3600
        if hours > float(max_hours):
            raise RunLimitError(
                f"the run has run {hours:.1f} h, past its limit of {max_hours:g} h (limits.max_hours)"
            )


def check_limits(run: dict[str, Any], index: int) -> None:
    """Stop the run (:class:`RunLimitError`) past ``limits.max_hours``, or when the cost so far
    plus the estimate for the stages left would exceed ``limits.max_cost_usd``."""
    _check_hours(run)
    max_cost = (run.get("limits") or {}).get("max_cost_usd")
    if max_cost:
        so_far = sum(float(v) for v in (run.get("costs") or {}).values())
        left = _remaining_cost(run, run["plan"][index:])
        if so_far + left > float(max_cost):
            stages_left = len(run["plan"]) - index
            raise RunLimitError(
                f"the estimated cost ${so_far + left:,.0f} (${so_far:,.0f} so far, ${left:,.0f} for the "
                f"{stages_left} stages left) would exceed limits.max_cost_usd ${float(max_cost):,.0f}"
            )


def submit(run_id: str, index: int) -> StageStep:
    store = runs.store()
    ctx, plan = _run(run_id)
    if not 0 <= index < len(plan):
        raise AgentError(f"run {run_id} has no stage #{index}")
    stage = plan[index]
    # a failure from here on (the limits, the head node, SSM) is this stage's, not the one before
    store.update_run(run_id, current_step=f"stage:{stage.id}")
    check_limits(_limits_view(ctx, plan), index)
    spec = base64.b64encode(json.dumps(stage.model_dump(mode="json")).encode()).decode()
    agent = agent_for(run_id, ctx.head_node_instance_id)
    result = agent.call(["submit", "--project", run_id, "--spec-b64", spec], SubmitResult)
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


def poll(run_id: str, step: StageStep) -> StageStep:
    store = runs.store()
    ctx, plan = _run(run_id)
    run = _limits_view(ctx, plan)
    stage = plan[step.index]
    waited = step.waited_seconds + step.wait_seconds
    agent = agent_for(run_id, ctx.head_node_instance_id)
    result = agent.call(["status", "--project", run_id, "--stage", stage.id], StatusResult)
    status = next((s for s in result.stages if s.stage_id == stage.id), None)
    if status is None:
        raise AgentError(f"agent status did not report stage {stage.id}")
    rec = _stage_record(status)
    rec["polls"] = step.polls + 1
    rec["last_wait_seconds"] = step.wait_seconds  # the poll interval that led to this poll
    cost = stage_cost(run, stage.model_dump(mode="json"), rec)
    if cost is not None:
        rec["cost_usd"] = cost
    store.update_stage(run_id, stage.id, **rec)
    if cost is not None and ctx.limits.get("max_cost_usd"):
        store.put_context_cost(run_id, stage.id, cost)
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
        if status.decisions:
            store.append_to(run_id, "decisions", *[d.model_dump() for d in status.decisions])
        if status.resolution_A is not None:
            store.update_run(run_id, resolution_A=status.resolution_A)
        return step.model_copy(
            update={"state": "completed", "polls": step.polls + 1, "waited_seconds": waited, "done": True}
        )
    _check_hours(run)
    limit = stage.time_limit_seconds
    if limit and waited >= limit:
        kill = agent.call(["kill", "--project", run_id, "--stage", stage.id], KillResult)
        store.update_stage(run_id, stage.id, state="killed", killed_for_time=True)
        raise JobStuckError(
            f"stage '{stage.title}' ran past its limit of {limit / 3600:.1f} h; "
            f"killed job(s) {', '.join(kill.killed) or '(none running)'}",
            stage=stage.id,
        )
    return step.model_copy(
        update={
            "state": status.state,
            "polls": step.polls + 1,
            "waited_seconds": waited,
            "wait_seconds": _next_wait(stage, status, waited, ctx.settings),
        }
    )
