"""The cryoSPARC stand-in's outputs: what a finished job produces (counts, statistics, datasets
and small real files), as plausible and as repeatable (seeded) as the tests need.
"""

from __future__ import annotations

import fnmatch
import io
import posixpath
import random
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from cryopilot.domain.presets import JobTypeSpec
from cryosparc.dataset import Dataset

from cryopilot_sim.cryosparc_bytes import EXTRACTED_SHARE
from cryopilot_sim.cryosparc_jobs import SimJob, SimProject


def _mrc(data: np.ndarray, psize: float) -> bytes:
    """``data`` (nz, ny, nx) as a small, valid MRC2014 file (mode 2, float32)."""
    nz, ny, nx = data.shape
    header = bytearray(1024)
    struct.pack_into("<3i", header, 0, nx, ny, nz)
    struct.pack_into("<i", header, 12, 2)
    struct.pack_into("<3i", header, 28, nx, ny, nz)
    struct.pack_into("<3f", header, 40, nx * psize, ny * psize, nz * psize)
    struct.pack_into("<3f", header, 52, 90.0, 90.0, 90.0)
    struct.pack_into("<3i", header, 64, 1, 2, 3)
    struct.pack_into("<3f", header, 76, float(data.min()), float(data.max()), float(data.mean()))
    header[208:212] = b"MAP "
    header[212:216] = bytes([0x44, 0x44, 0, 0])
    return bytes(header) + data.tobytes()


def _mrc_bytes(n: int, psize: float, seed: int) -> bytes:
    """A small volume: a Gaussian blob with noise."""
    rng = np.random.default_rng(seed)
    grid = np.indices((n, n, n)).astype(np.float32) - (n - 1) / 2
    data = np.exp(-(grid**2).sum(axis=0) / (2 * (n / 5) ** 2)) + 0.05 * rng.standard_normal((n, n, n))
    return _mrc(data.astype(np.float32), psize)


def _stack_bytes(n: int, count: int, psize: float, seed: int) -> bytes:
    """A stack of ``count`` small 2D images (class averages): one MRC file, ``nz`` = ``count``."""
    rng = np.random.default_rng(seed)
    grid = np.indices((n, n)).astype(np.float32) - (n - 1) / 2
    blob = np.exp(-(grid**2).sum(axis=0) / (2 * (n / 5) ** 2))
    data = np.stack([blob + 0.05 * rng.standard_normal((n, n)) for _ in range(count)]).astype(np.float32)
    return _mrc(data, psize)


#: Particles the template picker finds, per particle of the profile. The blob picker's are 1.6 (its
#: many false picks); picks from good templates are fewer and cleaner. A stand-in figure: no source
#: gives the ratio.
TEMPLATE_PICKS_PER_PARTICLE = 1.25
#: Images the stand-in reports for an imported template stack when it makes the file up (without a
#: file system; no decision reads the number).
IMPORTED_TEMPLATES = 12
#: Projections Create Templates makes of its volume in the stand-in (the job's own default count is
#: not in a public source; no decision reads the number).
PROJECTED_TEMPLATES = 20


#: The particle result slots each job type computes and writes into its particle outputs' main
#: files; the slots its particle inputs carry that it does not write are passed through as-is, into
#: ``<job>/<job>_passthrough_<output>.cs`` (``OutputResult.passthrough``, cryosparc-tools'
#: models/job_spec.py). Sources: cryosparc-tools' docs/guides/jobs.ipynb (an Extract job's files
#: include ``extracted_particles.cs`` and ``J96_passthrough_particles.cs``; its loaded particles
#: have blob and location fields beside passed-through ctf and pick_stats; an Inspect Picks output
#: writes location and passes ctf and pick_stats through) and tests/conftest.py (an ab-initio
#: ``particles_class_0`` output: blob and ctf written, location and pick_stats passed through, in
#: ``J1_passthrough_particles_class_0.cs``). The pickers', 2D classification's, Select 2D's and the
#: refinements' lists are the stand-in's, by what each job computes (Select 2D only keeps rows).
PARTICLE_SLOTS_WRITTEN: dict[str, tuple[str, ...]] = {
    "blob_picker_gpu": ("location", "pick_stats"),
    "template_picker_gpu": ("location", "pick_stats"),
    "extract_micrographs_multi": ("blob", "location"),
    "class_2D_new": ("blob", "alignments2D"),
    "select_2D": (),
    "homo_abinit": ("blob", "ctf", "alignments3D"),
    "hetero_refine": ("blob", "ctf", "alignments3D", "alignments_class_3D"),
    "nonuniform_refine_new": ("blob", "ctf", "alignments3D"),
}
#: The last iteration of the stand-in's refinement (its files are named J<n>_008_...).
REFINE_ITERATIONS = 8
#: Rows of a particle file the stand-in writes (its output counts the whole dataset's items).
PARTICLE_SAMPLE_ROWS = 200


