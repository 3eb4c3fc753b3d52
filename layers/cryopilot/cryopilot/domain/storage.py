"""The storage model: how large and how fast a run's FSx for Lustre file system must be.

The run's cluster mounts one FSx for Lustre file system (``PERSISTENT_2``) at ``/fsx``. What lands on
it during a run:

* **the raw data**: the data repository association imports the dataset lazily, file by file, the
  first time a job reads it (motion correction reads every movie; for motion-corrected micrographs,
  CTF estimation reads every micrograph), and the file then stays on the file system. Counted as the
  bytes Validate measures under the data prefix (S3 ``ListObjectsV2``).
* **cryoSPARC's project directory** (``/fsx/projects``):

  - motion-corrected micrographs (movies preset only): ``movies × 2 × micrograph bytes``. cryoSPARC's
    Patch Motion Correction writes a dose-weighted and a non-dose-weighted micrograph per movie
    (its ``micrographs`` output carries ``micrograph_blob`` and ``micrograph_blob_non_dw``), float32
    unless asked otherwise; a K3 micrograph (5760 × 4092 pixels × 4 bytes) is 94.3 MB;
  - per movie, :data:`PER_EXPOSURE_BYTES` for the small files (background estimate, thumbnails, CTF
    diagnostics);
  - the particle stacks of the first extraction: ``particles × box² × bytes per pixel`` at the box the
    job stores (``bin_size_pix`` when it Fourier-crops, else ``box_size_pix``), 4 bytes per pixel
    (float32) or 2 with ``output_f16: true``;
  - the re-extraction's stack: ``reextract_fraction × particles × box² × bytes per pixel`` at its
    own box (the full box: it does not crop);
  - maps, half maps, masks and ``.cs`` metadata: small beside the stacks, and covered by the headroom.

* **headroom**: :data:`HEADROOM` (25 %) on top of the sum, for what the model leaves out (repeated
  jobs, files cryoSPARC keeps while it writes the next version).

Numbers the manifest does not give (``storage:``: expected particles, bytes per micrograph, share
re-extracted) are the preset's white-paper dataset's (``data/profiles.yaml``); the extraction boxes
and the float16 choice are the planned jobs' own parameters, so the model sizes what cryoSPARC is
asked to write.

**Capacity** is the need rounded up to a size FSx accepts for ``PERSISTENT_2`` SSD file systems:
1200 GiB, 2400 GiB, or an increment of 2400 GiB (FSx API reference, ``CreateFileSystem``,
``StorageCapacity``: https://docs.aws.amazon.com/fsx/latest/APIReference/API_CreateFileSystem.html).

**Throughput per TiB** (one of 125, 250, 500, 1000 MB/s/TiB for ``PERSISTENT_2``, FSx user guide,
"Managing throughput capacity") is chosen by one rule: the I/O-bound stage is particle extraction,
which reads every dose-weighted micrograph and writes the whole particle stack; the white paper's
Table 1 gives its wall time on one p4d.24xlarge. The tier is the smallest whose throughput
(tier × capacity in TiB) moves those bytes in that time, at most 1000. A deployment fixes it instead
with the ``FsxThroughputPerTiB`` stack parameter.

**Limit**: the stack parameter ``MaxFsxTiB`` caps the capacity; a run whose model needs more fails at
Validate (:class:`~cryopilot.core.errors.StorageLimitError`), before any cluster exists.

**Cost**: capacity (GiB, billed as GB) × the catalogue's USD per GB-month for the deployment type and
tier × the hours the file system exists (the cluster's life) / 730 hours per month
(:func:`cryopilot.domain.billing.storage_cost`).
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

from cryopilot.core.errors import StorageLimitError
from cryopilot.domain.catalogue import PROFILE_FOR_PRESET, Profile, get_profile
from cryopilot.domain.manifest import Manifest
from cryopilot.protocol.stage import PlannedStage

__all__ = [
    "DEPLOYMENT_TYPE",
    "HEADROOM",
    "THROUGHPUT_TIERS",
    "DataSize",
    "StorageInputs",
    "StorageLine",
    "StoragePlan",
    "check_limit",
    "fsx_capacity_gib",
    "inputs_for_manifest",
    "inputs_for_profile",
    "micrograph_bytes",
    "particle_bytes",
    "plan_for_manifest",
    "plan_storage",
    "storage_record",
]

GIB = 1024**3
TIB = 1024**4
MB = 10**6

#: The FSx for Lustre deployment type of every cryopilot cluster (data repository associations need it).
DEPLOYMENT_TYPE = "PERSISTENT_2"
#: What the /shared volume's snapshot holds, GiB: the cryoSPARC install (master and worker, about
#: 15 GiB) and its database (a few GiB for a run's one project). An assumption, not measured: EBS
#: bills the blocks the snapshot holds, not the volume's size.
SHARED_SNAPSHOT_GIB = 25
#: ``PERSISTENT_2`` SSD capacities: 1200 GiB, 2400 GiB and increments of 2400 GiB (API reference).
SMALLEST_GIB = 1200
STEP_GIB = 2400
#: ``PERSISTENT_2`` throughput tiers, MB/s per TiB of capacity.
THROUGHPUT_TIERS = (125, 250, 500, 1000)
#: Added to the modelled bytes for what the model leaves out.
HEADROOM = 0.25
#: Micrographs Patch Motion Correction writes per movie (dose-weighted and non-dose-weighted).
MICROGRAPHS_PER_MOVIE = 2
#: Small files per exposure (background estimate, thumbnails, CTF diagnostics): an assumption.
PER_EXPOSURE_BYTES = 4 * MB
#: Bytes per pixel of a particle image: float32, or float16 (``output_f16``).
FLOAT32_BYTES = 4
FLOAT16_BYTES = 2
#: Job type that writes motion-corrected micrographs; job type of both extractions.
MOTION_JOB = "patch_motion_correction_multi"
EXTRACT_JOB = "extract_micrographs_multi"


@dataclass(frozen=True)
class DataSize:
    """What Validate measured under the data prefix: every object's bytes, how many objects, and
    how many of them the manifest's ``input.glob`` matches (the movies or micrographs)."""

    bytes: int
    objects: int
    files: int


