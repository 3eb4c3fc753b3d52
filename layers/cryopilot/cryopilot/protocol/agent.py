"""What the head-node agent answers: one JSON document per verb.

Shared by ``cryopilot-agent`` (which prints these) and the Lambdas (which parse them from the SSM
command's output). Every answer carries ``ok``; a failed verb prints an :class:`AgentFailure`.
"""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

#: cryoSPARC job statuses (cryosparc-tools ``JobStatus``).
JobStatusName = Literal[
    "building", "queued", "launched", "started", "running", "waiting", "completed", "killed", "failed"
]

#: A stage's state, derived from its jobs' statuses.
StageState = Literal["not_submitted", "queued", "running", "completed", "failed", "killed"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", defer_build=True)


class JobInfo(_Model):
    uid: str = Field(description="cryoSPARC job uid, e.g. J12")
    job_type: str
    status: JobStatusName
    lane: str | None = None
    gpus: int = 0
    progress: float = Field(default=0.0, ge=0.0, le=1.0)
    queued_at: float | None = Field(default=None, description="epoch seconds")
    started_at: float | None = None
    completed_at: float | None = None
    num_particles: int | None = None
    num_micrographs: int | None = None
    error: str | None = None


class Decision(_Model):
    """An automatic choice where cryoSPARC expects a person, with the numbers behind it."""

    stage_id: str
    kind: str = Field(description="e.g. select_2d_classes, choose_hetero_class")
    summary: str = Field(description="one line a person can read in the mail")
    numbers: dict[str, Any] = Field(default_factory=dict)


class StageStatus(_Model):
    stage_id: str
    state: StageState
    jobs: list[JobInfo] = Field(default_factory=list)
    resolution_A: float | None = Field(default=None, description="final FSC resolution, refinements only")
    decisions: list[Decision] = Field(default_factory=list)


class SubmitResult(_Model):
    ok: Literal[True] = True
    verb: Literal["submit"] = "submit"
    project_uid: str
    workspace_uid: str
    stage: StageStatus
    already_submitted: bool = False


class SlurmNode(_Model):
    """One Slurm node of a lane, as ``sinfo --Node`` shows it."""

    name: str = Field(description="ParallelCluster's node name, <queue>-<st|dy>-<compute resource>-<n>")
    state: str = Field(description="sinfo's compact state, e.g. idle~, alloc#, down~, idle%")
    reason: str = Field(
        default="", description="e.g. (Code:InsufficientInstanceCapacity)Failure when resuming nodes"
    )


class SlurmJob(_Model):
    """One Slurm job of a lane, as ``squeue`` shows it."""

    job_id: str
    name: str = Field(description="cryosparc_<project uid>_<job uid> for cryoSPARC's jobs")
    state: str = Field(description="PENDING, CONFIGURING, RUNNING, ...")
    reason: str = Field(default="", description="squeue's reason, e.g. Resources, ReqNodeNotAvail, ...")
    cryosparc_job: str | None = Field(default=None, description="the cryoSPARC job uid, e.g. J12")


class LaneState(_Model):
    """A cryoSPARC lane's Slurm partition: its nodes and the cryopilot jobs it holds."""

    lane: str
    nodes_by_state: dict[str, int] = Field(default_factory=dict)
    #: the nodes that are not simply idle, powered down or allocated (down, failing, powering up)
    nodes: list[SlurmNode] = Field(default_factory=list)
    jobs: list[SlurmJob] = Field(default_factory=list)


class StatusResult(_Model):
    ok: Literal[True] = True
    verb: Literal["status"] = "status"
    project_uid: str | None
    stages: list[StageStatus]
    #: the Slurm state of each lane (absent where Slurm could not be asked)
    lanes: list[LaneState] = Field(default_factory=list)
    slurm_error: str | None = Field(default=None, description="why the lanes are missing, if they are")


class KillResult(_Model):
    ok: Literal[True] = True
    verb: Literal["kill"] = "kill"
    stage_id: str
    killed: list[str] = Field(default_factory=list, description="uids of the jobs killed")


class RequeueResult(_Model):
    """``requeue``: the stage's failed jobs cleared and queued again, on ``lane``."""

    ok: Literal[True] = True
    verb: Literal["requeue"] = "requeue"
    stage_id: str
    lane: str
    requeued: list[str] = Field(default_factory=list, description="uids of the jobs queued again")


class ExportedFile(_Model):
    kind: str = Field(
        description="map, half_map_a, half_map_b, mask, fsc, particles, particles_passthrough,"
        " class_averages, selected_classes; class_map (partial). particles: a file of the slots the job"
        " computed; particles_passthrough: one of the slots it passed through from its input. Kinds"
        " repeat: every class map, every particles file"
    )
    name: str = Field(description="the file's name in the export directory")
    size: int


class ExportResult(_Model):
    """The files the agent put into the export directory on FSx (``dest``, relative to the file
    system's mount), each checked by size there; the data repository task takes them to S3."""

    ok: Literal[True] = True
    verb: Literal["export"] = "export"
    dest: str = Field(description="the export directory, relative to the FSx mount (results/...)")
    files: list[ExportedFile]
    resolution_A: float | None = None
    partial: bool = Field(default=False, description="the maps of an intermediate stage (the run stopped)")
    project_dir: str | None = Field(
        default=None, description="the cryoSPARC project's directory (absolute, on the head node)"
    )


class AgentFailure(_Model):
    ok: Literal[False] = False
    verb: str
    error_type: str = Field(description="class name, e.g. JobNotFound, ConnectionError, ValueError")
    message: str
