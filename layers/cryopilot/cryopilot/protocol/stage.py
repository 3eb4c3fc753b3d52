"""The planned stage: what the controller sends the head-node agent to submit one cryoSPARC job.

Shared by the Lambdas (which plan it from a preset) and the agent (which submits it); the agent's
bundle carries this module and ``protocol.agent`` only.
"""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

#: A GPU queue, or its Spot twin (core.queues.LANES)
Lane = Literal["gpu8", "gpu4", "gpu1", "gpu8-spot", "gpu4-spot", "gpu1-spot"]
DecisionKind = Literal["select_2d_classes", "choose_hetero_class"]

#: Tag put in the title of every job cryopilot creates: ``cryopilot:<stage id>``.
JOB_TITLE_PREFIX = "cryopilot:"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class DecisionDef(_Model):
    kind: DecisionKind
    params: dict[str, float | int] = Field(default_factory=dict)


class InputConnection(_Model):
    """Connect input ``input`` of the job to output ``output`` of stage ``stage``'s job."""

    input: str
    stage: str
    output: str


class Resample(_Model):
    """Resample a reference map to the data's pixel size before the job is made: the map named by
    parameter ``path`` is read at ``from_A`` Å per pixel, resampled to ``to_A`` in Fourier space at
    its own box, and written to the run's project directory; the job is then given the new file
    (``path``) and its pixel size (``pixel_size``)."""

    path: str = Field(description="the job parameter holding the map's path")
    pixel_size: str = Field(description="the job parameter holding its pixel size (Å)")
    from_A: float = Field(gt=0, description="the file's pixel size (the reference's)")
    to_A: float = Field(gt=0, description="the pixel size it is resampled to (the data's)")


class PlannedStage(_Model):
    """One stage, ready for ``cryopilot-agent submit`` (final parameter values)."""

    id: str
    title: str
    job_type: str
    lane: Lane | None
    gpus: int
    params: dict[str, Any]
    inputs: list[InputConnection]
    decision: DecisionDef | None = None
    resample: Resample | None = None
    time_limit_seconds: int
    expected_seconds: int | None = Field(
        default=None,
        description="the placement's estimate of the stage's node wait plus wall time: the first poll"
        " waits half of it",
    )


def job_title(stage_id: str) -> str:
    """The title cryopilot gives the job of ``stage_id`` (how a re-submit finds it)."""
    return f"{JOB_TITLE_PREFIX}{stage_id}"
