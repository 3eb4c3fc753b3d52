"""Cluster: create, check, delete and check_deleted the run's ParallelCluster."""

from typing import Annotated, Any, Literal

from aws_lambda_powertools.utilities.typing import LambdaContext
from cryopilot.adapters.observability import logger, tracer
from cryopilot.steps import cluster
from pydantic import BaseModel, Field, TypeAdapter


class Create(BaseModel):
    action: Literal["create"]
    run_id: str


class Check(BaseModel):
    action: Literal["check", "check_deleted"]
    run_id: str
    polls: int = 0
    max_polls: int = 90


class Delete(BaseModel):
    action: Literal["delete"]
    run_id: str


class Fallback(BaseModel):
    action: Literal["fallback"]
    run_id: str
    error: Any = None


class DryRun(BaseModel):
    """`cryopilot smoke`: send the configuration of ``run`` (a run record's fields) with dryrun=true."""

    action: Literal["dryrun"]
    run_id: str
    run: dict[str, Any]


Request = TypeAdapter(Annotated[Create | Check | Delete | Fallback | DryRun, Field(discriminator="action")])


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    req = Request.validate_python(event)
    logger.append_keys(run_id=req.run_id, action=req.action)
    if isinstance(req, DryRun):
        return cluster.dryrun({**req.run, "run_id": req.run_id}).model_dump(mode="json")
    if isinstance(req, Create):
        step = cluster.create(req.run_id)
    elif isinstance(req, Delete):
        step = cluster.delete(req.run_id)
    elif isinstance(req, Fallback):
        step = cluster.fallback(req.run_id, req.error)
    elif req.action == "check":
        step = cluster.check(req.run_id, req.polls, req.max_polls)
    else:
        step = cluster.check_deleted(req.run_id, req.polls, req.max_polls)
    return step.model_dump(mode="json")
