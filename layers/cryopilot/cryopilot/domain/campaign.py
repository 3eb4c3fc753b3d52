"""Campaigns: one target, many compounds, and the reference a repeat run starts from.

A manifest names a ``campaign`` and a ``compound``. The first run of a campaign that succeeds
becomes its reference: its map, mask, the 2D class averages its Select 2D kept (and the JSON naming
them), the box and pixel size of the map, its resolution and particles. The files are copied to the
results bucket under :func:`reference_prefix`, and the campaign's item in the run table records the
rest (:class:`ReferenceSource`). A manifest may also name its reference itself (``reference:``): an
earlier run, or a map solved elsewhere with its pixel size.

Validate resolves the reference to a :class:`ReferenceSource` (its S3 folder and file names) and to
the :class:`~cryopilot.domain.reference.ReferenceInputs` the plan takes (where the files appear on
the cluster: the FSx data repository association of the reference's folder,
:data:`~cryopilot.domain.clusterconfig.mounts.FSX_REFERENCE_DIR`). Pure logic: no AWS.
"""

import statistics
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cryopilot.core.errors import CampaignReferenceError
from cryopilot.core.validation import clip, printable
from cryopilot.domain.clusterconfig.mounts import FSX_DATA_DIR, FSX_REFERENCE_DIR
from cryopilot.domain.record import RunRecord
from cryopilot.domain.reference import (
    MAX_RESAMPLE_BOX,
    PIXEL_SIZE_TOLERANCE,
    SAME_PIXEL_SIZE,
    ReferenceInputs,
    RepeatThresholds,
    pixel_size_offset,
)
from cryopilot.protocol.stage import PlannedStage

if TYPE_CHECKING:  # only a type here: a mail that compares runs need not load the manifest (YAML)
    from cryopilot.domain.manifest import Manifest

#: The preset a campaign run with a reference takes when its manifest names none.
REPEAT_PRESET = "repeat"

#: The input the repeat preset starts from (its first stages import and motion-correct movies).
REPEAT_INPUT_KIND = "movies"


#: Below the results bucket: a campaign's folder (its reference's files and its page).
CAMPAIGNS_PREFIX = "campaigns/"

#: The export's file kinds a reference keeps (``ExportedFile.kind``).
REFERENCE_KINDS = ("map", "mask", "class_averages", "selected_classes")

#: A reference keeps at most this many of its run's decisions, each at most this long (the
#: campaign's item stays small).
MAX_DECISIONS = 30
MAX_DECISION_CHARS = 400

#: cryoSPARC's extraction job type: its box and Fourier-crop box set the map's pixel size.
EXTRACT_JOB_TYPE = "extract_micrographs_multi"


def campaign_prefix(campaign: str) -> str:
    return f"{CAMPAIGNS_PREFIX}{campaign}/"


def reference_prefix(campaign: str) -> str:
    """Where a campaign's reference files are kept in the results bucket."""
    return f"{campaign_prefix(campaign)}reference/"


