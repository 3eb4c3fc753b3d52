"""Export the results to S3 through the FSx data repository, and verify them before the state
machine may delete the cluster.

1. ``start``: the head-node agent writes the result files (map, half maps, mask, FSC, particles)
   into the results directory of the FSx file system, inside the data repository association
   linked to ``s3://<results bucket>/runs/<run>/results/``, and checks each by size there. An
   ``EXPORT_TO_REPOSITORY`` task then takes that directory to S3, and with ``export: project`` the
   whole cryoSPARC project directory too (the raw movies stay where they came from: the project
   links to them, it does not copy them).
2. ``check`` (the state machine calls it after each wait): while the task runs, nothing; when it
   succeeded with every file, each result file is checked in S3 by size and the run record gets
   the results; when it failed, its completion report names the files, and a new task is started,
   up to :data:`EXPORT_ATTEMPTS` in all; then :class:`ExportError`. An export still going after
   ``max_export_polls`` checks (the execution's settings: 4 h by default) is an
   :class:`ExportError` too. FSx exports at the file system's throughput (PERSISTENT_2: 125 to
   1,000 MB/s per TiB), so even a whole project of a few TiB takes well under an hour.

A run stopped by a limit (``partial``) exports the maps of its last completed stage that makes maps
the same way, to ``runs/<run>/results/partial/``.
"""

import hashlib
from typing import Any

from botocore.exceptions import ClientError
from pydantic import BaseModel

from cryopilot.adapters import aws, fsx, runs
from cryopilot.adapters.agent_client import agent_for
from cryopilot.adapters.settings import get_settings
from cryopilot.core import clock
from cryopilot.core.errors import AgentError, ExportError
from cryopilot.domain.clusterconfig.mounts import (
    FSX_MOUNT_DIR,
    FSX_PROJECT_DIR,
    FSX_RESULTS_PATH,
    PROJECT_PREFIX,
    RESULTS_PREFIX,
)
from cryopilot.domain.record import RunRecord
from cryopilot.protocol.agent import ExportResult

#: How long the agent's export verb may take: it copies the maps and the particle files (gigabytes
#: for a large dataset) into the results directory on the same FSx file system. One call, which
#: must end before the Export function's own timeout (tests/unit/test_asl.py).
EXPORT_AGENT_TIMEOUT_SECONDS = 600

#: what a result set must hold
REQUIRED_KINDS = ("map", "half_map_a", "half_map_b", "fsc")

#: cryoSPARC job types whose outputs include 3D maps (what a stopped run can export).
MAP_JOB_TYPES = frozenset({"homo_abinit", "hetero_refine", "nonuniform_refine_new", "homo_refine_new"})

#: Data repository tasks started for one export before it fails (the first and two retries).
EXPORT_ATTEMPTS = 3

#: The results association's directory, relative to the FSx mount: ``/fsx/results/<name>`` is
#: exported to ``runs/<run>/results/<name>``.
RESULTS_ASSOCIATION_DIR = FSX_RESULTS_PATH.strip("/")


class ExportStep(BaseModel):
    """What the state machine reads of an export: ``done`` ends its wait loop."""

    done: bool
    polls: int = 0
    results_uri: str | None = None
    file_count: int = 0
    resolution_A: float | None = None
    stage: str | None = None


def _record(run_id: str) -> RunRecord:
    run = runs.store().get_run(run_id)
    if run is None:
        raise ExportError(f"run {run_id} has no record")
    return run


def _export_dir(partial: bool) -> str:
    """Where the agent writes the results, relative to the FSx mount."""
    return f"{RESULTS_ASSOCIATION_DIR}/partial" if partial else RESULTS_ASSOCIATION_DIR


def _results_prefix(run_id: str, partial: bool) -> str:
    """The S3 prefix the export directory is exported to (the results association's)."""
    return f"runs/{run_id}/{RESULTS_PREFIX}" + ("partial/" if partial else "")


