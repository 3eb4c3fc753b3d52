"""What each verb does, through the cryosparc-tools client. Nothing here waits on a job.

Jobs are found again by title: the job of stage ``motion`` is titled ``cryopilot:motion`` in the
workspace ``cryopilot`` of the project titled with the run id. A job is created under a draft title
(``cryopilot-draft:<stage>``) and given its final title only once it is connected, configured and
queued. A re-submit after a half-done submit deletes a draft still building and starts over, and
adopts a draft already queued (the submit stopped between queueing and titling it): the draft gets
its final title instead of the stage getting a second job.

The agent keeps no state of its own: the rule of a stage's decision and the decision itself (with
its numbers) are stored as JSON in the description of the job they concern.
"""

from __future__ import annotations

import io
import json
import os
import re
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

import httpx
from cryopilot.protocol.agent import (
    Decision,
    ExportedFile,
    ExportResult,
    JobInfo,
    KillResult,
    RequeueResult,
    StageState,
    StageStatus,
    StatusResult,
    SubmitResult,
)
from cryopilot.protocol.stage import JOB_TITLE_PREFIX, PlannedStage, job_title
from cryosparc.controllers.job import JobController
from cryosparc.controllers.project import ProjectController
from cryosparc.errors import APIError
from cryosparc.models.job import Job
from cryosparc.models.job_spec import Output

from cryopilot_agent import decisions
from cryopilot_agent.resample import ResampleError, resample_file

if TYPE_CHECKING:
    from cryosparc.tools import CryoSPARC

WORKSPACE_TITLE = "cryopilot"
DRAFT_PREFIX = "cryopilot-draft:"
ACTIVE = ("queued", "launched", "started", "running", "waiting")
_CLASS_OUT = re.compile(r"^(?P<base>.+_class_)(?P<k>\d+)$")

#: Where the cluster mounts FSx for Lustre (the configuration's SharedStorage MountDir,
#: ``cryopilot.domain.clusterconfig.mounts.FSX_MOUNT_DIR``, which the agent's bundle does not carry):
#: the paths in a planned stage are below it. This node may mount the file system elsewhere
#: (``CRYOPILOT_FSX_MOUNT``); on a cluster's head node it is the same directory.
CLUSTER_FSX_MOUNT = "/fsx"
#: Below a run's cryoSPARC project directory: the reference files the agent resampled.
RESAMPLED_DIR = "cryopilot_resampled"

#: How long Select 2D's ``finish`` may take to answer. cryosparc-tools' ``JobController.interact``
#: waits 10 s by default; finishing writes the selected particles, so it gets longer, but a status
#: call must still answer within the caller's agent timeout.
FINISH_TIMEOUT_SECONDS = 30
#: A Select 2D job still waiting this long after its last ``finish`` request is asked again: the
#: request may have timed out or failed without reaching the job. Measured from the request time
#: recorded in the job's description.
FINISH_RETRY_SECONDS = 120


class AgentUsageError(Exception):
    """The request cannot be carried out as asked (unknown stage, upstream not ready, ...)."""


class StageNotFoundError(AgentUsageError):
    pass


class UpstreamNotReadyError(AgentUsageError):
    pass


class ExportVerificationError(Exception):
    pass