class ReferenceSource(BaseModel):
    """Where a reference is, in S3, and what it is (recorded on the campaign and on each run that
    uses it)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    kind: Literal["campaign", "run", "map"]
    #: the folder holding the files, ``s3://bucket/prefix/`` (one data repository association)
    folder_uri: str
    map: str
    mask: str | None = None
    templates: str | None = None
    selected: str | None = None
    pixel_size_A: float
    #: the class averages' own pixel size (their MRC header's), read at Validate
    templates_pixel_size_A: float | None = None
    box_pix: int | None = None
    resolution_A: float | None = None
    particles: int | None = None
    run_id: str | None = None
    campaign: str | None = None
    compound: str | None = None
    #: the automatic decisions of the reference run, one line each (stage: summary)
    decisions: list[str] = Field(default_factory=list)

    @property
    def map_uri(self) -> str:
        return self.folder_uri + self.map

    def files(self) -> list[str]:
        return [f for f in (self.map, self.mask, self.templates, self.selected) if f]

    def inputs(self, *, data_uri: str | None = None) -> ReferenceInputs:
        """The reference as the cluster sees it. Its folder is the run's ``reference`` association
        (``/fsx/reference``), or, when it lies inside the run's own data folder, the data's."""
        base = FSX_REFERENCE_DIR
        if data_uri and self.folder_uri.startswith(data_uri):
            base = (FSX_DATA_DIR + "/" + self.folder_uri[len(data_uri) :]).rstrip("/")

        def path(name: str | None) -> str | None:
            return None if name is None else f"{base}/{name}"

        return ReferenceInputs(
            run_id=self.run_id,
            map_path=f"{base}/{self.map}",
            mask_path=path(self.mask),
            templates_path=path(self.templates),
            pixel_size_A=self.pixel_size_A,
            templates_pixel_size_A=self.templates_pixel_size_A,
            box_pix=self.box_pix,
            resolution_A=self.resolution_A,
            particles=self.particles,
        )

    def needs_association(self, data_uri: str) -> bool:
        """Whether the cluster needs an association of its own for the reference's folder."""
        return not self.folder_uri.startswith(data_uri)


def map_geometry(manifest: "Manifest", stages: Sequence[PlannedStage]) -> tuple[float, int | None]:
    """The final map's pixel size (Å) and box (pixels): the last extraction's box, Fourier-cropped
    to its ``bin_size_pix`` if it has one, at the data's pixel size; the data's pixel size when the
    plan extracts nothing."""
    pixel = float(manifest.acquisition.pixel_size_A)
    extract = [s for s in stages if s.job_type == EXTRACT_JOB_TYPE]
    if not extract:
        return pixel, None
    box = extract[-1].params.get("box_size_pix")
    binned = extract[-1].params.get("bin_size_pix") or box
    if not isinstance(box, int) or not isinstance(binned, int) or binned <= 0:
        return pixel, None
    return round(pixel * box / binned, 4), binned


def check_pixel_size(reference: ReferenceSource, data_pixel_A: float, *, where: str) -> None:
    """A reference whose pixel size is more than
    :data:`~cryopilot.domain.reference.PIXEL_SIZE_TOLERANCE` from the data's is refused (one line
    naming both and the tolerance); within it, the repeat preset resamples the reference's files."""
    ref = reference.pixel_size_A
    off = pixel_size_offset(ref, data_pixel_A)
    if off > PIXEL_SIZE_TOLERANCE:
        raise CampaignReferenceError(
            f"{where}: the reference's pixel size {ref:g} Å differs from the data's"
            f" {data_pixel_A:g} Å (acquisition.pixel_size_A) by {off:.1%}; a reference within"
            f" {PIXEL_SIZE_TOLERANCE:.0%} of it is resampled to it on the cluster, one further off is refused"
        )


def check_resample_box(reference: ReferenceSource, data_pixel_A: float, *, where: str) -> None:
    """A map the head node would resample (its pixel size more than
    :data:`~cryopilot.domain.reference.SAME_PIXEL_SIZE` from the data's) must be at most
    :data:`~cryopilot.domain.reference.MAX_RESAMPLE_BOX` pixels a side."""
    off = pixel_size_offset(reference.pixel_size_A, data_pixel_A)
    if off > SAME_PIXEL_SIZE and reference.box_pix is not None and reference.box_pix > MAX_RESAMPLE_BOX:
        raise CampaignReferenceError(
            f"{where}: the map is {reference.box_pix} pixels a side and its pixel size"
            f" {reference.pixel_size_A:g} Å is {off:.1%} from the data's {data_pixel_A:g} Å: it would be"
            f" resampled, which the head node does for maps of at most {MAX_RESAMPLE_BOX} pixels; give the"
            " map at the data's pixel size"
        )


