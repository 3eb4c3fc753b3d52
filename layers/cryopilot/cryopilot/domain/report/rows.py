"""One planned stage as it ran (a row of the report's stage table) and the queues it may run on."""

from datetime import datetime

from pydantic import BaseModel, Field

from cryopilot.core.queues import NOMINAL_QUEUE_GPUS

#: GPUs of one node of each compute queue.
GPUS_PER_NODE: dict[str, int] = dict(NOMINAL_QUEUE_GPUS)

#: The "queue" of the stages that run on the cryoSPARC master (plan ``lane`` is null).
MASTER_QUEUE = "master"


class StageRow(BaseModel):
    """One planned stage as it ran (or did not)."""

    stage_id: str
    title: str
    queue: str = Field(description="gpu8, gpu1, ... or 'master' for stages on the cryoSPARC master")
    instance_type: str | None = None
    gpus: int = 0
    nodes: int | None = Field(default=None, description="nodes the stage's GPUs need (compute queues)")
    state: str = "pending"
    submitted_at: datetime | None = Field(
        default=None, description="when its job(s) went to Slurm: its nodes, if new, launch from here"
    )
    started_at: datetime | None = None
    completed_at: datetime | None = None
    wall_seconds: float | None = None
    cost_usd: float | None = None
    gpu_hours: float | None = Field(default=None, description="GPUs used × wall hours")
    num_particles: int | None = None
    num_micrographs: int | None = None
    resolution_A: float | None = None
    #: a stage lost to a Spot interruption: when its job died with its Spot node, when it was
    #: queued again and the On-Demand lane it then ran on
    lost_at: datetime | None = None
    requeued_at: datetime | None = None
    resubmitted_on: str | None = None


class NodeRow(BaseModel):
    """One GPU node the run's cluster launched, as its listings saw it, and the time it was billed."""

    node_id: str
    queue: str
    instance_type: str
    launched_at: datetime
    ended_at: datetime = Field(description="its end as billed (billing.node_end)")
    cost_usd: float | None = None
    listed: bool = Field(
        default=True, description="False: no listing saw it (a Spot node reclaimed between two listings)"
    )