@dataclass(frozen=True)
class StorageInputs:
    """Everything the model reads; :func:`inputs_for_manifest` and :func:`inputs_for_profile` fill it."""

    data_bytes: int
    exposures: int
    writes_micrographs: bool
    micrograph_bytes: int
    particles: int
    extract_box_px: int
    extract_pixel_bytes: int
    reextract_box_px: int | None
    reextract_pixel_bytes: int
    reextract_fraction: float
    extract_seconds: float
    basis: str


@dataclass(frozen=True)
class StorageLine:
    """One thing the file system holds: what, its bytes, and how they were counted."""

    what: str
    bytes: int
    basis: str


@dataclass(frozen=True)
class StoragePlan:
    """The FSx file system a run needs."""

    lines: tuple[StorageLine, ...]
    headroom: float
    need_gib: int
    capacity_gib: int
    throughput_mb_per_tib: int
    throughput_rule: str
    deployment_type: str = DEPLOYMENT_TYPE

    @property
    def modelled_bytes(self) -> int:
        return sum(line.bytes for line in self.lines)

    @property
    def capacity_tib(self) -> float:
        return self.capacity_gib / 1024


def micrograph_bytes(megabytes: float) -> int:
    """Bytes of one motion-corrected micrograph of ``megabytes`` MB."""
    return round(megabytes * MB)


def particle_bytes(box_px: int, *, float16: bool = False) -> int:
    """Bytes of one particle image of ``box_px`` × ``box_px`` pixels (float32, or float16)."""
    return box_px * box_px * (FLOAT16_BYTES if float16 else FLOAT32_BYTES)


def fsx_capacity_gib(need_gib: float) -> int:
    """The smallest ``PERSISTENT_2`` capacity holding ``need_gib``: 1200, or a multiple of 2400."""
    if need_gib <= SMALLEST_GIB:
        return SMALLEST_GIB
    return math.ceil(need_gib / STEP_GIB) * STEP_GIB


def _stored_box(stage: PlannedStage) -> int:
    """The box an extraction job stores: ``bin_size_pix`` when it Fourier-crops, else its box."""
    box = int(stage.params.get("box_size_pix") or 256)
    binned = stage.params.get("bin_size_pix")
    return int(binned) if binned else box