def choose_preset(manifest: "Manifest", reference: ReferenceSource | None) -> tuple[str, str]:
    """The preset a run takes and why (recorded on the run as ``preset_reason``)."""
    if manifest.pipeline.preset:
        why = "named by the manifest (pipeline.preset)"
        if reference is not None:
            why += f"; a reference exists ({describe(reference)}) but the manifest asks for this preset"
        return manifest.pipeline.preset, why
    if reference is not None and manifest.input.kind == REPEAT_INPUT_KIND:
        why = f"the run has a reference ({describe(reference)}) and the manifest names no preset"
        return REPEAT_PRESET, why
    if reference is not None:
        return manifest.input.kind, (
            f"the run has a reference ({describe(reference)}), but the repeat preset starts from raw"
            f" movies and the input is {manifest.input.kind}: the full pipeline, compared with the reference"
        )
    if manifest.campaign:
        return manifest.input.kind, (
            f"campaign {manifest.campaign} has no reference yet: a full run (input.kind), which becomes"
            " its reference if it succeeds"
        )
    return manifest.input.kind, "the input kind (input.kind): the manifest names no preset"


def describe(reference: ReferenceSource) -> str:
    if reference.kind == "campaign":
        return f"campaign {reference.campaign}'s reference, run {reference.run_id}"
    if reference.kind == "run":
        return f"run {reference.run_id}"
    return f"map {reference.map_uri}"


def reference_from_run(
    run: dict[str, Any], *, folder_uri: str, kind: Literal["campaign", "run"]
) -> ReferenceSource | None:
    """A finished run's results as a reference (None when its export has no map). ``run``: the
    run record's fields (``results``, ``map_pixel_size_A``, ``map_box_pix``, ...)."""
    files = {f.get("kind"): f.get("name") or str(f.get("key", "")).rpartition("/")[2]
             for f in (run.get("results") or {}).get("files") or []}  # fmt: skip
    if not files.get("map") or not run.get("map_pixel_size_A"):
        return None
    final = max((s for s in (run.get("stages") or {}).values() if s.get("num_particles")),
                key=lambda s: s.get("completed_at") or 0, default=None)  # fmt: skip
    decisions = [
        clip(printable(f"{d.get('stage_id')}: {d.get('summary')}"), MAX_DECISION_CHARS)
        for d in (run.get("decisions") or [])[:MAX_DECISIONS]
        if isinstance(d, dict)
    ]
    return ReferenceSource(
        kind=kind,
        decisions=decisions,
        folder_uri=folder_uri,
        map=files["map"],
        mask=files.get("mask"),
        templates=files.get("class_averages"),
        selected=files.get("selected_classes"),
        pixel_size_A=float(run["map_pixel_size_A"]),
        box_pix=run.get("map_box_pix"),
        resolution_A=run.get("resolution_A"),
        particles=None if final is None else int(final["num_particles"]),
        run_id=run.get("run_id"),
        campaign=run.get("campaign"),
        compound=run.get("compound"),
    )


class RepeatVerdict(BaseModel):
    """How a repeat run compares with its reference, against the manifest's thresholds."""

    reference_resolution_A: float | None
    resolution_A: float | None
    resolution_loss_A: float | None
    particles: int | None
    reference_particles: int | None
    particle_yield: float | None
    thresholds: RepeatThresholds
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def judge_repeat(
    resolution_A: float | None,
    particles: int | None,
    reference: ReferenceSource,
    thresholds: RepeatThresholds,
) -> RepeatVerdict:
    """The repeat run's map against its reference: worse by more than
    ``max_resolution_loss_A``, or fewer particles than ``min_particle_yield`` of the reference's,
    is a problem the mail says plainly. A map with no resolution did not improve at all."""
    problems = []
    loss = None
    ref_res = reference.resolution_A
    if resolution_A is None:
        problems.append("the run reported no final resolution: the map did not improve")
    elif ref_res is not None:
        loss = round(resolution_A - ref_res, 3)
        if loss > thresholds.max_resolution_loss_A:
            problems.append(
                f"the map did not improve: {resolution_A:.2f} Å is {loss:.2f} Å worse than the reference's"
                f" {ref_res:.2f} Å (threshold repeat.max_resolution_loss_A ="
                f" {thresholds.max_resolution_loss_A:g} Å)"
            )
    ratio = None
    if particles is not None and reference.particles:
        ratio = round(particles / reference.particles, 3)
        if ratio < thresholds.min_particle_yield:
            problems.append(
                f"low particle yield: {particles:,} particles in the final map, {ratio:.0%} of the"
                f" reference's {reference.particles:,} (threshold repeat.min_particle_yield ="
                f" {thresholds.min_particle_yield:g})"
            )
    return RepeatVerdict(
        reference_resolution_A=ref_res,
        resolution_A=resolution_A,
        resolution_loss_A=loss,
        particles=particles,
        reference_particles=reference.particles,
        particle_yield=ratio,
        thresholds=thresholds,
        problems=problems,
    )


