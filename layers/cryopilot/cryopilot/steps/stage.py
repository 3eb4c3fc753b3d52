"""The cryoSPARC stage steps: submit a stage through the agent, poll it, bound it in time."""

from __future__ import annotations

import base64
import json
import math
from functools import lru_cache
from typing import Any

from pydantic import BaseModel

from cryopilot.adapters import aws, runs
from cryopilot.adapters.agent_client import AgentClient
from cryopilot.adapters.observability import MetricUnit, logger, metrics
from cryopilot.adapters.settings import get_settings
from cryopilot.core import clock
from cryopilot.core.errors import AgentError, JobFailedError, JobKilledError, JobStuckError, RunLimitError
from cryopilot.protocol.agent import KillResult, StageStatus, StatusResult, SubmitResult


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


def agent_for(run: dict[str, Any]) -> AgentClient:
    settings = get_settings()
    instance_id = run.get("head_node_instance_id")
    if not instance_id:
        raise AgentError(f"run {run['run_id']} has no head node yet")
    return AgentClient(
        instance_id,
        output_bucket=settings.artifacts_bucket,
        output_prefix=f"ssm-output/{run['run_id']}",
        timeout_seconds=settings.agent_timeout_seconds,
    )


def _run(run_id: str) -> dict[str, Any]:
    """What a stage step reads: the run's small step context (head node, waits) and its plan
    (read once per container: runs.get_plan), never the whole record."""
    run = runs.get_context(run_id)
    if run is None:
        raise AgentError(f"run {run_id} has no record")
    run["plan"] = runs.get_plan(run_id)
    return run


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


def _next_wait(stage: dict[str, Any], status: StageStatus, waited: int, settings: dict[str, Any]) -> int:
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
    remaining = float(stage.get("expected_seconds") or 0) - waited
    return int(max(lo, min(hi, remaining * POLL_FRACTION)))


#: GPUs per node of each queue's instance type come from the catalogue; the queue picks the type.
def _queue_instance_type(run: dict[str, Any], lane: str) -> str | None:
    gpu8 = run.get("gpu8_instance_type")
    return get_settings().queue_instance_types(str(gpu8) if gpu8 else None).get(lane)


@lru_cache(maxsize=1)
def _catalogue() -> Any:
    from cryopilot.domain.costing import Catalogue

    return Catalogue.from_env()


aws.on_reset(_catalogue.cache_clear)


def stage_cost(run: dict[str, Any], stage: dict[str, Any], rec: dict[str, Any]) -> float | None:
    """What the stage's nodes cost so far (on-demand; whole nodes, from the stage's first job's
    start to its end or now). None for the head node's stages, or a type without a price."""
    from cryopilot.domain.costing import CostingError

    lane = stage.get("lane")
    started = rec.get("started_at")
    itype = _queue_instance_type(run, lane) if lane else None
    if itype is None or not started:
        return None
    try:
        price = _catalogue().price(itype, get_settings().region)
        per_node = max(1, _catalogue().gpus(itype))
    except CostingError:
        return None
    nodes = max(1, math.ceil(int(stage.get("gpus") or 1) / per_node))
    hours = max(0.0, float(rec.get("completed_at") or clock.now()) - float(started)) / 3600
    return round(nodes * hours * price, 4)


def _remaining_cost(run: dict[str, Any], stages_left: list[dict[str, Any]]) -> float:
    """Estimated cost of ``stages_left``: Table 1 minutes of the preset's white-paper dataset on
    the queues' instance types (whole nodes; the catalogue's speed factors)."""
    from cryopilot.domain.costing import PROFILE_FOR_PRESET, CostingError, load_profiles
    from cryopilot.domain.presets import REPEATED_STAGE, profile_stage_id

    profile = load_profiles().get(PROFILE_FOR_PRESET.get(str(run.get("preset")), "cgrp"))
    total = 0.0
    for stage in stages_left:
        lane = stage.get("lane")
        itype = _queue_instance_type(run, lane) if lane else None
        kind = profile_stage_id(stage["id"])
        if itype is None or profile is None or kind not in profile.minutes:
            continue
        minutes = profile.minutes[kind] / (profile.hetero_rounds if kind == REPEATED_STAGE else 1)
        try:
            cat = _catalogue()
            price, per_node = cat.price(itype, get_settings().region), max(1, cat.gpus(itype))
            speed = cat.speed(itype) if kind in cat.speed_table.gpu_bound_stages else 1.0
        except CostingError:
            continue
        nodes = max(1, math.ceil(int(stage.get("gpus") or 1) / per_node))
        total += nodes * price * minutes / 60 / max(speed, 0.01)
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


