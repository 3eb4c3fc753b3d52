"""The cryoSPARC stage steps: submit a stage through the agent, poll it, bound it in time."""

from __future__ import annotations

import base64
import json
from typing import Any

from pydantic import BaseModel

from cryopilot import clock, runs
from cryopilot.agent_client import AgentClient
from cryopilot.agent_protocol import KillResult, StageStatus, StatusResult, SubmitResult
from cryopilot.errors import AgentError, JobFailedError, JobKilledError, JobStuckError
from cryopilot.observability import logger
from cryopilot.settings import get_settings


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


#: the record fields a stage step reads (the plan is read once per container: runs.get_plan)
_STEP_FIELDS = ["head_node_instance_id", "settings"]


def _run(run_id: str) -> dict[str, Any]:
    run = runs.get_run(run_id, _STEP_FIELDS)
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


def _next_wait(stage: dict[str, Any], status: StageStatus, waited: int, settings: dict[str, Any]) -> int:
    """Poll often when the stage is about to end, rarely while it has far to go: a quarter of
    the estimated time left, within [min_poll_seconds, max_poll_seconds]."""
    lo = int(settings.get("min_poll_seconds", 60))
    hi = int(settings.get("max_poll_seconds", 1800))
    jobs = status.jobs
    progress = sum(j.progress for j in jobs) / len(jobs) if jobs else 0.0
    if 0.02 < progress < 1.0 and waited > 0:
        remaining = waited * (1.0 - progress) / progress
    else:
        remaining = float(stage.get("expected_seconds") or 0) - waited
    return int(max(lo, min(hi, remaining / 4)))


def submit(run_id: str, index: int) -> StageStep:
    run = _run(run_id)
    plan: list[dict[str, Any]] = run["plan"]
    if not 0 <= index < len(plan):
        raise AgentError(f"run {run_id} has no stage #{index}")
    stage = plan[index]
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
    runs.update_stage(run_id, stage["id"], **rec)
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
        if status.decisions:
            runs.append_to(run_id, "decisions", *[d.model_dump() for d in status.decisions])
        if status.resolution_A is not None:
            runs.update_run(run_id, resolution_A=status.resolution_A)
        return step.model_copy(
            update={"state": "completed", "polls": step.polls + 1, "waited_seconds": waited, "done": True}
        )
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