def median(values: Sequence[float | None]) -> float | None:
    found = [float(v) for v in values if v is not None]
    return statistics.median(found) if found else None


def final_particles(run: RunRecord) -> int | None:
    """Particles of the run's last stage (in completion order) that counted any."""
    done = [s for s in run.stages.values() if s.num_particles is not None]
    if not done:
        return None
    return int(max(done, key=lambda s: s.completed_at or 0).num_particles or 0)


def time_to_structure(run: RunRecord) -> float | None:
    if run.started_epoch is None or run.export_finished_at is None:
        return None
    return float(run.export_finished_at) - float(run.started_epoch)


#: Bytes of an MRC file's main header (MRC2014: 256 four-byte words).
MRC_HEADER_BYTES = 1024
#: The largest box a reference map may have (the register's bound on ``box_size_pix``).
MAX_BOX_PIX = 2048


def _mrc_byte_order(header: bytes) -> str:
    """The struct byte order of an MRC header, from its machine stamp (bytes 213-216, MRC2014):
    0x11 0x11 big-endian; 0x44 0x44, or no stamp, little-endian."""
    return ">" if header[212:214] == b"\x11\x11" else "<"


def mrc_pixel_size(header: bytes) -> float | None:
    """The pixel size (Å) an MRC header gives: the X cell length (word 11, a float) over MX (word
    8), in the header's byte order; None when either is not positive (unset)."""
    if len(header) < MRC_HEADER_BYTES:
        return None
    order = _mrc_byte_order(header)
    (mx,) = struct.unpack_from(f"{order}i", header, 28)
    (xlen,) = struct.unpack_from(f"{order}f", header, 40)
    if mx <= 0 or not xlen > 0 or xlen == float("inf"):
        return None
    return round(float(xlen) / mx, 6)


def mrc_box(header: bytes, *, where: str) -> int:
    """The box (pixels) of a cubic MRC map from its header: words 1-3 are NX, NY, NZ (32-bit
    integers; MRC2014, www.ccpem.ac.uk/mrc_format/mrc2014.php), in the header's byte order. A header
    that is not an MRC map's, or a map that is not a cube, is one :class:`CampaignReferenceError`
    line."""
    if len(header) < MRC_HEADER_BYTES:
        raise CampaignReferenceError(f"{where}: the map has {len(header)} bytes, less than an MRC header")
    order = _mrc_byte_order(header)
    nx, ny, nz = struct.unpack_from(f"{order}3i", header, 0)
    if not all(0 < n <= MAX_BOX_PIX for n in (nx, ny, nz)):
        raise CampaignReferenceError(
            f"{where}: the map's header gives a size of {nx} x {ny} x {nz}: not an MRC map of at most"
            f" {MAX_BOX_PIX} pixels a side"
        )
    if not nx == ny == nz:
        raise CampaignReferenceError(
            f"{where}: the map is {nx} x {ny} x {nz} pixels; a reference map is a cube"
        )
    return int(nx)