def _agent_export(run: RunRecord, stage: str, *, partial: bool) -> ExportResult:
    """The head-node agent writes ``stage``'s results into the FSx results directory."""
    dest = _export_dir(partial)
    argv = ["export", "--project", run.run_id, "--stage", stage, "--dest", dest]
    try:
        return agent_for(run.run_id, run.head_node_instance_id, EXPORT_AGENT_TIMEOUT_SECONDS).call(
            [*argv, "--partial"] if partial else argv, ExportResult
        )
    except AgentError as exc:
        what = "partial export" if partial else "export"
        raise ExportError(f"{what} of stage {stage} failed: {exc}") from None


def _project_path(result: ExportResult) -> str:
    """The cryoSPARC project directory, relative to the FSx mount (what a task's ``Paths`` take)."""
    project_dir = (result.project_dir or "").rstrip("/")
    if not project_dir.startswith(FSX_PROJECT_DIR + "/"):
        raise ExportError(
            f"the cryoSPARC project directory {project_dir or '(unknown)'} is not under {FSX_PROJECT_DIR}"
            " on FSx: it cannot be exported through the data repository"
        )
    return project_dir.removeprefix(FSX_MOUNT_DIR + "/")


def _report_path(run_id: str) -> str:
    """Where FSx writes the tasks' completion reports: inside the results association's prefix,
    as the report's ``Path`` must be (FSx API reference, CompletionReport)."""
    return f"s3://{get_settings().results_bucket}/runs/{run_id}/{RESULTS_PREFIX}export-reports"


def start(run_id: str, *, partial: bool = False) -> ExportStep:
    """Write the results onto FSx and start the task that exports them (see the module)."""
    store = runs.store()
    run = _record(run_id)
    if partial:
        done = [
            p.id
            for p in store.get_plan(run_id)
            if p.job_type in MAP_JOB_TYPES and p.id in run.stages and run.stages[p.id].state == "completed"
        ]
        if not done:
            store.update_run(run_id, partial_export={"files": 0, "reason": "no stage had made a map yet"})
            return ExportStep(done=True)
        stage = done[-1]
    else:
        stage = store.get_plan(run_id)[-1].id
        store.update_run(run_id, current_step="export", export_started_at=clock.now())
    result = _agent_export(run, stage, partial=partial)
    if not partial:
        missing = [k for k in REQUIRED_KINDS if k not in {f.kind for f in result.files}]
        if missing:
            raise ExportError(f"export is missing {', '.join(missing)}")
    paths = [result.dest]
    if run.export_mode == "project":
        paths.append(_project_path(result))
    file_system_id = fsx.find_file_system(aws.client("fsx"), run_id, run.cluster_name)
    task = {
        "file_system_id": file_system_id,
        "paths": paths,
        "mode": run.export_mode or "results",
        "partial": partial,
        "stage": stage,
        "files": [f.model_dump() for f in result.files],
        "resolution_A": result.resolution_A,
        "attempt": 0,
        "started_at": clock.now(),
        "failures": [],
    }
    task["task_id"] = _start_task(run_id, task)
    store.update_run(run_id, export=task)
    return ExportStep(done=False, stage=stage)


def _start_task(run_id: str, task: dict[str, Any]) -> str:
    task["attempt"] += 1
    # at most 63 characters (FSx API reference, ClientRequestToken): the run's digest, then what
    # differs between the run's tasks, so that no truncation makes two tasks' tokens one
    digest = hashlib.sha256(run_id.encode()).hexdigest()[:40]
    token = f"{digest}-{'partial' if task['partial'] else 'final'}-{task['attempt']}"
    return fsx.start_export(
        aws.client("fsx"), task["file_system_id"], task["paths"], _report_path(run_id), token
    )