def _count_duration(stage_id: str, rec: dict[str, Any]) -> None:
    """The ``StageDuration`` metric of a completed stage: its jobs' first start to last end."""
    if rec.get("started_at") and rec.get("completed_at"):
        metrics.add_dimension(name="stage", value=stage_id)
        seconds = max(0.0, float(rec["completed_at"]) - float(rec["started_at"]))
        metrics.add_metric(name="StageDuration", unit=MetricUnit.Seconds, value=seconds)


def submit(run_id: str, index: int) -> StageStep:
    run = _run(run_id)
    plan: list[dict[str, Any]] = run["plan"]
    if not 0 <= index < len(plan):
        raise AgentError(f"run {run_id} has no stage #{index}")
    stage = plan[index]
    # a failure from here on (the limits, the head node, SSM) is this stage's, not the one before
    runs.update_run(run_id, current_step=f"stage:{stage['id']}")
    check_limits(run, index)
    spec = base64.b64encode(json.dumps(stage).encode()).decode()
    result = agent_for(run).call(["submit", "--project", run_id, "--spec-b64", spec], SubmitResult)
    rec = _stage_record(result.stage)
    rec["submitted_at"] = clock.now()
    runs.update_stage(run_id, stage["id"], **rec)
    runs.update_run(
        run_id,
        current_step=f"stage:{stage['id']}",
        current_stage=stage["id"],
        cryosparc_project=result.project_uid,
    )
    if result.stage.decisions and not result.already_submitted:
        runs.append_to(run_id, "decisions", *[d.model_dump() for d in result.stage.decisions])
    logger.info("stage submitted", extra={"run_id": run_id, "stage": stage["id"], "jobs": rec["jobs"]})
    done = result.stage.state == "completed"
    if done:
        _count_duration(stage["id"], rec)
    settings = run.get("settings") or {}
    return StageStep(
        index=index,
        id=stage["id"],
        title=stage["title"],
        state=result.stage.state,
        wait_seconds=_next_wait(stage, result.stage, 0, settings),
        done=done,
        last=index == len(plan) - 1,
        next_index=index + 1,
    )


def poll(run_id: str, step: StageStep) -> StageStep:
    run = _run(run_id)
    plan: list[dict[str, Any]] = run["plan"]
    stage = plan[step.index]
    waited = step.waited_seconds + step.wait_seconds
    agent = agent_for(run)
    result = agent.call(["status", "--project", run_id, "--stage", stage["id"]], StatusResult)
    status = next((s for s in result.stages if s.stage_id == stage["id"]), None)
    if status is None:
        raise AgentError(f"agent status did not report stage {stage['id']}")
    rec = _stage_record(status)
    rec["polls"] = step.polls + 1
    rec["last_wait_seconds"] = step.wait_seconds  # the poll interval that led to this poll
    cost = stage_cost(run, stage, rec)
    if cost is not None:
        rec["cost_usd"] = cost
    runs.update_stage(run_id, stage["id"], **rec)
    if cost is not None and (run.get("limits") or {}).get("max_cost_usd"):
        runs.put_context_cost(run_id, stage["id"], cost)
    if status.state == "failed":
        failed = [j for j in status.jobs if j.status == "failed"]
        detail = "; ".join(
            f"job {j.uid} ({j.job_type}) failed" + (f": {j.error}" if j.error else "") for j in failed
        )
        raise JobFailedError(f"stage '{stage['title']}': {detail or 'a job failed'}", stage=stage["id"])
    if status.state == "killed":
        killed = ", ".join(j.uid for j in status.jobs if j.status == "killed")
        raise JobKilledError(f"stage '{stage['title']}': job {killed or '?'} was killed", stage=stage["id"])
    if status.state == "completed":
        _count_duration(stage["id"], rec)
        if status.decisions:
            runs.append_to(run_id, "decisions", *[d.model_dump() for d in status.decisions])
        if status.resolution_A is not None:
            runs.update_run(run_id, resolution_A=status.resolution_A)
        return step.model_copy(
            update={"state": "completed", "polls": step.polls + 1, "waited_seconds": waited, "done": True}
        )
    _check_hours(run)
    limit = int(stage.get("time_limit_seconds") or 0)
    if limit and waited >= limit:
        kill = agent.call(["kill", "--project", run_id, "--stage", stage["id"]], KillResult)
        runs.update_stage(run_id, stage["id"], state="killed", killed_for_time=True)
        raise JobStuckError(
            f"stage '{stage['title']}' ran past its limit of {limit / 3600:.1f} h; "
            f"killed job(s) {', '.join(kill.killed) or '(none running)'}",
            stage=stage["id"],
        )
    settings = run.get("settings") or {}
    return step.model_copy(
        update={
            "state": status.state,
            "polls": step.polls + 1,
            "waited_seconds": waited,
            "wait_seconds": _next_wait(stage, status, waited, settings),
        }
    )