def _pixel_bytes(stage: PlannedStage) -> int:
    return FLOAT16_BYTES if stage.params.get("output_f16") else FLOAT32_BYTES


def inputs_for_manifest(
    manifest: Manifest, stages: Sequence[PlannedStage], data: DataSize | None, profile: Profile
) -> StorageInputs:
    """The model's inputs for a run: the measured data (``data``; None: the profile's dataset), the
    planned jobs' boxes and float16 choice, and the manifest's ``storage`` hints, else ``profile``'s."""
    hints = manifest.storage
    extractions = [s for s in stages if s.job_type == EXTRACT_JOB]
    first = extractions[0] if extractions else None
    again = extractions[1] if len(extractions) > 1 else None
    if data is not None:
        data_bytes = data.bytes
        exposures = data.files or manifest.input.expected_files or data.objects
        basis = "measured under the data prefix"
    else:
        data_bytes = round(profile.size_tb * 10**12)
        exposures = manifest.input.expected_files or profile.movies
        basis = f"the {profile.name} dataset's size (data prefix not measured)"
    return StorageInputs(
        data_bytes=data_bytes,
        exposures=exposures,
        writes_micrographs=any(s.job_type == MOTION_JOB for s in stages),
        micrograph_bytes=micrograph_bytes(hints.micrograph_mb or profile.storage.micrograph_mb),
        particles=hints.expected_particles or profile.particles,
        extract_box_px=_stored_box(first) if first else profile.storage.box_binned_px,
        extract_pixel_bytes=_pixel_bytes(first) if first else FLOAT32_BYTES,
        reextract_box_px=_stored_box(again) if again else None,
        reextract_pixel_bytes=_pixel_bytes(again) if again else FLOAT32_BYTES,
        reextract_fraction=hints.reextract_fraction or profile.storage.reextract_fraction,
        extract_seconds=profile.minutes.get("extract", 0.0) * 60,
        basis=basis,
    )


def inputs_for_profile(profile: Profile) -> StorageInputs:
    """The model's inputs for a white-paper dataset alone (estimates without a manifest)."""
    return StorageInputs(
        data_bytes=round(profile.size_tb * 10**12),
        exposures=profile.movies,
        writes_micrographs="motion" in profile.minutes,
        micrograph_bytes=micrograph_bytes(profile.storage.micrograph_mb),
        particles=profile.particles,
        extract_box_px=profile.storage.box_binned_px,
        extract_pixel_bytes=FLOAT32_BYTES,
        reextract_box_px=profile.storage.box_px if "reextract" in profile.minutes else None,
        reextract_pixel_bytes=FLOAT32_BYTES,
        reextract_fraction=profile.storage.reextract_fraction,
        extract_seconds=profile.minutes.get("extract", 0.0) * 60,
        basis=f"the {profile.name} dataset (white paper)",
    )


def _lines(i: StorageInputs) -> list[StorageLine]:
    lines = [StorageLine("raw data", i.data_bytes, i.basis)]
    if i.writes_micrographs:
        lines.append(
            StorageLine(
                "motion-corrected micrographs",
                i.exposures * MICROGRAPHS_PER_MOVIE * i.micrograph_bytes,
                f"{i.exposures:,} movies × {MICROGRAPHS_PER_MOVIE} × {i.micrograph_bytes / MB:.1f} MB",
            )
        )
    lines.append(
        StorageLine(
            "exposure side files",
            i.exposures * PER_EXPOSURE_BYTES,
            f"{i.exposures:,} × {PER_EXPOSURE_BYTES / MB:.0f} MB",
        )
    )
    per = i.extract_box_px**2 * i.extract_pixel_bytes
    lines.append(
        StorageLine(
            "particle stacks (extraction)",
            i.particles * per,
            f"{i.particles:,} × {i.extract_box_px}² px × {i.extract_pixel_bytes} B",
        )
    )
    if i.reextract_box_px:
        again = round(i.particles * i.reextract_fraction)
        lines.append(
            StorageLine(
                "particle stacks (re-extraction)",
                again * i.reextract_box_px**2 * i.reextract_pixel_bytes,
                f"{again:,} × {i.reextract_box_px}² px × {i.reextract_pixel_bytes} B",
            )
        )
    return lines


