"""The bytes the cryoSPARC stand-in's jobs write, onto the cluster's simulated file systems.

Sizes per item are the storage model's (:mod:`cryopilot.domain.storage`), counts are the job's own
(its inputs' items, as the stand-in's outputs count them), places are the real ones: the raw data at
the import job's ``blob_paths`` (``/fsx/data``, loaded lazily from S3 by the data repository
association the first time a job reads the files: motion correction for movies, CTF estimation for
micrographs), everything else in the project's directory (``/fsx/projects/...``, or ``/shared/...``
for a project made there). Per job:

* Patch Motion Correction: the dataset's bytes (``size_tb`` of the profile) land on the data volume;
  ``movies × 2 × micrograph bytes`` (``storage.micrograph_mb``) and ``movies × 4 MB`` of side files
  go to the project;
* Patch CTF Estimation of imported micrographs: the dataset lands, and ``micrographs × 4 MB`` of side
  files go to the project;
* Extract From Micrographs: ``particles × box² × 4`` bytes (2 with ``output_f16``), at the box it
  stores (``bin_size_pix`` if set, else ``box_size_pix``);
* every other job writes little beside these (maps, metadata): nothing is counted for it.

A job whose bytes do not fit fills the volume and fails part-way, as cryoSPARC does when the disk is
full: job status ``failed``, error ``OSError: [Errno 28] No space left on device: '<path>'``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cryopilot.domain import storage as model

from cryopilot_sim.cryosparc_jobs import SimJob, SimProject
from cryopilot_sim.filesystems import NO_SPACE, Volumes

#: Share of the picked particles an extraction keeps (the stand-in's outputs use the same figure).
EXTRACTED_SHARE = 0.985
#: Where the data is when no import job names it.
DEFAULT_DATA_DIR = "/fsx/data"


class JobBytes:
    """The bytes jobs write (a mixin of :class:`~cryopilot_sim.cryosparc_standin.CryoSparcStandIn`)."""

    profile: dict[str, Any]
    #: The cluster's volumes; None: bytes are not modelled (every write fits).
    volumes: Volumes | None
    _data_loaded: set[str]

    if TYPE_CHECKING:

        def _input_count(self, job: SimJob, input_name: str, p: SimProject | None = None) -> int: ...

    def _data_dir(self, p: SimProject) -> str:
        for job in p.jobs.values():
            path = job.params.get("blob_paths")
            if job.type.startswith("import_") and isinstance(path, str) and "/" in path:
                return path.split("*", 1)[0].rsplit("/", 1)[0] or DEFAULT_DATA_DIR
        return DEFAULT_DATA_DIR

    def _lazy_load(self, p: SimProject) -> list[tuple[str, int]]:
        """The dataset's bytes, the first time a job reads the files of this data directory."""
        data_dir = self._data_dir(p)
        if data_dir in self._data_loaded:
            return []
        self._data_loaded.add(data_dir)
        return [(data_dir, round(float(self.profile["size_tb"]) * 10**12))]

    def _planned_writes(self, p: SimProject, job: SimJob) -> list[tuple[str, int]]:
        """(path, bytes) the job writes, in order."""
        out = f"{p.project_dir}/{job.uid}"
        side = model.PER_EXPOSURE_BYTES
        if job.type == "patch_motion_correction_multi":
            n = self._input_count(job, "movies", p)
            mic = model.micrograph_bytes(float(self.profile["storage"]["micrograph_mb"]))
            return [
                *self._lazy_load(p),
                (f"{out}/motioncorrected", n * model.MICROGRAPHS_PER_MOVIE * mic),
                (f"{out}/thumbnails", n * side),
            ]
        if job.type == "patch_ctf_estimation_multi":
            if any(j.type == "patch_motion_correction_multi" for j in p.jobs.values()):
                return []
            return [
                *self._lazy_load(p),
                (f"{out}/ctfestimated", self._input_count(job, "exposures", p) * side),
            ]
        if job.type == "extract_micrographs_multi":
            n = int(self._input_count(job, "particles", p) * EXTRACTED_SHARE)
            box = int(job.params.get("bin_size_pix") or job.params.get("box_size_pix") or 256)
            each = model.particle_bytes(box, float16=bool(job.params.get("output_f16")))
            return [(f"{out}/extract", n * each)]
        return []

    def _write_outputs(self, p: SimProject, job: SimJob) -> float | None:
        """Write the job's bytes; None when they fit, else the share of the job done when its volume
        filled up (the job's error is then set)."""
        if self.volumes is None:
            return None
        writes = self._planned_writes(p, job)
        total = sum(size for _, size in writes) or 1
        done = 0
        for path, size in writes:
            volume = self.volumes.for_path(path)
            if volume is None:
                done += size
                continue
            free = volume.free
            if not volume.write(path, size):
                job.error = f"OSError: {NO_SPACE}: '{path}'"
                return max(0.01, (done + free) / total)
            done += size
        return None