def check(run_id: str, polls: int, max_polls: int) -> ExportStep:
    """How the export task is doing (check number ``polls + 1`` of at most ``max_polls``); when it
    is done and verified, the results on the record."""
    polls += 1
    store = runs.store()
    run = _record(run_id)
    task = dict(run.export or {})
    if not task.get("task_id"):
        raise ExportError(f"run {run_id} has no export task to check")
    state = fsx.describe_task(aws.client("fsx"), task["task_id"])
    if state.active:
        if polls >= max_polls:
            waited = clock.now() - float(task["started_at"])
            raise ExportError(
                f"the export task {state.task_id} is still {state.lifecycle} after {polls} checks"
                f" ({waited / 3600:.1f} h; {state.succeeded} of {state.total} files exported)"
            )
        return ExportStep(done=False, polls=polls, stage=task["stage"])
    if not state.complete:
        failed = fsx.failed_files(aws.client("s3"), _report_path(run_id), state.task_id)
        reason = _task_failure(state, failed)
        task["failures"] = [*task.get("failures", []), reason]
        if task["attempt"] >= EXPORT_ATTEMPTS:
            store.update_run(run_id, export=task)
            raise ExportError(f"the export failed {task['attempt']} times; the last: {reason}")
        if polls >= max_polls:
            store.update_run(run_id, export=task)
            raise ExportError(f"the export ran out of its {max_polls} checks; the last task: {reason}")
        task["task_id"] = _start_task(run_id, task)
        task["started_at"] = clock.now()
        store.update_run(run_id, export=task)
        return ExportStep(done=False, polls=polls, stage=task["stage"])
    return _finish(run, task, state).model_copy(update={"polls": polls})


def _task_failure(state: fsx.TaskState, failed: list[tuple[str, str]]) -> str:
    """One line: why the task failed and the first files it could not export."""
    what = f"task {state.task_id} {state.lifecycle.lower()}"
    if state.failure:
        what += f" ({state.failure})"
    if state.failed or failed:
        what += f", {max(state.failed, len(failed))} of {state.total} files not exported"
    if failed:
        shown = ", ".join(f"{path} ({code})" for path, code in failed[:3])
        more = f" and {len(failed) - 3} more" if len(failed) > 3 else ""
        what += f": {shown}{more}"
    return what


def _finish(run: RunRecord, task: dict[str, Any], state: fsx.TaskState) -> ExportStep:
    """Every result file in S3 with its size; the record gets the results."""
    bucket = get_settings().results_bucket
    prefix = _results_prefix(run.run_id, task["partial"])
    files = [{**f, "key": prefix + f["name"]} for f in task["files"]]
    verify(bucket, files)
    uri = f"s3://{bucket}/{prefix}"
    results: dict[str, Any] = {"uri": uri, "files": files, "exported_files": state.succeeded}
    if task["mode"] == "project":
        results["project_uri"] = f"s3://{bucket}/runs/{run.run_id}/{PROJECT_PREFIX}"
    store = runs.store()
    task = {**task, "finished_at": clock.now(), "exported_files": state.succeeded}
    if task["partial"]:
        results.update(partial=True, stage=task["stage"])
        store.update_run(
            run.run_id,
            results=results,
            export=task,
            partial_export={"files": len(files), "stage": task["stage"], "uri": uri},
        )
        return ExportStep(done=True, results_uri=uri, file_count=len(files), stage=task["stage"])
    resolution = task.get("resolution_A")
    resolution = resolution if resolution is not None else run.resolution_A
    store.update_run(
        run.run_id,
        results=results,
        export=task,
        resolution_A=resolution,
        export_finished_at=clock.now(),
        current_step="exported",
    )
    return ExportStep(done=True, results_uri=uri, file_count=len(files), resolution_A=resolution)


def verify(bucket: str, files: list[dict[str, Any]]) -> None:
    """Every exported file must be in S3 with the size the agent wrote on FSx."""
    s3 = aws.client("s3")
    for f in files:
        try:
            head = s3.head_object(Bucket=bucket, Key=f["key"])
        except ClientError:
            raise ExportError(f"exported file s3://{bucket}/{f['key']} is not in S3") from None
        if int(head["ContentLength"]) != int(f["size"]):
            raise ExportError(
                f"exported file s3://{bucket}/{f['key']} has {head['ContentLength']} bytes,"
                f" expected {f['size']}"
            )