def _epoch(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _meta(job: Job) -> dict[str, Any]:
    try:
        doc = json.loads(job.description or "{}")
    except ValueError:
        return {}
    meta = doc.get("cryopilot") if isinstance(doc, dict) else None
    return meta if isinstance(meta, dict) else {}


def _stage_of(job: Job) -> str | None:
    if job.title.startswith(JOB_TITLE_PREFIX):
        return job.title[len(JOB_TITLE_PREFIX) :]
    return None


def _count(job: Job, otype: str, preferred: tuple[str, ...]) -> int | None:
    outputs = job.spec.outputs.root
    for name in preferred:
        if name in outputs and outputs[name].type == otype:
            return outputs[name].num_items
    classes = [o.num_items for n, o in outputs.items() if o.type == otype and _CLASS_OUT.match(n)]
    if classes:
        return sum(classes)
    for o in outputs.values():
        if o.type == otype:
            return o.num_items
    return None


def _project_dir(project: ProjectController) -> str:
    """The project's directory (cryosparc-tools ``ProjectController.dir``: ``projects.get_directory``)."""
    return str(project.dir)


def _same_owner(path: str, project_dir: str) -> None:
    """Give a file the agent wrote, and its folder, the owner of the project directory: the agent
    runs as root (SSM Run Command), and cryoSPARC's user must be able to delete its project."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return
    owner = os.stat(project_dir)
    for item in (os.path.dirname(path), path):
        os.chown(item, owner.st_uid, owner.st_gid)


def resolution_of(job: Job) -> float | None:
    """Final GSFSC resolution: ``volume`` output's ``latest_summary_stats.fsc_info_best.radwn_final_A``."""
    volume = job.spec.outputs.root.get("volume")
    if volume is None:
        return None
    best = volume.latest_summary_stats.get("fsc_info_best") or {}
    value = best.get("radwn_final_A") if isinstance(best, dict) else None
    return float(value) if isinstance(value, int | float) else None


def particle_files(output: Output) -> list[tuple[str, str]]:
    """(kind, project path) of each file holding the latest version of a particles output.

    An output's results are its slots (blob, ctf, location, ...), each listing a file per version
    (``OutputResult.metafiles``, cryosparc-tools' models/job_spec.py). The slots a job computed share
    its main file; those passed through as-is from an input (``OutputResult.passthrough``) are in a
    separate passthrough file (jobs.ipynb, "Datasets": ``J96_passthrough_particles.cs`` beside the
    extracted particles). Each distinct latest file once: ``particles`` (main) before
    ``particles_passthrough``, whatever the order of the results.
    """
    main: list[str] = []
    passed: list[str] = []
    for result in output.results:
        if result.metafiles:
            (passed if result.passthrough else main).append(result.metafiles[-1])
    main = list(dict.fromkeys(main))
    passed = [path for path in dict.fromkeys(passed) if path not in main]
    return [("particles", path) for path in main] + [("particles_passthrough", path) for path in passed]


#: Statuses a job reaches only once its main process has run (cryosparc-tools ``JobStatus``).
HAS_RUN = frozenset({"running", "waiting", "completed"})


def run_started_at(job: Job) -> datetime | None:
    """When the job began running, its wait for a compute node excluded.

    The docstrings of cryosparc-tools' models/job.py are the only source for these fields:
    ``started_at`` is "When internal scheduler launches/submits" (a cluster job then still waits
    in Slurm's queue for its node), ``launched_at`` "When job initial monitor process starts",
    ``running_at`` "When job monitor process forks into main process". So: ``running_at`` when
    set; else ``started_at`` if the status says the job ran (running, waiting, completed); else none
    (queued, waiting for its node, or killed or failed before it ran).
    """
    if job.running_at is not None:
        return job.running_at
    if job.status in HAS_RUN:
        return job.started_at
    return None


def last_error(job: Job) -> str | None:
    """The message of the job's last error; its warnings (``RunError.warning``, cryosparc-tools'
    models/job.py) are not errors."""
    errors = [e.message for e in job.errors_run if not e.warning]
    return errors[-1] if errors else None


def job_info(job: Job) -> JobInfo:
    progress = 0.0
    if job.status == "completed":
        progress = 1.0
    elif job.progress:
        last = job.progress[-1].get("progress")
        if isinstance(last, int | float):
            progress = max(0.0, min(1.0, float(last)))
    return JobInfo(
        uid=job.uid,
        job_type=job.spec.type,
        status=job.status,
        lane=job.queued_to_lane,
        gpus=job.spec.resource_spec.gpu,
        progress=progress,
        queued_at=_epoch(job.queued_at),
        started_at=_epoch(run_started_at(job)),
        completed_at=_epoch(job.completed_at or job.failed_at or job.killed_at),
        num_particles=_count(job, "particle", ("particles_selected", "particles")),
        num_micrographs=_count(
            job, "exposure", ("exposures", "micrographs", "imported_micrographs", "imported_movies")
        ),
        error=last_error(job),
    )


def stage_state(jobs: list[Job]) -> StageState:
    statuses = {j.status for j in jobs}
    if not jobs:
        return "not_submitted"
    if "failed" in statuses:
        return "failed"
    if "killed" in statuses:
        return "killed"
    if statuses == {"completed"}:
        return "completed"
    if statuses & {"launched", "started", "running", "waiting", "completed"}:
        return "running"
    return "queued"


class Driver:
    def __init__(
        self,
        cs: CryoSPARC,
        *,
        project_root: str,
        fsx_mount: str = CLUSTER_FSX_MOUNT,
        now: Callable[[], float] = time.time,
    ) -> None:
        """``fsx_mount``: where this node mounts the cluster's FSx (:data:`CLUSTER_FSX_MOUNT`);
        ``now``: epoch seconds (the head node's clock, which cryoSPARC's master shares)."""
        self.cs = cs
        self.project_root = project_root
        self.fsx_mount = fsx_mount
        self.now = now
        self._jobs: list[JobController] | None = None

    # ------------------------------------------------------------------ lookup

    def find_project(self, run_id: str) -> ProjectController | None:
        for project in self.cs.find_projects():
            if project.model.title == run_id:
                return project
        return None

    def ensure_project(self, run_id: str) -> ProjectController:
        project = self.find_project(run_id)
        if project is None:
            model = self.cs.api.projects.create(
                title=run_id, description=f"cryopilot run {run_id}", parent_dir=self.project_root
            )
            project = ProjectController(self.cs, model)
        return project

    def find_workspace(self, project: ProjectController) -> str | None:
        for ws in project.find_workspaces():
            if ws.model.title == WORKSPACE_TITLE:
                return ws.uid
        return None

    def ensure_workspace(self, project: ProjectController) -> str:
        uid = self.find_workspace(project)
        if uid is None:
            uid = project.create_workspace(WORKSPACE_TITLE, "jobs created by cryopilot").uid
        return uid

    def jobs(
        self, project: ProjectController, workspace_uid: str, *, refresh: bool = False
    ) -> list[JobController]:
        if self._jobs is None or refresh:
            self._jobs = sorted(project.find_jobs(workspace_uid), key=lambda j: j.model.uid_num)
        return self._jobs

    def stage_jobs(
        self, project: ProjectController, workspace_uid: str, stage_id: str
    ) -> list[JobController]:
        title = job_title(stage_id)
        return [j for j in self.jobs(project, workspace_uid) if j.model.title == title]

    # ------------------------------------------------------------------ decisions

    def _record(self, job: JobController, **meta: Any) -> None:
        current = _meta(job.model)
        current.update(meta)
        job.set_description(json.dumps({"cryopilot": current}))

    def _recorded_decision(self, job: JobController) -> Decision | None:
        raw = _meta(job.model).get("decision")
        return Decision.model_validate(raw) if isinstance(raw, dict) else None

    def _apply_pending(self, stage_id: str, job: JobController) -> None:
        """Make the decision a stage's job is waiting for, if it is time (idempotent)."""
        meta = _meta(job.model)
        rule = meta.get("decision_rule")
        if not isinstance(rule, dict):
            return
        kind = rule.get("kind")
        params = rule.get("params") or {}
        status = job.model.status
        if kind == "select_2d_classes" and status == "waiting":
            if "decision" not in meta:
                self._select_2d_classes(stage_id, job, params)
            elif self._finish_due(meta):
                self._request_finish(job)
        elif kind == "choose_hetero_class" and status == "completed" and "decision" not in meta:
            _, decision = decisions.choose_hetero_class(stage_id, self._hetero_classes(job.model), params)
            self._record(job, decision=decision.model_dump(mode="json"))

    def _select_2d_classes(self, stage_id: str, job: JobController, params: dict[str, Any]) -> None:
        """Select the classes the rule keeps, record the decision, then ask the job to finish."""
        classes = job.interact("get_class_info")
        selected, decision = decisions.select_2d_classes(stage_id, list(classes), params)
        for idx in selected:
            job.interact("set_class_selected", {"class_idx": idx, "selected": True})
        self._record(job, decision=decision.model_dump(mode="json"))
        self._request_finish(job)

    def _finish_due(self, meta: dict[str, Any]) -> bool:
        """Whether a Select 2D job that has its decision but still waits should be asked to finish
        again: no request recorded, or the last one at least FINISH_RETRY_SECONDS ago."""
        requested = meta.get("finish_requested_at")
        if not isinstance(requested, int | float):
            return True
        return self.now() - float(requested) >= FINISH_RETRY_SECONDS

    def _request_finish(self, job: JobController) -> None:
        """Ask a waiting Select 2D job to finish. The request time is recorded first, so a request
        that times out, fails or is cut short is repeated by a later status call, no sooner than
        FINISH_RETRY_SECONDS after it. The finish may complete after the call returns (cryosparc-tools'
        custom-workflow example calls ``interact("finish")`` and then ``wait_for_done()``)."""
        count = int(_meta(job.model).get("finish_requests") or 0) + 1
        self._record(job, finish_requested_at=self.now(), finish_requests=count)
        try:
            job.interact("finish", timeout=FINISH_TIMEOUT_SECONDS)
        except (APIError, httpx.HTTPError) as exc:
            self._record(job, finish_error=f"{type(exc).__name__}: {exc}"[:300])
        job.refresh()

    @staticmethod
    def _hetero_classes(job: Job) -> list[dict[str, Any]]:
        outputs = job.spec.outputs.root
        classes = []
        for name, out in outputs.items():
            m = re.fullmatch(r"particles_class_(\d+)", name)
            if not m:
                continue
            k = int(m.group(1))
            volume = outputs.get(f"volume_class_{k}")
            best = (volume.latest_summary_stats.get("fsc_info_best") or {}) if volume else {}
            res = best.get("radwn_final_A") if isinstance(best, dict) else None
            classes.append({"class": k, "num_particles": out.num_items, "res_A": res})
        return sorted(classes, key=lambda c: c["class"])

    def _chosen_class(self, stage_id: str, job: JobController) -> int:
        self._apply_pending(stage_id, job)
        decision = self._recorded_decision(job)
        if decision is None or decision.kind != "choose_hetero_class":
            raise UpstreamNotReadyError(
                f"stage {stage_id} has no class choice yet (job {job.uid} is {job.model.status})"
            )
        return int(decision.numbers["chosen_class"])

    # ------------------------------------------------------------------ status

    def stage_status(self, stage_id: str, jobs: list[JobController]) -> StageStatus:
        for job in jobs:
            self._apply_pending(stage_id, job)
        models = [j.model for j in jobs]
        resolution = None
        for model in models:
            if model.status == "completed":
                resolution = resolution_of(model) or resolution
        recorded = [d for d in (self._recorded_decision(j) for j in jobs) if d is not None]
        return StageStatus(
            stage_id=stage_id,
            state=stage_state(models),
            jobs=[job_info(m) for m in models],
            resolution_A=resolution,
            decisions=recorded,
        )

    def status(self, run_id: str, stage_ids: list[str]) -> StatusResult:
        project = self.find_project(run_id)
        if project is None:
            return StatusResult(
                project_uid=None, stages=[StageStatus(stage_id=s, state="not_submitted") for s in stage_ids]
            )
        ws = self.find_workspace(project)
        if ws is None:
            return StatusResult(
                project_uid=project.uid,
                stages=[StageStatus(stage_id=s, state="not_submitted") for s in stage_ids],
            )
        if not stage_ids:
            seen: list[str] = []
            for job in self.jobs(project, ws):
                stage = _stage_of(job.model)
                if stage is not None and stage not in seen:
                    seen.append(stage)
            stage_ids = seen
        return StatusResult(
            project_uid=project.uid,
            stages=[self.stage_status(s, self.stage_jobs(project, ws, s)) for s in stage_ids],
        )

    # ------------------------------------------------------------------ submit

    def on_this_node(self, path: str) -> str:
        """Where a cluster path below :data:`CLUSTER_FSX_MOUNT` is on this node; others as they are."""
        rel = PurePosixPath(path)
        try:
            inside = rel.relative_to(CLUSTER_FSX_MOUNT)
        except ValueError:
            return path
        return os.path.join(self.fsx_mount, *inside.parts)

    def _resampled(
        self, project: ProjectController, spec: PlannedStage, params: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The stage's parameters with its reference map resampled (``spec.resample``): the new
        file, in the project's :data:`RESAMPLED_DIR`, and its pixel size; never written in the
        reference's own folder. A submit that starts over (no job queued yet) writes it again, the
        same bytes."""
        how = spec.resample
        assert how is not None
        source = params.get(how.path)
        if not isinstance(source, str) or not source:
            raise AgentUsageError(f"{spec.id}: parameter {how.path} names no file to resample")
        project_dir = _project_dir(project).rstrip("/")
        target = f"{project_dir}/{RESAMPLED_DIR}/{spec.id}_{PurePosixPath(source).name}"
        local = self.on_this_node(source)
        if not os.path.isfile(local):
            raise ResampleError(f"{spec.id}: {source} ({how.path}) is not on this node ({local})")
        written = self.on_this_node(target)
        done = resample_file(local, written, from_A=how.from_A, to_A=how.to_A)
        _same_owner(written, self.on_this_node(project_dir))
        note = {**done.describe(how.from_A), "file": target, "source": source}
        return {**params, how.path: target, how.pixel_size: done.pixel_size_A}, note

    def _upstream(self, project: ProjectController, ws: str, stage_id: str) -> JobController:
        jobs = self.stage_jobs(project, ws, stage_id)
        if not jobs:
            raise UpstreamNotReadyError(f"upstream stage {stage_id} has not been submitted")
        return jobs[-1]

    def _connections(
        self, project: ProjectController, ws: str, spec: PlannedStage
    ) -> dict[str, list[tuple[str, str]]]:
        connections: dict[str, list[tuple[str, str]]] = {}
        for conn in spec.inputs:
            src = self._upstream(project, ws, conn.stage)
            names: list[str]
            if conn.output.endswith("_*"):
                if src.model.status != "completed":
                    raise UpstreamNotReadyError(
                        f"{spec.id}: needs every class output of stage {conn.stage}, whose job {src.uid} is "
                        f"{src.model.status}"
                    )
                base = conn.output[:-1]
                found = [
                    (int(m.group("k")), n)
                    for n in src.model.spec.outputs.root
                    if (m := _CLASS_OUT.match(n)) and m.group("base") == base
                ]
                if not found:
                    raise UpstreamNotReadyError(
                        f"{spec.id}: job {src.uid} of stage {conn.stage} has no {conn.output} outputs"
                    )
                names = [n for _, n in sorted(found)]
            elif "{chosen}" in conn.output:
                names = [conn.output.replace("{chosen}", str(self._chosen_class(conn.stage, src)))]
            else:
                names = [conn.output]
            connections.setdefault(conn.input, []).extend((src.uid, n) for n in names)
        return connections

    def _drafts(self, project: ProjectController, ws: str, stage_id: str) -> list[JobController]:
        """The stage's jobs still under their draft title: leftovers of an interrupted submit."""
        return [j for j in self.jobs(project, ws) if j.model.title == DRAFT_PREFIX + stage_id]

    def _adopt_queued_drafts(self, project: ProjectController, ws: str, stage_id: str) -> list[JobController]:
        """Give their final title to the stage's drafts that are past ``building``: an interrupted
        submit queued them but did not title them. They are the stage's jobs; queueing another would
        run the stage twice."""
        adopted = [d for d in self._drafts(project, ws, stage_id) if d.model.status != "building"]
        for draft in adopted:
            draft.set_title(job_title(stage_id))
        return adopted

    def submit(self, run_id: str, spec: PlannedStage) -> SubmitResult:
        project = self.ensure_project(run_id)
        ws = self.ensure_workspace(project)
        existing = self.stage_jobs(project, ws, spec.id) or self._adopt_queued_drafts(project, ws, spec.id)
        if existing:
            return SubmitResult(
                project_uid=project.uid,
                workspace_uid=ws,
                stage=self.stage_status(spec.id, existing),
                already_submitted=True,
            )
        for draft in self._drafts(project, ws, spec.id):  # built, never queued: start over
            self.cs.api.jobs.delete(project.uid, draft.uid)
        connections = self._connections(project, ws, spec)
        params = dict(spec.params)
        meta: dict[str, Any] = {"stage": spec.id}
        if spec.resample is not None:
            params, meta["resampled"] = self._resampled(project, spec, params)
        job = project.create_job(
            ws,
            spec.job_type,
            connections={k: list(v) for k, v in connections.items()},
            params=params,
            title=DRAFT_PREFIX + spec.id,
            desc="",
        )
        if spec.decision is not None:
            meta["decision_rule"] = spec.decision.model_dump(mode="json")
        self._record(job, **meta)
        job.queue(spec.lane)
        job.set_title(job_title(spec.id))
        job.refresh()
        self._jobs = None
        return SubmitResult(
            project_uid=project.uid,
            workspace_uid=ws,
            stage=self.stage_status(spec.id, [job]),
            already_submitted=False,
        )

    # ------------------------------------------------------------------ kill

    def _jobs_of_stage(self, run_id: str, stage_id: str) -> list[JobController]:
        """The jobs of a stage the run submitted (kill, requeue); StageNotFoundError if none."""
        project = self.find_project(run_id)
        ws = self.find_workspace(project) if project else None
        if project is None or ws is None:
            raise StageNotFoundError(f"no cryoSPARC project for run {run_id}")
        jobs = self.stage_jobs(project, ws, stage_id)
        if not jobs:
            raise StageNotFoundError(f"stage {stage_id} of run {run_id} has no jobs")
        return jobs

    def kill(self, run_id: str, stage_id: str) -> KillResult:
        jobs = self._jobs_of_stage(run_id, stage_id)
        killed = []
        for job in jobs:
            if job.model.status in ACTIVE:
                job.kill()
                killed.append(job.uid)
        return KillResult(stage_id=stage_id, killed=killed)

    # ------------------------------------------------------------------ requeue

    def requeue(self, run_id: str, stage_id: str, lane: str) -> RequeueResult:
        """Queue the stage's failed jobs again on ``lane`` (a stage lost with its Spot node goes to
        the On-Demand lane): each is cleared back to building, its parameters and inputs kept
        (cryosparc-tools' ``JobController.clear``), then queued."""
        jobs = self._jobs_of_stage(run_id, stage_id)
        requeued = []
        for job in jobs:
            if job.model.status == "failed":
                job.clear()
                job.queue(lane)
                requeued.append(job.uid)
        self._jobs = None
        return RequeueResult(stage_id=stage_id, lane=lane, requeued=requeued)

    # ------------------------------------------------------------------ export

    def _last_completed_job(self, run_id: str, stage_id: str) -> tuple[Any, Any]:
        """(project, the stage's last completed job); :class:`StageNotFoundError` if none."""
        project = self.find_project(run_id)
        ws = self.find_workspace(project) if project else None
        if project is None or ws is None:
            raise StageNotFoundError(f"no cryoSPARC project for run {run_id}")
        jobs = [j for j in self.stage_jobs(project, ws, stage_id) if j.model.status == "completed"]
        if not jobs:
            raise StageNotFoundError(f"stage {stage_id} of run {run_id} has no completed job to export")
        return project, jobs[-1]

    def _write(
        self, project: Any, local_dir: str, sources: list[tuple[str, str, str | bytes]]
    ) -> list[ExportedFile]:
        """Write each (kind, name, project path or the bytes themselves) to ``local_dir/name`` (a
        directory of the FSx results association) and check its size there."""
        names = [name for _, name, _ in sources]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ExportVerificationError(f"two exported files would be named {', '.join(repeated)}")
        os.makedirs(local_dir, exist_ok=True)
        files: list[ExportedFile] = []
        for kind, name, path in sources:
            if isinstance(path, bytes):  # a document made here, not a project file
                data = path
            else:
                buf = io.BytesIO()
                self.cs.download_file(project.uid, path, buf)
                data = buf.getvalue()
                if not data:
                    raise ExportVerificationError(f"{path} of project {project.uid} is empty")
            target = os.path.join(local_dir, name)
            with open(target, "wb") as fh:
                fh.write(data)
            written = os.path.getsize(target)
            if written != len(data):
                raise ExportVerificationError(f"{target} holds {written} bytes, expected {len(data)}")
            files.append(ExportedFile(kind=kind, name=name, size=len(data)))
        return files

    def _selected_class_averages(self, project: Any) -> list[tuple[str, str, str | bytes]]:
        """The 2D class averages the run's last completed Select 2D job kept: the class-average
        stack its ``templates_selected`` output points at (``blob/path``) and, as JSON, which of its
        images were selected (``blob/idx``). [] when the run had no such job."""
        ws = self.find_workspace(project)
        if ws is None:
            return []
        chosen = [
            j
            for j in self.jobs(project, ws)
            if j.model.spec.type == "select_2D" and j.model.status == "completed"
        ]
        if not chosen:
            return []
        job = chosen[-1]
        templates = job.load_output("templates_selected")
        if "blob/path" not in set(templates.fields()) or len(templates) == 0:
            return []
        path = str(templates["blob/path"][0])
        selected = (
            sorted({int(i) for i in templates["blob/idx"]}) if "blob/idx" in set(templates.fields()) else []
        )
        doc = {
            "job": f"{project.uid}-{job.uid}",
            "class_averages": PurePosixPath(path).name,
            "selected": selected,
        }
        return [
            ("class_averages", PurePosixPath(path).name, path),
            ("selected_classes", f"{job.uid}_selected_classes.json", json.dumps(doc, indent=1).encode()),
        ]

    def export_partial(self, run_id: str, stage_id: str, dest: str, local_dir: str) -> ExportResult:
        """What a run stopped early has: every map of stage ``stage_id``'s last completed job (its
        ``volume`` or each ``volume_class_N``) and its particles, written and checked like
        :meth:`export` but without the half maps and FSC a final refinement has."""
        project, job = self._last_completed_job(run_id, stage_id)
        outputs = job.model.spec.outputs.root
        volumes = sorted(n for n in outputs if n == "volume" or n.startswith("volume_class_"))
        if not volumes:
            raise ExportVerificationError(f"job {job.uid} ({job.model.spec.type}) made no map")
        sources: list[tuple[str, str, str | bytes]] = []
        for name in volumes:
            dataset = job.load_output(name)
            if "map/path" in set(dataset.fields()):
                path = str(dataset["map/path"][0])
                kind = "class_map" if name != "volume" else "map"
                sources.append((kind, f"{name}_{PurePosixPath(path).name}", path))
        if not sources:
            raise ExportVerificationError(f"job {job.uid}: its volume outputs have no map path")
        for name in ("particles", "particles_all_classes"):
            particles = particle_files(outputs[name]) if name in outputs else []
            if particles:
                sources += [(kind, PurePosixPath(path).name, path) for kind, path in particles]
                break
        files = self._write(project, local_dir, sources)
        return ExportResult(dest=dest, files=files, partial=True, project_dir=_project_dir(project))

    def export(self, run_id: str, stage_id: str, dest: str, local_dir: str) -> ExportResult:
        """The final refinement's map, half maps, mask, FSC and particles, written into ``local_dir``
        (the export directory ``dest`` on FSx) for the data repository task to take to S3."""
        project, job = self._last_completed_job(run_id, stage_id)
        model = job.model
        volume = job.load_output("volume")
        fields = set(volume.fields())

        def path_of(*slots: str) -> str:
            for slot in slots:
                if f"{slot}/path" in fields:
                    return str(volume[f"{slot}/path"][0])
            raise ExportVerificationError(f"job {job.uid} volume output has none of {', '.join(slots)}")

        particles = model.spec.outputs.root.get("particles")
        particle_paths = particle_files(particles) if particles is not None else []
        if not any(kind == "particles" for kind, _ in particle_paths):
            raise ExportVerificationError(f"job {job.uid} has no particles dataset")
        paths = [
            ("map", path_of("map")),
            ("half_map_a", path_of("map_half_A")),
            ("half_map_b", path_of("map_half_B")),
            ("mask", path_of("mask_fsc_auto", "mask_fsc", "mask_refine")),
            *particle_paths,
        ]
        fsc = (model.spec.outputs.root["volume"].latest_summary_stats or {}).get("fsc_info_best") or {}
        fsc_doc = json.dumps({"job": f"{project.uid}-{job.uid}", "fsc_info_best": fsc}, indent=1)
        sources: list[tuple[str, str, str | bytes]] = [
            (kind, PurePosixPath(path).name, path) for kind, path in paths
        ]
        sources.append(("fsc", f"{job.uid}_fsc_info_best.json", fsc_doc.encode()))
        sources += self._selected_class_averages(project)
        files = self._write(project, local_dir, sources)
        return ExportResult(
            dest=dest, files=files, resolution_A=resolution_of(model), project_dir=_project_dir(project)
        )