def _image_rows(path: str, indices: range, psize: float | None = None) -> list[dict[str, Any]]:
    """One row per image of the stack at ``path`` (``blob/idx``: its index in the stack; with
    ``psize``, ``blob/psize_A``: its pixel size)."""
    extra = {} if psize is None else {"blob/psize_A": psize}
    return [{"blob/path": path, "blob/idx": i, "blob/shape": [16, 16], **extra} for i in indices]


def _result(slot: str, metafiles: list[str], num_items: int, *, passthrough: bool) -> dict[str, Any]:
    """One ``OutputResult`` (models/job_spec.py): a slot's file per version, the latest last."""
    return {
        "name": slot,
        "dtype": slot,
        "versions": list(range(len(metafiles))),
        "metafiles": list(metafiles),
        "num_items": [num_items] * len(metafiles),
        "passthrough": passthrough,
    }


def _slot_columns(job: SimJob, slot: str, rows: int) -> list[tuple[str, np.ndarray]]:
    """A few of a particle slot's fields (names as in cryosparc-tools' jobs.ipynb and conftest)."""
    idx = np.arange(rows, dtype=np.uint32)
    if slot == "blob":
        path = np.array([f"{job.uid}/extract/particles.mrc"] * rows, dtype=object)
        return [("blob/path", path), ("blob/idx", idx)]
    if slot == "location":
        half = np.full(rows, 0.5, dtype=np.float32)
        return [("location/micrograph_uid", idx.astype(np.uint64)), ("location/center_x_frac", half)]
    if slot == "alignments3D":
        return [("alignments3D/shift", np.zeros((rows, 2), dtype=np.float32))]
    if slot in ("alignments2D", "alignments_class_3D"):
        return [(f"{slot}/class", np.zeros(rows, dtype=np.uint32))]
    return [(f"{slot}/value", np.zeros(rows, dtype=np.float32))]  # ctf, pick_stats: one field


def _particle_file(job: SimJob, slots: list[str], rows: int) -> bytes:
    """A small .cs file with ``rows`` particles (uids 1..rows in every file of the job) and ``slots``."""
    columns: list[tuple[str, np.ndarray]] = [("uid", np.arange(1, rows + 1, dtype=np.uint64))]
    for slot in slots:
        columns += _slot_columns(job, slot, rows)
    buf = io.BytesIO()
    Dataset(columns).save(buf)
    return buf.getvalue()


