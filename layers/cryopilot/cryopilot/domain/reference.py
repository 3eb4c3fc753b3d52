"""What a repeat run takes from its campaign's reference, as the cluster sees it.

A campaign's reference is an earlier run's structure (or a map solved elsewhere): the map, its
mask, the 2D class averages its Select 2D kept, and the box and pixel size they were made at.
Validate resolves the manifest's campaign or ``reference:`` to one :class:`ReferenceInputs`, with
the paths where the files appear on the cluster's FSx, and the plan
(:func:`cryopilot.domain.presets.expand`) resolves a preset's ``${reference.<field>}`` values from it.
A preset that names ``${reference.…}`` cannot be planned without one.
"""

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, Strict

#: How far (relative) a reference's pixel size may be from the new data's. Within it, the
#: reference's map and mask are resampled to the data's pixel size on the cluster before cryoSPARC
#: imports them (the ``resample`` of the repeat preset's volume imports; the head-node agent does it
#: in Fourier space at the map's own box, so particles and maps keep one box). Beyond it, the run is
#: refused at Validate: a reference whose pixel size is that far off is more likely another detector
#: or a miscalibration than the same target's map, and keeping its box at the new pixel size would
#: crop or pad it by more than a few pixels.
PIXEL_SIZE_TOLERANCE = 0.02

#: Two pixel sizes this close (relative) are the same: a map is not resampled for less. A pixel
#: size is given to 3 or 4 significant figures; 0.05 % moves the edge of a 256-pixel box by
#: 0.064 pixel (128 x 0.0005).
SAME_PIXEL_SIZE = 0.0005

#: The largest map the head-node agent resamples: its time grows as the box to the fourth power
#: (0.6-0.8 s at 256, 8-10 s at 512 on a 2-core machine), and it must end within one agent call
#: (60 s by default, ``agent_timeout_seconds`` in the settings). Validate refuses a larger map that
#: would need resampling.
MAX_RESAMPLE_BOX = 512


def pixel_size_offset(pixel_A: float, data_pixel_A: float) -> float:
    """How far (relative to the data's) a reference's pixel size is from the data's: the measure
    :data:`PIXEL_SIZE_TOLERANCE` and :data:`SAME_PIXEL_SIZE` bound."""
    return abs(pixel_A - data_pixel_A) / data_pixel_A


#: Placeholder prefix a preset uses for the reference's values, e.g. ``${reference.map_path}``.
REFERENCE_PREFIX = "reference."


class ReferenceInputs(BaseModel):
    """The reference of a repeat run. Paths are absolute paths on the cluster (FSx)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: str | None = Field(default=None, description="the reference run, if it was one of ours")
    map_path: str = Field(description="the reference map (.mrc)")
    mask_path: str | None = Field(default=None, description="its mask (.mrc), if kept")
    templates_path: str | None = Field(
        default=None, description="the selected 2D class averages (.mrcs), if kept"
    )
    pixel_size_A: float = Field(gt=0, description="pixel size of the map and its mask, in Å")
    templates_pixel_size_A: float | None = Field(
        default=None,
        gt=0,
        description="pixel size of the class averages, in Å (from their MRC header: 2D classification"
        " runs on Fourier-cropped particles, so it is usually coarser than the map's)",
    )
    box_pix: int | None = Field(default=None, gt=0, description="box of the map (the extraction box)")
    resolution_A: float | None = Field(default=None, gt=0, description="the map's FSC resolution")
    particles: int | None = Field(default=None, ge=0, description="particles in its final map")

    def placeholders(self) -> dict[str, object]:
        """The ``${reference.<field>}`` values a preset may use (fields that are unset are left out,
        so naming one is refused as an unknown reference)."""
        return {
            REFERENCE_PREFIX + name: value for name, value in self.model_dump().items() if value is not None
        }


class RepeatThresholds(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False, defer_build=True
    )

    """``repeat:``: when a repeat run's mail says plainly that it did worse than its reference."""

    max_resolution_loss_A: Annotated[float, Strict(), Field(ge=0, le=20)] = Field(
        default=0.5, description="how much worse (Å) the final map may be than the reference's"
    )
    min_particle_yield: Annotated[float, Strict(), Field(ge=0, le=10)] = Field(
        default=0.5,
        description="the final map's particles, as a fraction of the reference's, below which it is flagged",
    )
