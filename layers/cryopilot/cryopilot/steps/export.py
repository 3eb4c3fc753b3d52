"""Export the final results to S3 through the agent, then verify every object before the state
machine may delete the cluster. A run stopped by a limit exports what it has so far
(:func:`export_partial`)."""

from botocore.exceptions import ClientError
from pydantic import BaseModel

from cryopilot.adapters import aws, runs
from cryopilot.adapters.agent_client import agent_for
from cryopilot.adapters.settings import get_settings
from cryopilot.core import clock
from cryopilot.core.errors import AgentError, ExportError
from cryopilot.domain.record import RunRecord
from cryopilot.protocol.agent import ExportResult

#: what a result set must hold
REQUIRED_KINDS = ("map", "half_map_a", "half_map_b", "fsc")

#: cryoSPARC job types whose outputs include 3D maps (what a stopped run can export).
MAP_JOB_TYPES = frozenset({"homo_abinit", "hetero_refine", "nonuniform_refine_new", "homo_refine_new"})


class PartialExportStep(BaseModel):
    results_uri: str | None
    file_count: int
    stage: str | None


class ExportStep(BaseModel):
    results_uri: str
    file_count: int
    resolution_A: float | None


def _agent_export(run: RunRecord, stage: str, prefix: str, *, partial: bool = False) -> ExportResult:
    """The head-node agent copies ``stage``'s results to ``s3://<results bucket>/<prefix>``."""
    argv = ["export", "--project", run.run_id, "--stage", stage]
    argv += ["--bucket", get_settings().results_bucket, "--prefix", prefix]
    try:
        return agent_for(run.run_id, run.head_node_instance_id).call(
            [*argv, "--partial"] if partial else argv, ExportResult
        )
    except AgentError as exc:
        what = "partial export" if partial else "export"
        raise ExportError(f"{what} of stage {stage} failed: {exc}") from None


def export(run_id: str) -> ExportStep:
    store = runs.store()
    run = store.get_run(run_id)
    if run is None:
        raise ExportError(f"run {run_id} has no record")
    final_stage = store.get_plan(run_id)[-1].id
    prefix = f"runs/{run_id}/results/"
    store.update_run(run_id, current_step="export", export_started_at=clock.now())
    result = _agent_export(run, final_stage, prefix)
    verify(result)
    resolution = result.resolution_A if result.resolution_A is not None else run.resolution_A
    uri = f"s3://{result.bucket}/{result.prefix}"
    store.update_run(
        run_id,
        results={"uri": uri, "files": [f.model_dump() for f in result.files]},
        resolution_A=resolution,
        export_finished_at=clock.now(),
        current_step="exported",
    )
    return ExportStep(results_uri=uri, file_count=len(result.files), resolution_A=resolution)


def export_partial(run_id: str) -> PartialExportStep:
    """The maps of the last completed stage that makes maps, and its particles, to
    ``runs/<run>/results/partial/``: a run stopped by a limit keeps what it paid for. A run stopped
    before any such stage exports nothing (and says so on its record)."""
    store = runs.store()
    run = store.get_run(run_id)
    if run is None:
        raise ExportError(f"run {run_id} has no record")
    done = [
        p.id
        for p in store.get_plan(run_id)
        if p.job_type in MAP_JOB_TYPES and p.id in run.stages and run.stages[p.id].state == "completed"
    ]
    if not done:
        store.update_run(run_id, partial_export={"files": 0, "reason": "no stage had made a map yet"})
        return PartialExportStep(results_uri=None, file_count=0, stage=None)
    stage = done[-1]
    prefix = f"runs/{run_id}/results/partial/"
    result = _agent_export(run, stage, prefix, partial=True)
    verify(result, required=())
    uri = f"s3://{result.bucket}/{result.prefix}"
    store.update_run(
        run_id,
        results={
            "uri": uri,
            "files": [f.model_dump() for f in result.files],
            "partial": True,
            "stage": stage,
        },
        partial_export={"files": len(result.files), "stage": stage, "uri": uri},
    )
    return PartialExportStep(results_uri=uri, file_count=len(result.files), stage=stage)


def verify(result: ExportResult, required: tuple[str, ...] = REQUIRED_KINDS) -> None:
    """Every file the agent reports must be in S3 with the size it reports, and the set complete."""
    kinds = {f.kind for f in result.files}
    missing = [k for k in required if k not in kinds]
    if missing:
        raise ExportError(f"export is missing {', '.join(missing)}")
    s3 = aws.client("s3")
    for f in result.files:
        try:
            head = s3.head_object(Bucket=result.bucket, Key=f.key)
        except ClientError:
            raise ExportError(f"exported file s3://{result.bucket}/{f.key} is not in S3") from None
        if int(head["ContentLength"]) != f.size:
            raise ExportError(
                f"exported file s3://{result.bucket}/{f.key} has {head['ContentLength']} bytes, "
                f"expected {f.size}"
            )