class JobOutputs:
    """What finished jobs produce (a mixin of :class:`~cryopilot_sim.cryosparc_standin.CryoSparcStandIn`)."""

    profile: dict[str, Any]
    profile_name: str
    seed: int
    #: fnmatch patterns of imported reference files that are another protein than the dataset's
    #: (:meth:`~cryopilot_sim.cryosparc_standin.CryoSparcStandIn.wrong_reference`).
    other_protein_paths: list[str]
    #: How the master and its workers read a file of the cluster's FSx (a path below /fsx; None: no
    #: such file), or None. When set, Import 3D Volumes and Import Templates read the file they are
    #: given, as a real instance does: a file missing or not MRC fails the job (cryoSPARC's own
    #: messages for these are not in a public source; these are the stand-in's), and the import
    #: holds that file's bytes, box and image count. When None, they make a small file up (tests of
    #: the agent alone, without a file system). See :func:`cryopilot_sim.fsx_standin.lazy_reader`.
    read_fsx: Callable[[str], bytes | None] | None

    if TYPE_CHECKING:

        def _project(self, project_uid: str) -> SimProject: ...

        def _num_classes(self, job: SimJob) -> int: ...

        def _output_names(self, job: SimJob) -> dict[str, str]: ...

        def _finish(self, job: SimJob, status: str, at: float) -> None: ...

        def _release_node(self, job: SimJob, at: float) -> None: ...

        def _spec(self, job_type: str) -> JobTypeSpec: ...

    # ---------------------------------------------------------------- outputs

    def _rng(self, job: SimJob) -> random.Random:
        return random.Random(f"{self.seed}:{self.profile_name}:{job.project_uid}:{job.uid}:{job.type}")

    def _input_count(self, job: SimJob, input_name: str, p: SimProject | None = None) -> int:
        p = p or self._project(job.project_uid)
        total = 0
        for c in job.connections:
            if c.input == input_name:
                src = p.jobs.get(c.job_uid)
                if src is not None:
                    total += int(src.outputs.get(c.output, {}).get("num_items", 0))
        return total

    def _put_output(
        self,
        job: SimJob,
        name: str,
        num_items: int,
        *,
        stats: dict[str, Any] | None = None,
        rows: list[dict[str, Any]] | None = None,
        metafiles: list[str] | None = None,
    ) -> None:
        """Record an output of ``num_items`` items. ``rows``: what ``load_output`` answers for it;
        ``metafiles``: its main file per version, the latest last (default: one version,
        ``<job>/<job>_<name>.cs``)."""
        otype = self._output_names(job)[name]
        if rows is not None:
            job.datasets[name] = rows
        files = metafiles or [f"{job.uid}/{job.uid}_{name}.cs"]
        if otype == "particle":
            results = self._particle_results(job, name, num_items, files)
        else:
            result_name = {"exposure": "micrograph_blob", "volume": "map", "mask": "mask"}.get(otype, "blob")
            results = [_result(result_name, files, num_items, passthrough=False)]
        job.outputs[name] = {
            "type": otype,
            "title": name.replace("_", " ").capitalize(),
            "results": results,
            "num_items": num_items,
            "summary": {},
            "latest_summary_stats": stats or {},
        }

    def _input_particle_slots(self, job: SimJob, p: SimProject) -> list[str]:
        """The result slots of the particle outputs connected to the job's particle inputs."""
        spec = self._spec(job.type)
        slots: list[str] = []
        for c in job.connections:
            source = p.jobs.get(c.job_uid)
            if spec.inputs.get(c.input, {}).get("type") != "particle" or source is None:
                continue
            for result in source.outputs.get(c.output, {}).get("results", []):
                if result["name"] not in slots:
                    slots.append(result["name"])
        return slots

    def _particle_results(
        self, job: SimJob, name: str, num_items: int, main_files: list[str]
    ) -> list[dict[str, Any]]:
        """A particles output's results: the slots the job writes, in its main file (one per
        version), then the slots its input carries that it does not write, passed through in
        ``<job>/<job>_passthrough_<output>.cs`` (:data:`PARTICLE_SLOTS_WRITTEN`). The latest main
        file and the passthrough file are written to the project, a sample of rows each."""
        p = self._project(job.project_uid)
        written = list(PARTICLE_SLOTS_WRITTEN.get(job.type, ()))
        passed = [slot for slot in self._input_particle_slots(job, p) if slot not in written]
        results = [_result(slot, main_files, num_items, passthrough=False) for slot in written]
        rows = min(num_items, PARTICLE_SAMPLE_ROWS)
        if written:
            p.files[main_files[-1]] = _particle_file(job, written, rows)
        if passed:
            passthrough = f"{job.uid}/{job.uid}_passthrough_{name}.cs"
            results += [_result(slot, [passthrough], num_items, passthrough=True) for slot in passed]
            p.files[passthrough] = _particle_file(job, passed, rows)
        return results

    def _prepare_select(self, p: SimProject, job: SimJob) -> None:
        src = next((p.jobs[c.job_uid] for c in job.connections if c.input == "templates"), None)
        job.class_info = [dict(c, selected=False) for c in (src.class_info if src else [])]

    def _class2d_info(self, job: SimJob, particles: int) -> list[dict[str, Any]]:
        rng = self._rng(job)
        k = int(job.params.get("class2D_K", 50))
        weights = []
        for i in range(k):
            good = rng.random() < 0.45
            weights.append((i, good, rng.uniform(1.0, 3.0) if good else rng.uniform(0.2, 1.5)))
        total_w = sum(w for _, _, w in weights)
        info = []
        for i, good, w in weights:
            res = rng.uniform(4.2, 9.5) if good else rng.uniform(13.0, 32.0)
            info.append(
                {"class_idx": i, "res_A": round(res, 2), "num_particles_total": int(particles * w / total_w)}
            )
        return info

    def _is_other_protein(self, path: str) -> bool:
        return any(fnmatch.fnmatchcase(path, pattern) for pattern in self.other_protein_paths)

    def _lineage(self, job: SimJob, p: SimProject) -> None:
        """What the job read: an imported volume (``seeded``), another protein (``other_protein``)."""
        parents = [p.jobs.get(c.job_uid) for c in job.connections]
        job.seeded = any(par.seeded for par in parents if par is not None)
        job.other_protein = any(par.other_protein for par in parents if par is not None)

    def _import_source(self, job: SimJob) -> str:
        key = "volume_blob_path" if job.type == "import_volumes" else "templates_blob_path"
        return str(job.params.get(key, ""))

    def _read_import(self, job: SimJob) -> tuple[bytes, tuple[int, int, int]] | str | None:
        """The file an import job reads and its size (nx, ny, nz); a one-line problem when it cannot
        be read; None when the stand-in has no file system (:attr:`read_fsx`)."""
        if self.read_fsx is None:
            return None
        source = self._import_source(job)
        data = self.read_fsx(source)
        if data is None:
            return f"Could not open {source}: no such file"
        if len(data) < 1024:
            return f"{source} is not an MRC file ({len(data)} bytes)"
        order = ">" if data[212:214] == b"\x11\x11" else "<"
        nx, ny, nz, mode = struct.unpack_from(f"{order}4i", data, 0)
        (extended,) = struct.unpack_from(f"{order}i", data, 92)  # NSYMBT: extended header bytes
        item = {0: 1, 1: 2, 2: 4, 6: 2, 12: 2}.get(mode)
        size = 1024 + max(0, extended) + nx * ny * nz * (item or 0)
        if item is None or min(nx, ny, nz) <= 0 or len(data) < size:
            return f"{source} is not an MRC file this reads (mode {mode}, {nx} x {ny} x {nz})"
        return data, (nx, ny, nz)

    def _complete_import(
        self, job: SimJob, p: SimProject, read: tuple[bytes, tuple[int, int, int]] | None
    ) -> None:
        """Import 3D Volumes / Import Templates: the file (``read``, or one made up), linked into
        the job's directory, at the pixel size the job is given."""
        source = self._import_source(job)
        job.other_protein = self._is_other_protein(source)
        if job.type == "import_volumes":
            psize = float(job.params.get("volume_psize", 1.0))
            path = f"{job.uid}/imported/{posixpath.basename(source) or 'volume.mrc'}"
            p.files[path] = read[0] if read else _mrc_bytes(16, psize, seed=job.num)
            job.seeded = True
            shape = list(read[1][::-1]) if read else [16, 16, 16]
            volume = {"map/path": path, "map/shape": shape, "map/psize_A": psize}
            self._put_output(job, "imported_volume_1", 1, rows=[volume])
        else:
            psize = float(job.params.get("templates_psize", 1.0))
            path = f"{job.uid}/imported/{posixpath.basename(source) or 'templates.mrcs'}"
            count = read[1][2] if read else IMPORTED_TEMPLATES
            p.files[path] = read[0] if read else _stack_bytes(16, count, psize, seed=job.num)
            rows = _image_rows(path, range(count), psize)
            self._put_output(job, "imported_templates", count, rows=rows)

    def _complete_projections(self, job: SimJob, p: SimProject) -> None:
        """Create Templates: projections of its input volume (output ``templates``, template type,
        as CryoWizard reads it), at the volume's pixel size; what the volume was (another protein)
        carries over, as for any job (``_lineage``)."""
        volume = next((p.jobs.get(c.job_uid) for c in job.connections if c.input == "volume"), None)
        psize = float(volume.params.get("volume_psize", 1.0)) if volume is not None else 1.0
        path = f"{job.uid}/templates.mrcs"
        p.files[path] = _stack_bytes(16, PROJECTED_TEMPLATES, psize, seed=job.num)
        self._put_output(
            job, "templates", PROJECTED_TEMPLATES, rows=_image_rows(path, range(PROJECTED_TEMPLATES))
        )

    def _complete(self, job: SimJob, at: float) -> None:
        read = self._read_import(job) if job.type in ("import_volumes", "import_templates") else None
        if isinstance(read, str):
            job.error = read
            self._finish(job, "failed", at)
            return
        self._release_node(job, at)
        p = self._project(job.project_uid)
        self._lineage(job, p)
        prof = self.profile
        n_mics = int(prof["movies"])
        psize = 1.0
        t = job.type
        if t in ("import_volumes", "import_templates"):
            self._complete_import(job, p, read)
        elif t == "create_templates":
            self._complete_projections(job, p)
        elif t == "template_picker_gpu":
            self._put_output(job, "micrographs", self._input_count(job, "micrographs", p))
            self._put_output(job, "particles", int(prof["particles"] * TEMPLATE_PICKS_PER_PARTICLE))
        elif t == "import_movies":
            self._put_output(job, "imported_movies", n_mics)
        elif t == "import_micrographs":
            self._put_output(job, "imported_micrographs", n_mics)
        elif t == "patch_motion_correction_multi":
            self._put_output(job, "micrographs", self._input_count(job, "movies", p))
        elif t == "patch_ctf_estimation_multi":
            self._put_output(job, "exposures", self._input_count(job, "exposures", p))
        elif t == "blob_picker_gpu":
            mics = self._input_count(job, "micrographs", p)
            self._put_output(job, "micrographs", mics)
            self._put_output(job, "particles", int(prof["particles"] * 1.6))
        elif t == "extract_micrographs_multi":
            self._put_output(job, "micrographs", self._input_count(job, "micrographs", p))
            self._put_output(job, "particles", int(self._input_count(job, "particles", p) * EXTRACTED_SHARE))
        elif t == "class_2D_new":
            n = self._input_count(job, "particles", p)
            job.class_info = self._class2d_info(job, n)
            self._put_output(job, "particles", n)
            # the class averages: one MRC stack the job writes (J<n>_020_class_averages.mrc, as
            # cryoSPARC names its last iteration's), each row of the output one image of it
            # at the pixel size of the particles classified (MRC header and blob/psize_A)
            averages = f"{job.uid}/{job.uid}_020_class_averages.mrc"
            at_A = self._particle_pixel_size(job, p)
            p.files[averages] = _stack_bytes(16, len(job.class_info), at_A, seed=job.num)
            count = len(job.class_info)
            self._put_output(job, "class_averages", count, rows=_image_rows(averages, range(count), at_A))
        elif t == "select_2D":
            chosen = [c for c in job.class_info if c.get("selected")]
            if not chosen:
                job.error = "No classes selected"
                self._finish(job, "failed", at)
                return
            self._put_output(job, "particles_selected", sum(c["num_particles_total"] for c in chosen))
            # Select 2D passes the 2D job's class averages on: the rows of the chosen classes, one
            # each (the output's items are the selected classes)
            src = next((p.jobs[c.job_uid] for c in job.connections if c.input == "templates"), None)
            from_2d = src.datasets.get("class_averages") if src else None
            chosen_idx = {int(c["class_idx"]) for c in chosen}
            rows = [row for row in from_2d or [] if int(row["blob/idx"]) in chosen_idx]
            self._put_output(job, "templates_selected", len(chosen), rows=rows if from_2d else None)
        elif t in ("homo_abinit", "hetero_refine"):
            self._complete_classes(job, p)
        elif t == "nonuniform_refine_new":
            self._complete_refinement(job, p, psize)
        job.status = "completed"
        job.completed_at = at
        job.end_at = None

    def _particle_pixel_size(self, job: SimJob, p: SimProject) -> float:
        """The pixel size of a job's particles, from its lineage: the imported movies' or
        micrographs' ``psize_A``, times ``box_size_pix / bin_size_pix`` of each extraction on the way
        (Fourier-cropping a box to ``bin_size_pix`` coarsens its pixel by that ratio); 1.0 without one.
        Only the class averages use it, as cryoSPARC writes an MRC file with its pixel size in the
        header's cell lengths (cryosparc-tools' mrc.py ``write``: XLEN = psize x NX); the stand-in's
        maps keep their fixed pixel size."""
        factor, seen = 1.0, 0
        while job is not None and seen < 64:
            seen += 1
            if job.type in ("import_movies", "import_micrographs"):
                return round(float(job.params.get("psize_A", 1.0)) * factor, 6)
            wanted = "particles"
            if job.type == "extract_micrographs_multi":
                wanted = "micrographs"
                box = job.params.get("box_size_pix")
                binned = job.params.get("bin_size_pix") or box
                if isinstance(box, int) and isinstance(binned, int) and binned > 0:
                    factor *= box / binned
            link = next((c for c in job.connections if c.input == wanted), None)
            link = link or (job.connections[0] if job.connections else None)
            job = p.jobs.get(link.job_uid) if link is not None else None  # type: ignore[assignment]
        return 1.0

    def _class_model(self, job: SimJob, k: int) -> tuple[list[float], list[float]]:
        """(weight of its share of the particles, FSC resolution) of each of the job's ``k`` classes.

        Unseeded (ab initio, hetero from ab-initio volumes): one class at random is the good one.
        Seeded by an imported reference (the repeat preset: class 0 from the reference, the others
        from decoys): class 0 is the good one and keeps most particles. With a reference of another
        protein (:meth:`~cryopilot_sim.cryosparc_standin.CryoSparcStandIn.wrong_reference`) no class
        is good: class 0 keeps few particles and every class stays at junk resolutions. Real
        cryoSPARC's outcome with a wrong reference is not specified anywhere; this is a model of it.
        """
        rng = self._rng(job)
        final = float(self.profile["resolution_A"])
        if job.type == "hetero_refine" and job.seeded:
            if job.other_protein:
                shares = [rng.uniform(0.03, 0.08)] + [rng.uniform(0.5, 1.0) for _ in range(k - 1)]
                rest = sum(shares[1:]) or 1.0
                shares = [shares[0]] + [(1 - shares[0]) * s / rest for s in shares[1:]]
                return shares, [rng.uniform(10.0, 18.0) for _ in range(k)]
            top = rng.uniform(0.6, 0.8) if k > 1 else 1.0
            others = [rng.uniform(0.5, 1.0) for _ in range(k - 1)]
            rest = sum(others) or 1.0
            shares = [top] + [(1 - top) * s / rest for s in others]
            return shares, [final * rng.uniform(1.25, 1.6)] + [rng.uniform(9.0, 16.0) for _ in others]
        good = rng.randrange(k)
        weights = [rng.uniform(0.1, 0.3) for _ in range(k)]
        weights[good] = rng.uniform(0.9, 1.6)
        res = [final * rng.uniform(1.25, 1.6) if i == good else rng.uniform(6.5, 14.0) for i in range(k)]
        return weights, res

    def _complete_classes(self, job: SimJob, p: SimProject) -> None:
        k = self._num_classes(job)
        n = self._input_count(job, "particles", p)
        shares, resolutions = self._class_model(job, k)
        total = sum(shares)
        for i in range(k):
            count = int(n * shares[i] / total)
            res = resolutions[i]
            stats: dict[str, Any] = {}
            if job.type == "hetero_refine":
                stats = {"fsc_info_best": {"radwn_final_A": round(res, 3)}, "version": 0}
            self._put_output(job, f"particles_class_{i}", count)
            # each class volume is a map on disk, as cryoSPARC writes it (what a partial export takes)
            path = f"{job.uid}/{job.uid}_class_{i:02d}_final_volume.mrc"
            p.files[path] = _mrc_bytes(16, 1.0, seed=job.num * 100 + i)
            volume = {"map/path": path, "map/shape": [16, 16, 16], "map/psize_A": 1.0}
            self._put_output(job, f"volume_class_{i}", 1, stats=stats, rows=[volume])
        if "particles_all_classes" in self._output_names(job):
            self._put_output(job, "particles_all_classes", n)
        if "volumes_all_classes" in self._output_names(job):
            self._put_output(job, "volumes_all_classes", k)

    def _complete_refinement(self, job: SimJob, p: SimProject, psize: float) -> None:
        rng = self._rng(job)
        n = self._input_count(job, "particles", p)
        final = float(self.profile["resolution_A"])
        if job.other_protein:  # refined from another protein's map, on junk particles (a model)
            res = round(max(2.5 * final, 7.5) + rng.uniform(-0.3, 0.3), 3)
        else:
            res = round(final + rng.uniform(-0.04, 0.04), 3)
        box = 32
        radwns = list(range(box // 2))
        nyq = 2 * psize * (box / 2) / (box / 2)
        fsc = [round(1.0 / (1.0 + (r / (box / 2 * nyq / res)) ** 8), 4) for r in radwns]
        fsc_info = {
            "N": box,
            "psize": psize,
            "radwns": radwns,
            "fsc_nomask": [round(v * 0.93, 4) for v in fsc],
            "fsc_tightmask": fsc,
            "radwn_final_A": res,
            "radwn_nomask_A": round(res * 1.18, 3),
        }
        stats = {
            "fsc_info": dict(fsc_info),
            "fsc_info_best": fsc_info,
            "extent": 0.95,
            "cfar": 0.78,
            "guinier_bfactor": -85.0,
            "processed_fraction": 1.0,
            "version": REFINE_ITERATIONS,
        }
        pre = f"{job.uid}/{job.uid}_{REFINE_ITERATIONS:03d}"
        maps = {
            "map": f"{pre}_volume_map.mrc",
            "map_sharp": f"{pre}_volume_map_sharp.mrc",
            "map_half_A": f"{pre}_volume_map_half_A.mrc",
            "map_half_B": f"{pre}_volume_map_half_B.mrc",
            "mask_refine": f"{pre}_volume_mask_refine.mrc",
            "mask_fsc": f"{pre}_volume_mask_fsc.mrc",
            "mask_fsc_auto": f"{pre}_volume_mask_fsc_auto.mrc",
        }
        volume: dict[str, Any] = {}
        for i, (slot, path) in enumerate(maps.items()):
            p.files[path] = _mrc_bytes(16, psize, seed=job.num * 10 + i)
            volume[f"{slot}/path"] = path
            volume[f"{slot}/shape"] = [16, 16, 16]
            volume[f"{slot}/psize_A"] = psize
        # one particles file per iteration, the last the final one (tools' conftest lists each
        # iteration's file as a version); only the final one's bytes are written
        iterations = [f"{job.uid}/{job.uid}_{i:03d}_particles.cs" for i in range(REFINE_ITERATIONS + 1)]
        self._put_output(job, "particles", n, metafiles=iterations)
        self._put_output(job, "particles_rejected", 0)
        self._put_output(job, "volume", 1, stats=stats, rows=[volume], metafiles=[f"{pre}_volume.cs"])
        self._put_output(job, "mask", 1)
        self._put_output(job, "mask_fsc", 1)
        self._put_output(job, "mask_fsc_auto", 1)