def _throughput(i: StorageInputs, lines: Sequence[StorageLine], capacity_gib: int) -> tuple[int, str]:
    """The smallest tier that moves the extraction's bytes (micrographs read, particles written) in
    its white-paper time on a file system of ``capacity_gib``."""
    if i.extract_seconds <= 0:
        return THROUGHPUT_TIERS[0], "no extraction time to size for: the smallest tier"
    read = i.exposures * i.micrograph_bytes
    written = next(line.bytes for line in lines if line.what == "particle stacks (extraction)")
    mb_per_s = (read + written) / MB / i.extract_seconds
    per_tib = mb_per_s / (capacity_gib * GIB / TIB)
    tier = next((t for t in THROUGHPUT_TIERS if t >= per_tib), THROUGHPUT_TIERS[-1])
    return tier, (
        f"extraction moves {(read + written) / GIB:,.0f} GiB in {i.extract_seconds / 60:.0f} min"
        f" ({mb_per_s:,.0f} MB/s, {per_tib:,.0f} MB/s/TiB of {capacity_gib:,} GiB): {tier} MB/s/TiB"
    )


def plan_storage(
    inputs: StorageInputs, *, headroom: float = HEADROOM, throughput: int | None = None
) -> StoragePlan:
    """The file system for ``inputs``; ``throughput``: the stack's fixed tier (None: the rule)."""
    lines = _lines(inputs)
    need = math.ceil(sum(line.bytes for line in lines) * (1 + headroom) / GIB)
    capacity = fsx_capacity_gib(need)
    if throughput is None:
        tier, rule = _throughput(inputs, lines, capacity)
    else:
        if throughput not in THROUGHPUT_TIERS:
            raise ValueError(f"FSx throughput must be one of {THROUGHPUT_TIERS} MB/s/TiB, not {throughput}")
        tier, rule = throughput, f"fixed by the stack (FsxThroughputPerTiB = {throughput})"
    return StoragePlan(
        lines=tuple(lines),
        headroom=headroom,
        need_gib=need,
        capacity_gib=capacity,
        throughput_mb_per_tib=tier,
        throughput_rule=rule,
    )


def check_limit(plan: StoragePlan, max_tib: float) -> None:
    """:class:`StorageLimitError` when the plan's capacity is above the stack's ``MaxFsxTiB``."""
    if plan.capacity_gib > max_tib * 1024:
        raise StorageLimitError(
            f"storage: the run needs an FSx file system of {plan.capacity_gib:,} GiB"
            f" ({plan.need_gib:,} GiB modelled with headroom), above this stack's MaxFsxTiB of"
            f" {max_tib:g} TiB"
        )


def plan_for_manifest(
    manifest: Manifest,
    stages: Sequence[PlannedStage],
    data: DataSize | None,
    *,
    throughput: int | None = None,
) -> StoragePlan:
    """The file system a manifest's run needs (Validate and ``cryopilot cluster-config`` both use
    this): its planned ``stages``, the measured ``data`` (None: the preset's white-paper dataset) and
    the preset's white-paper dataset for what neither gives."""
    profile = get_profile(PROFILE_FOR_PRESET.get(manifest.preset_name, "cgrp"))
    return plan_storage(inputs_for_manifest(manifest, stages, data, profile), throughput=throughput)


def storage_record(plan: StoragePlan, data: DataSize | None) -> dict[str, object]:
    """What the run record keeps of the model (``storage``): the measured data, every line, the
    need, the capacity and the throughput rule."""
    return {
        "data_bytes": None if data is None else data.bytes,
        "data_objects": None if data is None else data.objects,
        "data_files": None if data is None else data.files,
        "lines": [{"what": x.what, "bytes": x.bytes, "basis": x.basis} for x in plan.lines],
        "headroom": plan.headroom,
        "need_gib": plan.need_gib,
        "capacity_gib": plan.capacity_gib,
        "deployment_type": plan.deployment_type,
        "throughput_mb_per_tib": plan.throughput_mb_per_tib,
        "throughput_rule": plan.throughput_rule,
    }
