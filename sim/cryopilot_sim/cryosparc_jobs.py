"""The cryoSPARC stand-in's job model and its timing.

Projects hold jobs (:class:`SimJob`); a queued job starts once its inputs are complete (and, with
the cluster's Slurm nodes, once a node of its lane is up) and runs for the minutes that
``profiles.yaml`` gives its stage, on the simulated clock, unless a fault is injected.

A job goes through the statuses in the order of cryosparc-tools' ``JobStatus`` (models/job.py;
``JobController.wait_for_status`` lists them in the same order): ``queued``, ``launched``,
``started``, ``running``, then ``completed`` (or ``waiting`` for an interactive job, ``failed``,
``killed``). Its timestamps follow the docstrings of models/job.py, the only description of them:
``started_at`` "When internal scheduler launches/submits" (the job becomes ``launched``; a lane job
is then in Slurm's queue, waiting for its node), ``launched_at`` "When job initial monitor process
starts" (on its node: ``started``), ``running_at`` "When job monitor process forks into main
process" (``running``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any, Literal

import yaml
from cryopilot.domain.presets import JobTypeSpec

from cryopilot_sim.clock import Clock

FaultKind = Literal["fail", "kill", "stuck", "nospace", "node_lost"]
DurationFn = Callable[[str, "SimJob"], float]

#: profiles.yaml stage id per job type (extract_micrographs_multi is "extract" the first time in a
#: project and "reextract" after that).
STAGE_OF_TYPE = {
    "import_movies": "import",
    "import_micrographs": "import",
    "import_volumes": "import",  # the reference's files: minutes, like the data's import
    "import_templates": "import",
    "create_templates": "import",  # projections of the imported reference map: minutes, as its import
    "patch_motion_correction_multi": "motion",
    "patch_ctf_estimation_multi": "ctf",
    "blob_picker_gpu": "pick",
    "template_picker_gpu": "pick",  # the repeat preset's picker, timed with the blob picker's figure
    "extract_micrographs_multi": "extract",
    "class_2D_new": "class2d",
    "select_2D": "select2d",
    "homo_abinit": "abinit",
    "hetero_refine": "hetero",
    "nonuniform_refine_new": "nurefine",
}

#: Minutes for a stage a profile does not list (e.g. the spike's short ab-initio).
FALLBACK_MINUTES = 30.0

#: Seconds from a job's monitor process starting (``started``) to its main process (``running``).
#: Not documented; 0 by default, so that every stage runs for its profile's figure from the moment
#: its node is up (:attr:`JobTiming.monitor_seconds`).
MONITOR_SECONDS = 0.0


@dataclass
class QueueRules:
    """What the stand-in does with queue requests whose answer cryoSPARC does not document.

    ``default_lane``: a job that runs on a worker, queued without a lane. api.pyi ``jobs.enqueue``
    documents "the queue for the given worker lane (default lane if not specified)"; which lane is an
    instance's default is its configuration, which cryopilot never sets (headnode-setup.sh only
    registers one lane per Slurm queue). With a lane name here the job goes to that lane, as
    documented. With None (the default) the stand-in refuses the request: a stand-in rule, so that
    a plan that leaves a worker job without a lane is seen at once rather than run on a lane nobody
    chose.

    ``oversized_gpus``: a job whose ``compute_num_gpus`` is more than one node of its lane has.
    cryoSPARC documents no check of it at queue time; the lane's submission script
    (cryosparc-cluster-script.sh) asks Slurm for that many GPUs on one node of the partition, which
    Slurm cannot place. ``fail_at_launch`` (the default): queued, then failed when the scheduler
    submits it (the message is the stand-in's). ``refuse``: refused at queue time, a stand-in rule.

    ``interactive_on_lane``: an interactive job (Select 2D) queued to a lane. cryosparc-tools'
    workflow example queues Select 2D without one, and nothing documents what a lane does with it.
    ``refuse`` (the default, a stand-in rule) or ``master``: it runs on the master as without a lane.
    """

    default_lane: str | None = None
    oversized_gpus: Literal["fail_at_launch", "refuse"] = "fail_at_launch"
    interactive_on_lane: Literal["refuse", "master"] = "refuse"


def load_profiles() -> dict[str, Any]:
    text = resources.files("cryopilot.domain").joinpath("data", "profiles.yaml").read_text(encoding="utf-8")
    doc: dict[str, Any] = yaml.safe_load(text)
    return doc


@dataclass
class Connection:
    input: str
    job_uid: str
    output: str


@dataclass
class SimJob:
    uid: str
    num: int
    project_uid: str
    workspace_uid: str
    type: str
    title: str
    description: str
    params: dict[str, Any]
    created_at: float
    connections: list[Connection] = field(default_factory=list)
    status: str = "building"
    lane: str | None = None
    queued_at: float | None = None
    #: submitted by the scheduler (to its lane's Slurm queue)
    started_at: float | None = None
    #: its monitor process started (on its node)
    launched_at: float | None = None
    #: its main process started: the job runs
    running_at: float | None = None
    waiting_at: float | None = None
    completed_at: float | None = None
    killed_at: float | None = None
    failed_at: float | None = None
    end_at: float | None = None
    fault: FaultKind | None = None
    error: str | None = None
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    class_info: list[dict[str, Any]] = field(default_factory=list)
    #: what ``load_output`` of an output answers: its rows, each {field: value}
    datasets: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    stage_key: str = ""
    #: The stand-in's model of a repeat run (see ``CryoSparcStandIn.wrong_reference``): the job
    #: read, directly or through its inputs, an imported volume (``seeded``) and one of another
    #: protein than the dataset's (``other_protein``).
    seeded: bool = False
    other_protein: bool = False
    #: Deleted (models/job.py ``deleted``: "marked as deleted"): kept, so its uid is never reused,
    #: but not listed by ``jobs.find`` (whose ``deleted`` defaults to False).
    deleted: bool = False
    #: Why the scheduler will fail the job when it submits it to its lane (a queue rule, below).
    submit_error: str | None = None
    #: Select 2D's ``finish`` requests: (simulated time, the ``timeout`` the caller gave).
    finish_requests: list[tuple[float, int]] = field(default_factory=list)


@dataclass
class SimProject:
    uid: str
    num: int
    title: str
    description: str
    project_dir: str
    created_at: float
    workspaces: dict[str, dict[str, Any]] = field(default_factory=dict)
    jobs: dict[str, SimJob] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)


class JobTiming:
    """When jobs start and end (a mixin of :class:`~cryopilot_sim.cryosparc_standin.CryoSparcStandIn`)."""

    clock: Clock
    profile: dict[str, Any]
    duration_fn: DurationFn | None
    projects: dict[str, SimProject]
    slurm: Any
    #: Seconds from ``started`` to ``running`` (:data:`MONITOR_SECONDS`).
    monitor_seconds: float
    _faults: list[dict[str, Any]]
    _launch_counts: dict[str, int]

    if TYPE_CHECKING:

        def _spec(self, job_type: str) -> JobTypeSpec: ...

        def _complete(self, job: SimJob, at: float) -> None: ...

        def _prepare_select(self, p: SimProject, job: SimJob) -> None: ...

        def _write_outputs(self, p: SimProject, job: SimJob) -> float | None: ...

    # ---------------------------------------------------------------- simulation

    def _duration(self, job: SimJob) -> float:
        if self.duration_fn is not None:
            return float(self.duration_fn(job.type, job))
        minutes: dict[str, float] = self.profile["minutes"]
        stage = job.stage_key or STAGE_OF_TYPE.get(job.type, "")
        value = float(minutes.get(stage, FALLBACK_MINUTES))
        if stage == "hetero":
            value /= max(1, int(self.profile.get("hetero_rounds", 1)))
        return value * 60.0

    def _take_fault(self, job: SimJob) -> FaultKind | None:
        n = self._launch_counts.get(job.type, 0) + 1
        self._launch_counts[job.type] = n
        for f in self._faults:
            if f["job_type"] == job.type and f["occurrence"] == n:
                self._faults.remove(f)
                kind: FaultKind = f["kind"]
                return kind
        return None

    def _tick(self) -> None:
        """Bring every job up to the simulated now (parents always have lower uids)."""
        now = self.clock.now()
        for p in self.projects.values():
            for job in sorted(p.jobs.values(), key=lambda j: j.num):
                if job.deleted:
                    continue
                if job.status == "queued":
                    parents = [p.jobs.get(c.job_uid) for c in job.connections]
                    if any(par is None or par.status != "completed" for par in parents):
                        continue
                    start = max([job.queued_at or now] + [par.completed_at or now for par in parents if par])
                    if start > now:
                        continue
                    self._launch(p, job, start)
                if job.status == "launched" and job.launched_at is not None and now >= job.launched_at:
                    job.status = "started"
                if job.status == "started" and job.running_at is not None and now >= job.running_at:
                    job.status = "running"
                if job.status == "waiting" and job.end_at is not None and now >= job.end_at:
                    self._complete(job, job.end_at)  # a finished Select 2D done writing its outputs
                if job.status == "running" and job.end_at is not None and now >= job.end_at:
                    if job.fault == "fail":
                        job.error = f"Simulated failure of {job.type} (injected fault)"
                        self._finish(job, "failed", job.end_at)
                    elif job.fault == "nospace":  # its file system filled up (error set when it did)
                        self._finish(job, "failed", job.end_at)
                    elif job.fault == "node_lost":  # its Spot node was reclaimed
                        job.error = (
                            "Job's node was lost (Spot instance interrupted); Slurm ended it: NODE_FAIL"
                        )
                        self._finish(job, "failed", job.end_at)
                    elif job.fault == "kill":
                        job.error = "Job killed by an external signal (injected fault)"
                        self._finish(job, "killed", job.end_at)
                    else:
                        self._complete(job, job.end_at)

    def _launch(self, p: SimProject, job: SimJob, start: float) -> None:
        """The scheduler submits the queued job at ``start``: ``launched``. An interactive job runs on
        the master at once; a lane job's monitor starts once its node is up."""
        spec = self._spec(job.type)
        job.status = "launched"
        job.started_at = start
        if job.type == "extract_micrographs_multi":
            earlier = [j for j in p.jobs.values() if j.type == job.type and j.num < job.num]
            job.stage_key = "reextract" if earlier else "extract"
        if spec.interactive:
            job.launched_at = job.running_at = job.waiting_at = start
            job.status = "waiting"
            self._prepare_select(p, job)
            return
        if job.submit_error is not None:  # the lane's scheduler refuses it (QueueRules.oversized_gpus)
            job.error = job.submit_error
            self._finish(job, "failed", start)
            return
        job.fault = self._take_fault(job)
        duration = self._duration(job)
        on_node = start
        if self.slurm is not None and job.lane is not None:
            kind = job.stage_key or STAGE_OF_TYPE.get(job.type, "")
            # the Slurm job's name, as the lane's submission script sets it
            ready = self.slurm.acquire(job.lane, start, job.uid, name=f"cryosparc_{p.uid}_{job.uid}")
            if ready is None:  # no node can be launched: Slurm keeps the job PENDING
                return
            duration /= self.slurm.job_speed(job.uid, kind)  # the speed of the node it got
            on_node = ready
        job.launched_at = on_node
        job.running_at = run_start = on_node + self.monitor_seconds
        self._schedule_end(p, job, run_start, duration)

    def _schedule_end(self, p: SimProject, job: SimJob, start: float, duration: float) -> None:
        """When the job that runs from ``start`` ends, and how (its fault, its node, its bytes)."""
        lost = self.slurm.interruption(job.uid) if self.slurm is not None and job.lane is not None else None
        if lost is not None and job.fault != "stuck" and lost[1] < start + duration:
            # EC2 reclaims the job's Spot node two minutes after its notice: the job dies with it
            job.fault = "node_lost"
            job.end_at = lost[1]
        elif job.fault == "stuck":
            job.end_at = None
        elif job.fault in ("fail", "kill"):
            job.end_at = start + duration / 2
        else:
            job.end_at = start + duration
            done = self._write_outputs(p, job)  # the bytes it writes (cryosparc_bytes)
            if done is not None:
                job.fault = "nospace"
                job.end_at = start + duration * done

    def _release_node(self, job: SimJob, at: float) -> None:
        if self.slurm is not None and job.lane is not None:
            self.slurm.release(job.lane, at, job.uid)

    def _finish(self, job: SimJob, status: str, at: float) -> None:
        self._release_node(job, at)
        job.status = status
        if status == "killed":
            job.killed_at = at
        elif status == "failed":
            job.failed_at = at
        job.end_at = None
