"""The real agent, through the real cryosparc-tools client, against the cryoSPARC stand-in."""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import boto3
import numpy as np
import pytest
from cryopilot.domain.manifest import Manifest, manifest_from_dict
from cryopilot.domain.placement import plan
from cryopilot.protocol.agent import AgentFailure, ExportResult, KillResult, StatusResult, SubmitResult
from cryopilot.protocol.stage import PlannedStage
from cryopilot_agent.cli import _connect, encode_spec, main, settings_from_env
from cryopilot_agent.driver import FINISH_RETRY_SECONDS, FINISH_TIMEOUT_SECONDS, Driver
from cryopilot_sim.clock import VirtualClock
from cryopilot_sim.cryosparc_standin import CryoSparcStandIn, load_profiles
from cryopilot_sim.fsx_standin import lazy_reader
from cryosparc import mrc
from cryosparc.dataset import Dataset
from moto import mock_aws

from tests.conftest import cgrp_reference

EMAIL = "pilot@example.org"
PASSWORD = "not-a-real-password-42"
POLL_SECONDS = 1800.0


def movies_manifest(**pipeline: Any) -> Manifest:
    return manifest_from_dict(
        {
            "dataset": "CGRP-2026-11",
            "input": {"kind": "movies", "glob": "movies/*.tif"},
            "acquisition": {
                "pixel_size_A": 0.83,
                "voltage_kV": 300,
                "cs_mm": 2.7,
                "total_dose_e_per_A2": 60,
                "gain_reference": "gain.mrc",
            },
            "particle": {"diameter_A": 120},
            "pipeline": pipeline,
        }
    )


def spike_manifest() -> Manifest:
    return manifest_from_dict(
        {
            "dataset": "spike-fab",
            "input": {"kind": "micrographs", "glob": "mics/*.mrc"},
            "acquisition": {"pixel_size_A": 1.06, "voltage_kV": 300, "cs_mm": 2.7, "total_dose_e_per_A2": 50},
            "particle": {"diameter_A": 160},
            "symmetry": "C3",
        }
    )


class Agent:
    def __init__(self, base_url: str, clock: VirtualClock) -> None:
        self.clock = clock
        self.env = {
            "CRYOSPARC_BASE_URL": base_url,
            "CRYOSPARC_EMAIL": EMAIL,
            "CRYOSPARC_PASSWORD": PASSWORD,
            "CRYOPILOT_PROJECT_ROOT": "/fsx/projects",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def __call__(self, *argv: str) -> tuple[int, dict[str, Any], str]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = main(list(argv), self.env)
        text = out.getvalue()
        assert text.count("\n") == 1, f"expected exactly one JSON document, got {text!r}"
        assert PASSWORD not in text
        return rc, json.loads(text), text

    def submit(self, run: str, spec: PlannedStage) -> SubmitResult:
        rc, doc, text = self("submit", "--project", run, "--spec-b64", encode_spec(spec))
        assert rc == 0, doc
        return SubmitResult.model_validate_json(text)

    def status(self, run: str, *stages: str) -> StatusResult:
        argv = ["status", "--project", run]
        for s in stages:
            argv += ["--stage", s]
        rc, doc, text = self(*argv)
        assert rc == 0, doc
        return StatusResult.model_validate_json(text)

    def run_stage(self, run: str, spec: PlannedStage, *, max_polls: int = 200) -> StatusResult:
        """Submit a stage and poll it (advancing the simulated clock) until it leaves queued/running."""
        self.submit(run, spec)
        for _ in range(max_polls):
            st = self.status(run, spec.id)
            if st.stages[0].state not in ("queued", "running"):
                return st
            self.clock.advance(POLL_SECONDS)
        raise AssertionError(f"{spec.id} did not finish")


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
def standin(clock: VirtualClock) -> Iterator[CryoSparcStandIn]:
    with CryoSparcStandIn(clock, "cgrp", email=EMAIL, password=PASSWORD) as cs:
        yield cs


@pytest.fixture
def agent(standin: CryoSparcStandIn, clock: VirtualClock) -> Agent:
    return Agent(standin.base_url, clock)


def run_pipeline(agent: Agent, run: str, stages: list[PlannedStage]) -> dict[str, StatusResult]:
    results = {}
    for spec in stages:
        st = agent.run_stage(run, spec)
        assert st.stages[0].state == "completed", (spec.id, st.stages[0])
        results[spec.id] = st
    return results


@pytest.mark.slow
def test_movies_preset_runs_to_final_resolution_and_exports(clock: VirtualClock) -> None:
    stages = plan(
        movies_manifest(overrides={"hetero": {"rounds": 2}}), data_dir="/fsx/datasets/CGRP-2026-11/"
    )
    with CryoSparcStandIn(clock, "cgrp", email=EMAIL, password=PASSWORD) as cs:
        agent = Agent(cs.base_url, clock)
        start = clock.now()
        results = run_pipeline(agent, "cgrp-run-1", stages)

        final = results["nurefine"].stages[0]
        assert final.resolution_A is not None
        assert abs(final.resolution_A - 2.8) < 0.1
        # simulated time: Table 1 stage minutes (hetero split over the profile's 5 rounds; 2 run here)
        elapsed_h = (clock.now() - start) / 3600
        assert 25 < elapsed_h < 40, elapsed_h

        # lanes and GPUs as the preset says, timestamps and counts reported
        motion = results["motion"].stages[0].jobs[0]
        assert (motion.job_type, motion.lane, motion.gpus) == ("patch_motion_correction_multi", "gpu8", 8)
        assert motion.num_micrographs == 5600
        assert motion.started_at is not None
        assert motion.completed_at is not None
        assert motion.completed_at - motion.started_at == pytest.approx(100 * 60)
        assert results["class2d"].stages[0].jobs[0].gpus == 4
        assert results["nurefine"].stages[0].jobs[0].lane == "gpu1"
        assert results["import"].stages[0].jobs[0].lane == "gpu8"
        assert results["extract"].stages[0].jobs[0].num_particles > 1_000_000

        # decisions recorded with their numbers
        sel = results["select2d"].stages[0].decisions
        assert [d.kind for d in sel] == ["select_2d_classes"]
        numbers = sel[0].numbers
        assert 0 < numbers["classes_selected"] < numbers["classes_total"] == 100
        # the rule, applied again to the reported classes: the stand-in's classes pass it, so no
        # fallback, and exactly the classes within 12 Å holding enough particles are selected
        rule = numbers["rule"]
        assert rule["max_res_A"] == 12.0
        floor = rule["min_particle_fraction"] * numbers["particles_total"]
        passing = [
            c["class_idx"]
            for c in numbers["classes"]
            if c["res_A"] <= rule["max_res_A"] and c["num_particles"] >= floor
        ]
        assert len(passing) >= rule["min_classes"]
        assert numbers["fallback"] is False
        assert sorted(c["class_idx"] for c in numbers["classes"] if c["selected"]) == sorted(passing)
        assert numbers["selected"] == sorted(passing)
        assert results["select2d"].stages[0].jobs[0].num_particles == numbers["particles_selected"]
        for h in ("hetero1", "hetero2"):
            (d,) = results[h].stages[0].decisions
            assert d.kind == "choose_hetero_class"
            chosen = d.numbers["chosen_class"]
            best = min(
                (
                    c
                    for c in d.numbers["classes"]
                    if c["num_particles"] >= 0.15 * d.numbers["particles_total"]
                ),
                key=lambda c: c["res_A"],
            )
            assert best["class"] == chosen
        # the chosen class of the last round feeds re-extraction and the refinement
        job = cs.job_by_title("cgrp-run-1", "cryopilot:reextract")
        assert job is not None
        hetero2 = cs.job_by_title("cgrp-run-1", "cryopilot:hetero2")
        assert hetero2 is not None
        chosen = results["hetero2"].stages[0].decisions[0].numbers["chosen_class"]
        assert any(
            c.job_uid == hetero2.uid and c.output == f"particles_class_{chosen}" for c in job.connections
        )

        # whole-run status lists every stage in order
        everything = agent.status("cgrp-run-1")
        assert [s.stage_id for s in everything.stages] == [s.id for s in stages]

        # export writes the results into a directory of the FSx mount (here a temporary one)
        with tempfile.TemporaryDirectory() as fsx_mount:
            agent.env["CRYOPILOT_FSX_MOUNT"] = fsx_mount
            for bad in ("/results", "../results", "results/../../etc"):
                rc, doc, _ = agent("export", "--project", "cgrp-run-1", "--stage", "nurefine", "--dest", bad)
                assert rc == 1, doc
                assert "must be a relative path inside the FSx file system" in doc["message"], doc
            rc, doc, text = agent(
                "export", "--project", "cgrp-run-1", "--stage", "nurefine", "--dest", "results"
            )
            assert rc == 0, doc
            exported = ExportResult.model_validate_json(text)
            assert exported.dest == "results"
            kinds = {f.kind for f in exported.files}
            assert kinds == {
                "map",
                "half_map_a",
                "half_map_b",
                "mask",
                "fsc",
                "particles",
                "particles_passthrough",
                "class_averages",
                "selected_classes",
            }
            # the particles: the final iteration's file of the slots the refinement computed, and
            # the file of those it passed through from its input, rows matching by uid
            nu = cs.job_by_title("cgrp-run-1", "cryopilot:nurefine")
            assert nu is not None
            (main,) = [f for f in exported.files if f.kind == "particles"]
            (passed,) = [f for f in exported.files if f.kind == "particles_passthrough"]
            assert main.name == f"{nu.uid}_008_particles.cs"
            assert passed.name == f"{nu.uid}_passthrough_particles.cs"
            main_ds = Dataset.load(os.path.join(fsx_mount, "results", main.name))
            passed_ds = Dataset.load(os.path.join(fsx_mount, "results", passed.name))
            assert {"blob/path", "alignments3D/shift"} <= set(main_ds.fields())
            assert {"location/micrograph_uid", "pick_stats/value"} <= set(passed_ds.fields())
            assert list(main_ds["uid"]) == list(passed_ds["uid"])
            # the 2D class averages Select 2D kept: the 2D job's stack, and which images were chosen
            by_kind = {f.kind: f for f in exported.files}
            with open(os.path.join(fsx_mount, "results", by_kind["class_averages"].name), "rb") as fh:
                header = fh.read(1024)
            assert header[208:212] == b"MAP "
            assert int.from_bytes(header[8:12], "little") > 1  # a stack: one image per class
            with open(os.path.join(fsx_mount, "results", by_kind["selected_classes"].name)) as fh:
                chosen = json.load(fh)
            assert chosen["class_averages"] == by_kind["class_averages"].name
            assert chosen["selected"] == numbers["selected"], chosen  # every class Select 2D kept
            for f in exported.files:
                assert os.path.getsize(os.path.join(fsx_mount, "results", f.name)) == f.size > 0
            with open(
                os.path.join(fsx_mount, "results", next(f.name for f in exported.files if f.kind == "map")),
                "rb",
            ) as fh:
                assert fh.read()[208:212] == b"MAP "
            assert exported.resolution_A == final.resolution_A
            # the project's directory, for an export of the whole project
            assert exported.project_dir is not None
            assert exported.project_dir.startswith("/fsx/projects/")


@pytest.mark.slow
def test_micrographs_preset_runs_with_symmetry(clock: VirtualClock) -> None:
    stages = plan(spike_manifest(), data_dir="/fsx/datasets/spike-fab/")
    assert [s.id for s in stages][:2] == ["import", "ctf"]
    with CryoSparcStandIn(clock, "spike", email=EMAIL, password=PASSWORD) as cs:
        agent = Agent(cs.base_url, clock)
        results = run_pipeline(agent, "spike-run", stages)
        final = results["nurefine"].stages[0]
        assert final.resolution_A is not None
        assert abs(final.resolution_A - 2.9) < 0.1
        job = cs.job_by_title("spike-run", "cryopilot:nurefine")
        assert job is not None
        assert job.params["refine_symmetry"] == "C3"
        assert results["import"].stages[0].jobs[0].job_type == "import_micrographs"
        assert results["hetero1"].stages[0].decisions[0].kind == "choose_hetero_class"


REFERENCE = cgrp_reference()


def run_repeat(
    clock: VirtualClock, *, wrong_reference: bool, options: dict[str, str] | None = None
) -> tuple[dict[str, StatusResult], Any]:
    pipeline: dict[str, Any] = {"preset": "repeat", **({"options": options} if options else {})}
    stages = plan(movies_manifest(**pipeline), data_dir="/fsx/data/", reference=REFERENCE)
    with CryoSparcStandIn(clock, "cgrp", email=EMAIL, password=PASSWORD) as cs:
        if wrong_reference:
            cs.wrong_reference("/fsx/reference/cgrp-first/*")
        results = run_pipeline(Agent(cs.base_url, clock), "cgrp-repeat", stages)
        jobs = {s.id: cs.job_by_title("cgrp-repeat", f"cryopilot:{s.id}") for s in stages}
    return results, jobs


@pytest.mark.slow
def test_repeat_preset_runs_from_the_reference_without_ab_initio(clock: VirtualClock) -> None:
    results, jobs = run_repeat(clock, wrong_reference=False)
    assert not any(
        j.type in ("homo_abinit", "class_2D_new", "select_2D", "blob_picker_gpu") for j in jobs.values()
    )
    # the reference's files, imported on a lane, feed the picker, the hetero seeds and the refinement
    ref, decoy = jobs["import_reference"], jobs["import_decoy"]
    assert (ref.type, ref.lane, ref.params["volume_blob_path"]) == (
        "import_volumes",
        "gpu8",
        REFERENCE.map_path,
    )
    assert decoy.params["volume_blob_path"] == REFERENCE.mask_path
    assert jobs["import_templates"].outputs["imported_templates"]["type"] == "template"
    assert jobs["pick"].type == "template_picker_gpu"
    assert [(c.input, c.job_uid) for c in jobs["pick"].connections][-1] == (
        "templates",
        jobs["import_templates"].uid,
    )
    assert jobs["extract"].params["box_size_pix"] == REFERENCE.box_pix
    hetero1 = jobs["hetero1"]
    assert [(c.job_uid, c.output) for c in hetero1.connections if c.input == "volume"] == [
        (ref.uid, "imported_volume_1"),
        (decoy.uid, "imported_volume_1"),
    ]
    assert hetero1.params["multirefine_res_init"] == 30
    nu = jobs["nurefine"]
    assert [(c.job_uid, c.output) for c in nu.connections if c.input == "volume"] == [
        (ref.uid, "imported_volume_1")
    ]
    # the reference's class keeps most particles at the best resolution: the rule chooses it
    for h in ("hetero1", "hetero2"):
        (d,) = results[h].stages[0].decisions
        assert d.numbers["chosen_class"] == 0
        assert d.numbers["classes"][0]["num_particles"] > 0.5 * d.numbers["particles_total"]
    final = results["nurefine"].stages[0].resolution_A
    assert final is not None
    assert abs(final - 2.8) < 0.1
    # each job ran for its profiles.yaml figure (no Slurm nodes here: every GPU at Table 1's speed):
    # the template picker the blob picker's, a hetero round Table 1's total / the dataset's rounds
    cgrp = load_profiles()["profiles"]["cgrp"]
    minutes = {sid: (j.completed_at - j.running_at) / 60 for sid, j in jobs.items()}
    assert minutes["pick"] == pytest.approx(cgrp["minutes"]["pick"])
    assert minutes["hetero1"] == pytest.approx(cgrp["minutes"]["hetero"] / cgrp["hetero_rounds"])
    assert minutes["import_reference"] == pytest.approx(cgrp["minutes"]["import"])
    assert minutes["nurefine"] == pytest.approx(cgrp["minutes"]["nurefine"])


def _reference_on_fsx(fsx: str, pixel_A: float) -> None:
    """The reference's map and mask at ``pixel_A``, and 4 class averages at twice that, on a local
    FSx mount."""
    folder = os.path.join(fsx, "reference", "cgrp-first")
    os.makedirs(folder)
    grid = np.indices((32, 32, 32)).astype(np.float32) - 16
    volume = np.exp(-((grid * pixel_A) ** 2).sum(axis=0) / (2 * 4.0**2)).astype(np.float32)
    mrc.write(os.path.join(folder, "map.mrc"), volume, pixel_A)
    mrc.write(os.path.join(folder, "mask.mrc"), (volume > 0.1).astype(np.float32), pixel_A)
    mrc.write(os.path.join(folder, "templates_selected.mrcs"), volume[14:18, ::2, ::2], 2 * pixel_A)


def test_a_reference_off_the_datas_pixel_size_is_resampled_and_imported_at_the_datas(
    clock: VirtualClock, tmp_path: Any
) -> None:
    """A reference 1.2 % off the data's pixel size: the agent writes the map and the mask resampled
    into the run's project directory and has each import read that file at the data's pixel size;
    the class averages are imported as they are, at their own pixel size. The stand-in, given the
    file system, imports what is there."""
    fsx = str(tmp_path)
    _reference_on_fsx(fsx, 0.84)
    folder = tmp_path / "reference" / "cgrp-first"
    originals = {n: (folder / n).read_bytes() for n in os.listdir(folder)}
    reference = REFERENCE.model_copy(update={"pixel_size_A": 0.84, "templates_pixel_size_A": 1.68})
    stages = plan(movies_manifest(preset="repeat"), data_dir="/fsx/data/", reference=reference)
    imports = [s for s in stages if s.resample is not None]
    assert [s.id for s in imports] == ["import_reference", "import_decoy"]
    (templates_stage,) = [s for s in stages if s.id == "import_templates"]
    with CryoSparcStandIn(clock, "cgrp", email=EMAIL, password=PASSWORD) as cs:
        cs.read_fsx = lazy_reader(fsx, [], lambda bucket, key: None)
        agent = Agent(cs.base_url, clock)
        agent.env["CRYOPILOT_FSX_MOUNT"] = fsx
        for spec in [*imports, templates_stage]:
            assert agent.run_stage("cgrp-repeat", spec).stages[0].state == "completed"
        (project,) = cs.projects.values()
        for spec, name in zip(imports, ("map.mrc", "mask.mrc"), strict=True):
            job = cs.job_by_title("cgrp-repeat", f"cryopilot:{spec.id}")
            assert job is not None
            path_param, psize_param = spec.resample.path, spec.resample.pixel_size  # type: ignore[union-attr]
            resampled = f"{project.project_dir}/cryopilot_resampled/{spec.id}_{name}"
            assert (job.params[path_param], job.params[psize_param]) == (resampled, 0.83)
            local = os.path.join(fsx, *resampled.removeprefix("/fsx/").split("/"))
            header, data = mrc.read(local)
            assert header.xlen / header.nx == pytest.approx(0.83)
            assert data.shape[-1] == 32  # the reference's box is kept
            # the import holds that file, as a real import reads it
            (imported,) = [f for f in project.files if f.startswith(f"{job.uid}/imported/")]
            with open(local, "rb") as fh:
                assert project.files[imported] == fh.read()
            recorded = json.loads(job.description)["cryopilot"]["resampled"]
            assert recorded["source"] == spec.params[path_param]
            assert (recorded["from_A"], recorded["pixel_size_A"], recorded["file"]) == (0.84, 0.83, resampled)
        templates = cs.job_by_title("cgrp-repeat", "cryopilot:import_templates")
        assert templates is not None
        assert templates.params == {"templates_blob_path": REFERENCE.templates_path, "templates_psize": 1.68}
        assert templates.outputs["imported_templates"]["num_items"] == 4  # the stack's 4 images
        # a second submit adopts the job; the reference's own files were never written
        assert agent.submit("cgrp-repeat", imports[0]).already_submitted
    for name, data in originals.items():
        assert (folder / name).read_bytes() == data


def test_a_reference_file_missing_from_fsx_fails_the_submit_or_the_import(
    clock: VirtualClock, tmp_path: Any
) -> None:
    reference = REFERENCE.model_copy(update={"pixel_size_A": 0.84})
    planned = plan(movies_manifest(preset="repeat"), data_dir="/fsx/data/", reference=reference)
    stages = {s.id: s for s in planned}
    with CryoSparcStandIn(clock, "cgrp", email=EMAIL, password=PASSWORD) as cs:
        cs.read_fsx = lazy_reader(str(tmp_path), [], lambda bucket, key: None)
        agent = Agent(cs.base_url, clock)
        agent.env["CRYOPILOT_FSX_MOUNT"] = str(tmp_path)
        failure = _failure(agent, "cgrp-repeat", stages["import_reference"])
        assert failure.error_type == "ResampleError"
        assert failure.message == (
            f"import_reference: {REFERENCE.map_path} (volume_blob_path) is not on this node"
            f" ({tmp_path}/reference/cgrp-first/map.mrc)"
        )
        # no resampling (the data's pixel size): the import itself reads the file, and fails
        same = stages["import_reference"].model_copy(update={"resample": None})
        status = agent.run_stage("cgrp-repeat", same).stages[0]
        assert status.state == "failed"
        assert status.jobs[0].error == f"Could not open {REFERENCE.map_path}: no such file"


@pytest.mark.slow
def test_a_wrong_reference_keeps_few_particles_and_ends_in_a_much_worse_map(clock: VirtualClock) -> None:
    results, _jobs = run_repeat(clock, wrong_reference=True)
    (d,) = results["hetero1"].stages[0].decisions
    seeded = d.numbers["classes"][0]
    assert seeded["num_particles"] < 0.1 * d.numbers["particles_total"]
    assert all(c["res_A"] >= 9.0 for c in d.numbers["classes"])
    final = results["nurefine"].stages[0].resolution_A
    assert final is not None
    assert final > 2 * 2.8


@pytest.mark.slow
def test_repeat_preset_with_templates_projected_from_the_reference_map(clock: VirtualClock) -> None:
    """``pipeline.options.templates: projections``: Create Templates projects the imported
    reference map and feeds the Template Picker; no Import Templates; the run ends as the default
    route's. A wrong reference's map carries over to the projections and the picks made with them."""
    results, jobs = run_repeat(clock, wrong_reference=False, options={"templates": "projections"})
    assert "import_templates" not in jobs
    create, ref = jobs["create_templates"], jobs["import_reference"]
    assert (create.type, create.lane) == ("create_templates", "gpu8")
    assert [(c.input, c.job_uid, c.output) for c in create.connections] == [
        ("volume", ref.uid, "imported_volume_1")
    ]
    assert create.outputs["templates"]["type"] == "template"
    assert [(c.input, c.job_uid, c.output) for c in jobs["pick"].connections][-1] == (
        "templates",
        create.uid,
        "templates",
    )
    final = results["nurefine"].stages[0].resolution_A
    assert final is not None
    assert abs(final - 2.8) < 0.1
    clock2 = VirtualClock()
    results, jobs = run_repeat(clock2, wrong_reference=True, options={"templates": "projections"})
    assert jobs["create_templates"].other_protein
    wrong = results["nurefine"].stages[0].resolution_A
    assert wrong is not None
    assert wrong > 2 * 2.8


def test_the_repeat_jobs_are_held_to_the_register(agent: Agent) -> None:
    """Import 3D Volumes, Import Templates and the Template Picker are refused a parameter or a
    connection they do not have, as the other job types are."""
    stages = {
        s.id: s for s in plan(movies_manifest(preset="repeat"), data_dir="/fsx/d/", reference=REFERENCE)
    }
    ref = stages["import_reference"]
    f = _failure(
        agent, "run-repeat-bad", ref.model_copy(update={"params": {**ref.params, "volume_path": "x"}})
    )
    assert (f.error_type, "volume_path" in f.message) == ("APIError", True)
    for sid in ("import_templates", "import", "motion", "ctf"):
        agent.run_stage("run-repeat-bad", stages[sid])
    pick = stages["pick"]
    wrong = [
        c.model_copy(update={"stage": "ctf", "output": "exposures"}) if c.input == "templates" else c
        for c in pick.inputs
    ]
    f = _failure(agent, "run-repeat-bad", pick.model_copy(update={"inputs": wrong}))
    assert f.error_type == "APIError"
    assert (
        "Cannot connect patch_ctf_estimation_multi output exposures (exposure) to input templates"
        in f.message
    )
    assert agent.run_stage("run-repeat-bad", pick).stages[0].state == "completed"


def test_create_templates_is_held_to_the_register(agent: Agent) -> None:
    """Create Templates (the projections route) is refused a parameter or a connection it does
    not have, as the other job types are; with the register's names it runs."""
    manifest = movies_manifest(preset="repeat", options={"templates": "projections"})
    stages = {s.id: s for s in plan(manifest, data_dir="/fsx/d/", reference=REFERENCE)}
    agent.run_stage("run-create-bad", stages["import_reference"])
    create = stages["create_templates"]
    f = _failure(agent, "run-create-bad", create.model_copy(update={"params": {"templates_psize": 1.0}}))
    assert (f.error_type, "templates_psize" in f.message) == ("APIError", True)
    wrong = [c.model_copy(update={"input": "volumes"}) for c in create.inputs]
    f = _failure(agent, "run-create-bad", create.model_copy(update={"inputs": wrong}))
    assert (f.error_type, "volumes" in f.message) == ("APIError", True)
    assert agent.run_stage("run-create-bad", create).stages[0].state == "completed"


def test_submit_is_idempotent(agent: Agent) -> None:
    first = plan(movies_manifest(), data_dir="/fsx/d/")[0]
    a = agent.submit("run-idem", first)
    b = agent.submit("run-idem", first)
    assert not a.already_submitted
    assert b.already_submitted
    assert [j.uid for j in a.stage.jobs] == [j.uid for j in b.stage.jobs]
    assert a.project_uid == b.project_uid
    assert a.workspace_uid == b.workspace_uid
    assert len(agent.status("run-idem").stages) == 1


def driver_at(agent: Agent, clock: VirtualClock) -> Driver:
    """What one agent command builds (a new client and driver), with the simulated clock as its
    clock: the agent measures time between its calls, as the stand-in's jobs do."""
    settings = settings_from_env(agent.env)
    return Driver(_connect(settings), project_root=settings.project_root, now=clock.now)


def run_up_to_select2d(agent: Agent, run: str) -> PlannedStage:
    """Run a movies plan up to 2D classification; Select 2D's stage, not yet submitted."""
    stages = plan(movies_manifest(), data_dir="/fsx/d/")
    at = [s.id for s in stages].index("select2d")
    for spec in stages[:at]:
        assert agent.run_stage(run, spec).stages[0].state == "completed", spec.id
    return stages[at]


@pytest.mark.parametrize(("kind", "acted"), [("timeout", False), ("error", False), ("timeout", True)])
def test_select2d_finish_is_asked_again_when_the_first_request_did_not_reach_the_job(
    agent: Agent, standin: CryoSparcStandIn, clock: VirtualClock, kind: str, acted: bool
) -> None:
    select = run_up_to_select2d(agent, "run-finish")
    standin.fail_finish(kind, acted=acted)  # type: ignore[arg-type]
    submitted = driver_at(agent, clock).submit("run-finish", select)
    job = standin.job_by_title("run-finish", "cryopilot:select2d")
    assert job is not None
    # the classes were chosen and the decision recorded; the finish answered with an error
    (decision,) = submitted.stage.decisions
    assert decision.numbers["selected"]
    assert [timeout for _, timeout in job.finish_requests] == [FINISH_TIMEOUT_SECONDS]
    assert FINISH_TIMEOUT_SECONDS > 10  # longer than interact's default
    assert json.loads(job.description)["cryopilot"]["finish_error"].startswith("APIError")

    def poll(seconds: float) -> Any:
        clock.advance(seconds)
        return driver_at(agent, clock).status("run-finish", ["select2d"]).stages[0]

    if acted:  # the job got the request although the answer was an error: it finishes, once
        stage = poll(standin.finish_seconds)
        assert stage.state == "completed"
        assert len(job.finish_requests) == 1
        return
    assert job.status == "waiting"
    stage = poll(FINISH_RETRY_SECONDS - 1)  # too soon to ask again
    assert stage.state == "running"
    assert len(job.finish_requests) == 1
    stage = poll(1)  # the request is FINISH_RETRY_SECONDS old: asked again, and this one arrives
    assert len(job.finish_requests) == 2
    assert job.finish_requests[1][0] - job.finish_requests[0][0] == FINISH_RETRY_SECONDS
    stage = poll(standin.finish_seconds)
    assert stage.state == "completed"
    assert len(job.finish_requests) == 2
    # one decision, as made the first time; the classes it selected are the job's output
    assert [d.numbers["selected"] for d in stage.decisions] == [decision.numbers["selected"]]
    assert sorted(c["class_idx"] for c in job.class_info if c["selected"]) == decision.numbers["selected"]
    assert json.loads(job.description)["cryopilot"]["finish_requests"] == 2


@pytest.mark.parametrize("finishing", ["waiting", "running"])
def test_select2d_completes_after_finish_returns(
    agent: Agent, standin: CryoSparcStandIn, clock: VirtualClock, finishing: str
) -> None:
    """cryosparc-tools' custom-workflow example: ``interact("finish")``, then ``wait_for_done()``.
    Whatever the job shows until it is done, it is asked to finish once."""
    standin.finishing_status = finishing  # type: ignore[assignment]
    select = run_up_to_select2d(agent, "run-finishing")
    first = driver_at(agent, clock).submit("run-finishing", select).stage
    assert first.state == "running"
    assert first.jobs[0].status == finishing
    clock.advance(FINISH_RETRY_SECONDS + standin.finish_seconds)
    stage = driver_at(agent, clock).status("run-finishing", ["select2d"]).stages[0]
    assert stage.state == "completed"
    job = standin.job_by_title("run-finishing", "cryopilot:select2d")
    assert job is not None
    assert len(job.finish_requests) == 1


def test_status_of_unknown_run_and_stage(agent: Agent) -> None:
    st = agent.status("nobody", "motion")
    assert st.project_uid is None
    assert st.stages[0].state == "not_submitted"


def test_stuck_job_is_killed_and_reported(
    agent: Agent, standin: CryoSparcStandIn, clock: VirtualClock
) -> None:
    standin.inject("stuck", "patch_motion_correction_multi")
    stages = plan(movies_manifest(), data_dir="/fsx/d/")
    agent.run_stage("run-stuck", stages[0])
    agent.submit("run-stuck", stages[1])
    clock.advance(stages[1].time_limit_seconds + 60)
    st = agent.status("run-stuck", "motion").stages[0]
    assert st.state == "running"
    assert st.jobs[0].progress < 1.0
    assert st.jobs[0].started_at is not None
    assert clock.now() - st.jobs[0].started_at > stages[1].time_limit_seconds
    rc, doc, text = agent("kill", "--project", "run-stuck", "--stage", "motion")
    assert rc == 0
    killed = KillResult.model_validate_json(text)
    assert killed.killed == [st.jobs[0].uid]
    after = agent.status("run-stuck", "motion").stages[0]
    assert after.state == "killed"
    assert after.jobs[0].status == "killed"
    rc, doc, _ = agent("kill", "--project", "run-stuck", "--stage", "motion")
    assert rc == 0
    assert doc["killed"] == []


@pytest.mark.parametrize(("kind", "state"), [("fail", "failed"), ("kill", "killed")])
def test_failed_or_killed_job_is_reported(
    agent: Agent, standin: CryoSparcStandIn, kind: str, state: str
) -> None:
    standin.inject(kind, "import_movies")  # type: ignore[arg-type]
    st = agent.run_stage("run-" + kind, plan(movies_manifest(), data_dir="/fsx/d/")[0])
    stage = st.stages[0]
    assert stage.state == state
    assert stage.jobs[0].status == state
    assert stage.jobs[0].error
    assert "injected" in stage.jobs[0].error
    assert stage.jobs[0].completed_at is not None


def _failure(agent: Agent, run: str, spec: PlannedStage) -> AgentFailure:
    rc, _doc, text = agent("submit", "--project", run, "--spec-b64", encode_spec(spec))
    assert rc == 1
    return AgentFailure.model_validate_json(text)


def test_wrong_job_type_param_or_output_fails(agent: Agent) -> None:
    stages = plan(movies_manifest(), data_dir="/fsx/d/")
    imp, motion = stages[0], stages[1]
    bad_type = imp.model_copy(update={"job_type": "import_movie"})
    f = _failure(agent, "run-bad", bad_type)
    assert f.error_type == "APIError"
    assert "import_movie" in f.message

    bad_param = imp.model_copy(update={"params": {**imp.params, "pixel_size": 0.8}})
    f = _failure(agent, "run-bad", bad_param)
    assert f.error_type == "APIError"
    assert "pixel_size" in f.message

    agent.run_stage("run-bad", imp)
    bad_output = motion.model_copy(
        update={"inputs": [motion.inputs[0].model_copy(update={"output": "movies_imported"})]}
    )
    f = _failure(agent, "run-bad", bad_output)
    assert f.error_type == "APIError"
    assert "movies_imported" in f.message
    # the interrupted submit left no stage job behind: the correct spec still submits
    assert not agent.submit("run-bad", motion).already_submitted


def test_a_submit_cut_short_after_queueing_is_adopted_not_queued_twice(
    agent: Agent, standin: CryoSparcStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent queues a stage's job under its draft title, then titles it. A submit that ends in
    between leaves a queued draft: the next submit gives it its title, and queues nothing."""
    from cryosparc.controllers.job import JobController

    imp = plan(movies_manifest(), data_dir="/fsx/d/")[0]
    title_it = JobController.set_title

    def cut_short(job: JobController, title: str) -> None:
        raise ConnectionError("the agent's process ended here")

    monkeypatch.setattr(JobController, "set_title", cut_short)
    assert _failure(agent, "run-cut", imp).error_type == "ConnectionError"
    monkeypatch.setattr(JobController, "set_title", title_it)
    (project,) = [p for p in standin.projects.values() if p.title == "run-cut"]
    (draft,) = project.jobs.values()
    assert draft.title == "cryopilot-draft:import"
    assert draft.status == "running"  # queued, and on its way

    again = agent.submit("run-cut", imp)
    assert again.already_submitted
    assert [j.uid for j in again.stage.jobs] == [draft.uid]
    assert [(j.uid, j.title) for j in project.jobs.values()] == [(draft.uid, "cryopilot:import")]
    assert agent.submit("run-cut", imp).already_submitted
    assert len(project.jobs) == 1


def test_import_runs_on_a_lane_and_a_worker_job_without_one_is_refused(agent: Agent) -> None:
    """cryosparc-tools' ``Job.queue``: no lane means "run directly on the master or current
    workstation"; cryopilot's instance has no master workstation (its only targets are the cluster
    lanes), so every job that runs on a worker goes to a lane, as cryosparc-tools' workflow example
    queues Import Movies; only interactive jobs (Select 2D) are queued without one."""
    for manifest in (movies_manifest(), spike_manifest()):
        stages = {s.id: s for s in plan(manifest, data_dir="/fsx/d/")}
        assert stages["import"].lane == "gpu8"  # the queue motion correction (or CTF) uses next
        assert stages["select2d"].lane is None

    imp = plan(movies_manifest(), data_dir="/fsx/d/")[0]
    st = agent.run_stage("run-lane", imp).stages[0]
    assert (st.state, st.jobs[0].lane) == ("completed", "gpu8")
    f = _failure(agent, "run-no-lane", imp.model_copy(update={"lane": None}))
    assert f.error_type == "APIError"
    assert "import_movies runs on a worker" in f.message


def test_a_worker_job_without_a_lane_goes_to_the_default_lane_when_there_is_one(
    agent: Agent, standin: CryoSparcStandIn
) -> None:
    """api.pyi ``jobs.enqueue``: "default lane if not specified". The stand-in has one only when
    told (``QueueRules.default_lane``); then a worker job queued without a lane runs there."""
    standin.queue_rules.default_lane = "gpu4"
    imp = plan(movies_manifest(), data_dir="/fsx/d/")[0]
    st = agent.run_stage("run-default-lane", imp.model_copy(update={"lane": None})).stages[0]
    assert (st.state, st.jobs[0].lane) == ("completed", "gpu4")


@pytest.mark.parametrize("rule", ["fail_at_launch", "refuse"])
def test_a_job_asking_more_gpus_than_its_lanes_nodes_have(
    agent: Agent, standin: CryoSparcStandIn, rule: str
) -> None:
    """Not documented: by default it is queued and fails when submitted to its lane (Slurm cannot
    place it); the stand-in can refuse it at queue time instead."""
    standin.queue_rules.oversized_gpus = rule  # type: ignore[assignment]
    stages = plan(movies_manifest(), data_dir="/fsx/d/")
    agent.run_stage("run-gpus-" + rule, stages[0])
    motion = stages[1]
    assert motion.lane == "gpu8"
    big = motion.model_copy(update={"params": {**motion.params, "compute_num_gpus": 16}})
    if rule == "refuse":
        f = _failure(agent, "run-gpus-" + rule, big)
        assert (f.error_type, "compute_num_gpus is too large" in f.message) == ("APIError", True)
        return
    stage = agent.run_stage("run-gpus-" + rule, big).stages[0]
    assert (stage.state, stage.jobs[0].status) == ("failed", "failed")
    assert "Requested node configuration is not available" in (stage.jobs[0].error or "")
    assert stage.jobs[0].started_at is None  # it never ran


def test_an_interactive_job_queued_to_a_lane(agent: Agent, standin: CryoSparcStandIn) -> None:
    """Not documented: the stand-in refuses it by default, or runs it on the master."""
    select = run_up_to_select2d(agent, "run-select-lane")
    on_lane = select.model_copy(update={"lane": "gpu1"})
    f = _failure(agent, "run-select-lane", on_lane)
    assert "runs on the master only" in f.message
    standin.queue_rules.interactive_on_lane = "master"
    stage = agent.run_stage("run-select-lane", on_lane).stages[0]
    assert (stage.state, stage.jobs[0].lane) == ("completed", None)


def test_select2d_templates_hold_one_row_per_selected_class(
    agent: Agent, standin: CryoSparcStandIn, clock: VirtualClock
) -> None:
    select = run_up_to_select2d(agent, "run-templates")
    stage = agent.run_stage("run-templates", select).stages[0]
    (decision,) = stage.decisions
    project_uid = agent.status("run-templates").project_uid
    assert project_uid is not None
    client = driver_at(agent, clock).cs
    templates = client.find_job(project_uid, stage.jobs[0].uid).load_output("templates_selected")
    assert sorted(int(i) for i in templates["blob/idx"]) == decision.numbers["selected"]
    assert len(templates) == decision.numbers["classes_selected"]
    assert len(set(templates["blob/path"])) == 1  # the 2D job's class-average stack


def test_a_queued_job_may_be_cleared_and_a_deleted_job_keeps_its_uid(
    agent: Agent, standin: CryoSparcStandIn, clock: VirtualClock
) -> None:
    """jobs.ipynb: "A queued, completed, killed or failed job may be cleared" (a running one must
    be killed first). A deleted job is marked deleted (models/job.py ``deleted``), not listed by
    default, and its uid is not given to the next job."""
    from cryosparc.errors import APIError

    stages = plan(movies_manifest(), data_dir="/fsx/d/")
    agent.submit("run-clear", stages[0])  # import: runs for a while
    agent.submit("run-clear", stages[1])  # motion: queued until the import completes
    st = agent.status("run-clear")
    assert st.project_uid is not None
    imp_uid, motion_uid = (s.jobs[0].uid for s in st.stages)
    assert st.stages[1].jobs[0].status == "queued"
    client = driver_at(agent, clock).cs
    motion = client.find_job(st.project_uid, motion_uid)
    motion.clear()
    assert motion.status == "building"
    with pytest.raises(APIError, match="kill it before clearing it"):
        client.find_job(st.project_uid, imp_uid).clear()

    client.api.jobs.delete(st.project_uid, motion_uid)
    listed = [j.uid for j in client.find_project(st.project_uid).find_jobs()]
    assert listed == [imp_uid]
    (gone,) = client.api.jobs.find(project_uid=[st.project_uid], deleted=True)
    assert (gone.uid, gone.deleted) == (motion_uid, True)
    again = agent.submit("run-clear", stages[1])  # the stage has no job: a new one
    assert not again.already_submitted
    assert again.stage.jobs[0].uid not in (imp_uid, motion_uid)


def test_bad_credentials_and_arguments(standin: CryoSparcStandIn, clock: VirtualClock) -> None:
    agent = Agent(standin.base_url, clock)
    agent.env["CRYOSPARC_PASSWORD"] = "wrong-password-xyz"
    rc, doc, text = agent("status", "--project", "x")
    assert rc == 1
    assert doc["ok"] is False
    assert "wrong-password-xyz" not in text
    rc, doc, _ = Agent(standin.base_url, clock)("submit", "--project", "x", "--spec-b64", "%%%")
    assert rc == 1
    assert doc["verb"] == "submit"
    assert "base64" in doc["message"]
    rc, doc, _ = Agent(standin.base_url, clock)("frobnicate")
    assert rc == 1
    assert doc["error_type"] == "UsageError"


def test_the_agent_connects_on_a_master_whose_environment_names_its_host_and_port(
    standin: CryoSparcStandIn, clock: VirtualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cryosparc-tools' ``CryoSPARC.__init__`` takes its ``host`` and ``base_port`` defaults from
    CRYOSPARC_MASTER_HOSTNAME and CRYOSPARC_BASE_PORT when tools.py is imported, and refuses either
    with a base URL. On a cryoSPARC master they can be set; the agent still connects by URL."""
    from cryosparc.tools import CryoSPARC

    defaults = CryoSPARC.__init__.__kwdefaults__
    assert defaults is not None
    monkeypatch.setitem(defaults, "host", "headnode.internal")
    monkeypatch.setitem(defaults, "base_port", "39000")
    with pytest.raises(TypeError, match="Cannot specify host or base_port"):
        CryoSPARC(standin.base_url, email=EMAIL, password=PASSWORD)
    client = _connect(settings_from_env(Agent(standin.base_url, clock).env))
    assert client.base_url == standin.base_url
    rc, doc, _ = Agent(standin.base_url, clock)("status", "--project", "nothing-yet")
    assert rc == 0, doc


def test_credentials_from_secrets_manager(standin: CryoSparcStandIn, clock: VirtualClock) -> None:
    with mock_aws():
        sm = boto3.client("secretsmanager", region_name="us-east-1")
        sm.create_secret(
            Name="cryopilot/cryosparc", SecretString=json.dumps({"email": EMAIL, "password": PASSWORD})
        )
        agent = Agent(standin.base_url, clock)
        del agent.env["CRYOSPARC_EMAIL"], agent.env["CRYOSPARC_PASSWORD"]
        agent.env["CRYOPILOT_CRYOSPARC_SECRET_ID"] = "cryopilot/cryosparc"
        rc, doc, _ = agent("status", "--project", "nothing-yet")
        assert rc == 0
        assert doc["ok"] is True


# --- the lanes' Slurm state (sinfo/squeue) in the status answer -----------------------------------


def _nodes_for_default_cluster(clock: VirtualClock, timeout: float) -> Any:
    """The Slurm nodes of the cluster cryopilot builds by default (gpu8: p4d > p4de > p5)."""
    from cryopilot.domain.clusterconfig.build import build_cluster_config, render_yaml
    from cryopilot.domain.clusterconfig.params import ClusterParams
    from cryopilot_sim.slurm import SlurmNodes

    from tests.conftest import make_cluster_request

    params = ClusterParams(
        region="us-east-1",
        head_node_subnet_id="subnet-0123456789abcdef0",
        compute_subnet_ids=["subnet-0aaaaaaaaaaaaaaa1"],
        licence_secret_arn="arn:aws:secretsmanager:us-east-1:123456789012:secret:cryosparc-licence-AbCdEf",
        bootstrap_s3_uri="s3://cryopilot-assets/bootstrap/",
        results_s3_uri="s3://cryopilot-results/runs/",
    )
    text = render_yaml(build_cluster_config(make_cluster_request("run-capacity"), params))
    return SlurmNodes.from_cluster_config(text, ready_at=clock.now(), capacity_timeout=timeout)


@pytest.mark.parametrize("code", ["InsufficientInstanceCapacity", "VcpuLimitExceeded"])
def test_status_carries_the_lanes_slurm_state_as_parallelcluster_reports_a_failed_launch(
    standin: CryoSparcStandIn, agent: Agent, clock: VirtualClock, code: str
) -> None:
    from unittest import mock

    from cryopilot.domain.capacity import lane_capacity
    from cryopilot_agent import slurm as agent_slurm

    nodes = _nodes_for_default_cluster(clock, timeout=600)
    nodes.set_capacity("p4d.24xlarge", code)
    standin.slurm = nodes
    stages = plan(movies_manifest(), data_dir="/fsx/d/")
    gpu8 = next(s for s in stages if s.lane == "gpu8")
    with mock.patch.object(agent_slurm, "run_command", lambda argv: nodes.command(argv, clock.now())):
        for spec in stages[: stages.index(gpu8)]:
            assert agent.run_stage("run-cap", spec).stages[0].state == "completed"
        agent.submit("run-cap", gpu8)
        types = ["p4d.24xlarge", "p4de.24xlarge", "p5.48xlarge"]

        clock.advance(30)  # the launch has just failed
        (lane,) = agent.status("run-cap", gpu8.id).lanes
        assert lane.lane == "gpu8"
        failed = [n for n in lane.nodes if n.reason == f"(Code:{code})Failure when resuming nodes"]
        assert [n.name for n in failed] == ["gpu8-dy-p4d-24xlarge-1"]
        (job,) = lane.jobs
        assert job.name.startswith("cryosparc_P")
        assert job.cryosparc_job is not None
        assert job.state == "PENDING"

        clock.advance(60)  # one clustermgtd loop later
        (lane,) = agent.status("run-cap", gpu8.id).lanes
        view = lane_capacity(lane, types)
        if code == "InsufficientInstanceCapacity":
            # the compute resource is disabled, the job requeued on the next one (fast fail-over)
            disabled = [n for n in lane.nodes if n.name.startswith("gpu8-dy-p4d-24xlarge-")]
            assert {n.state for n in disabled} == {"down~"}
            assert all(n.reason.startswith(f"(Code:{code})Temporarily disabling node") for n in disabled)
            assert [j.state for j in lane.jobs] == ["CONFIGURING"]
            assert lane.nodes_by_state.get("alloc#") == 1  # a p4de.24xlarge node powering up
            assert (view.down, view.trying, view.fatal) == ([("p4d.24xlarge", code)], "p4de.24xlarge", None)
            clock.advance(600)  # insufficient_capacity_timeout: p4d.24xlarge is enabled again
            (lane,) = agent.status("run-cap", gpu8.id).lanes
            assert not [n for n in lane.nodes if n.name.startswith("gpu8-dy-p4d-24xlarge-")]
            assert [f.instance_type for f in nodes.failures] == ["p4d.24xlarge"]
            assert {n.instance_type for n in nodes.nodes if n.queue == "gpu8"} == {"p4de.24xlarge"}
        else:
            # not an insufficient-capacity error: the node stays down, nothing fails over
            assert [(n.state, n.name) for n in lane.nodes] == [("down#", "gpu8-dy-p4d-24xlarge-1")]
            assert [j.state for j in lane.jobs] == ["PENDING"]
            assert lane.jobs[0].reason.startswith("ReqNodeNotAvail")
            assert view.fatal == ("p4d.24xlarge", code)
            clock.advance(3600)
            (lane,) = agent.status("run-cap", gpu8.id).lanes
            assert [j.state for j in lane.jobs] == ["PENDING"]
            assert not [n for n in nodes.nodes if n.queue == "gpu8"]  # no node ever launched


def test_a_job_waiting_for_its_node_is_not_reported_as_started(
    standin: CryoSparcStandIn, agent: Agent, clock: VirtualClock
) -> None:
    """The job goes queued, launched, started, running, completed (cryosparc-tools' JobStatus), with
    the timestamps models/job.py describes: ``started_at`` when the scheduler submits it to its lane
    (its node is still booting), ``launched_at`` when its monitor starts on the node,
    ``running_at`` when its main process does. The agent reports the job's start as
    ``running_at``: the wait for the node is not time the job ran."""
    standin.slurm = _nodes_for_default_cluster(clock, timeout=600)
    standin.monitor_seconds = 30.0
    imp = plan(movies_manifest(), data_dir="/fsx/d/")[0]
    assert imp.lane == "gpu8"
    submitted_at = clock.now()
    project_uid = agent.submit("run-node-wait", imp).project_uid
    job = standin.job_by_title("run-node-wait", "cryopilot:import")
    assert job is not None
    assert job.launched_at is not None
    node_up = job.launched_at
    assert node_up > submitted_at + 60  # a dynamic node boots first

    def poll(at: float) -> tuple[Any, Any]:
        clock.advance(at - clock.now())
        (info,) = agent.status("run-node-wait", imp.id).stages[0].jobs
        model = driver_at(agent, clock).cs.api.jobs.find_one(project_uid, info.uid)
        return info, model

    info, model = poll(node_up - 1)
    assert (info.status, info.started_at) == ("launched", None)
    assert model.started_at.timestamp() == submitted_at
    assert (model.launched_at, model.running_at) == (None, None)
    info, model = poll(node_up + 1)
    assert (info.status, info.started_at) == ("started", None)
    assert model.launched_at.timestamp() == node_up
    assert model.running_at is None
    info, model = poll(node_up + 31)
    assert info.status == "running"
    assert info.started_at == model.running_at.timestamp() == node_up + 30
    assert model.started_at.timestamp() == submitted_at
    assert job.end_at is not None
    info, model = poll(job.end_at + 1)
    assert info.status == "completed"
    assert info.started_at == node_up + 30
    assert info.completed_at is not None
    assert info.completed_at - info.started_at < info.completed_at - submitted_at - 60


def test_status_without_slurm_says_why_and_answers_the_stages(agent: Agent, clock: VirtualClock) -> None:
    from unittest import mock

    from cryopilot_agent import slurm as agent_slurm

    def missing(argv: list[str]) -> str:
        raise FileNotFoundError(argv[0])

    stages = plan(movies_manifest(), data_dir="/fsx/d/")
    gpu8 = next(s for s in stages if s.lane == "gpu8")
    with mock.patch.object(agent_slurm, "run_command", missing):
        for spec in stages[: stages.index(gpu8) + 1]:
            agent.submit("run-noslurm", spec)
            clock.advance(POLL_SECONDS)
        st = agent.status("run-noslurm", gpu8.id)
    assert st.lanes == []
    assert st.slurm_error is not None
    assert st.slurm_error.startswith("FileNotFoundError")
    assert st.stages[0].stage_id == gpu8.id


def test_slurm_commands_are_found_where_parallelcluster_puts_them(monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    from cryopilot_agent import slurm as agent_slurm

    ran: list[list[str]] = []

    def fake_run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        ran.append(argv)
        return subprocess.CompletedProcess(argv, 0, stdout="gpu8|gpu8-dy-p4d-24xlarge-1|idle~|none\n")

    monkeypatch.setattr(agent_slurm.shutil, "which", lambda name: None)  # SSM's PATH lacks /opt/slurm/bin
    monkeypatch.setattr(agent_slurm.subprocess, "run", fake_run)
    assert agent_slurm.run_command(agent_slurm.SINFO).startswith("gpu8|")
    assert ran == [["/opt/slurm/bin/sinfo", *agent_slurm.SINFO[1:]]]


def test_a_spot_interruption_reclaims_the_node_two_minutes_after_its_notice_and_its_job_fails(
    standin: CryoSparcStandIn, agent: Agent, clock: VirtualClock
) -> None:
    """EC2 user guide, "Spot Instance interruption notices": the notice comes two minutes before
    EC2 reclaims the instance. The Slurm/EC2 stand-in's node is then gone (no longer listed, billed
    up to that moment) and the cryoSPARC job on it fails."""
    import yaml
    from cryopilot.domain.clusterconfig.build import build_cluster_config, render_yaml
    from cryopilot.domain.clusterconfig.params import ClusterParams
    from cryopilot_sim.slurm import SPOT_NOTICE_SECONDS, SlurmNodes

    from tests.conftest import make_cluster_request

    params = ClusterParams(
        region="us-east-1",
        head_node_subnet_id="subnet-0123456789abcdef0",
        compute_subnet_ids=["subnet-0aaaaaaaaaaaaaaa1"],
        licence_secret_arn="arn:aws:secretsmanager:us-east-1:123456789012:secret:cryosparc-licence-AbCdEf",
        bootstrap_s3_uri="s3://cryopilot-assets/bootstrap/",
        results_s3_uri="s3://cryopilot-results/runs/",
    )
    request = make_cluster_request("run-spot", spot_queues=["gpu8"])
    doc = yaml.safe_load(render_yaml(build_cluster_config(request, params)))
    assert [q.get("CapacityType") for q in doc["Scheduling"]["SlurmQueues"]][-1] == "SPOT"
    # the cryoSPARC stand-in's lanes are the On-Demand queues: let its gpu8 lane buy Spot, as gpu8-spot does
    gpu8 = next(q for q in doc["Scheduling"]["SlurmQueues"] if q["Name"] == "gpu8")
    gpu8["CapacityType"] = "SPOT"
    nodes = SlurmNodes.from_cluster_config(yaml.safe_dump(doc), ready_at=clock.now())
    assert nodes.queues["gpu8-spot"].capacity_type == "SPOT"
    standin.slurm = nodes
    stages = plan(movies_manifest(), data_dir="/fsx/d/")
    motion = next(s for s in stages if s.lane == "gpu8" and s.id != "import")
    for spec in stages[: stages.index(motion)]:
        agent.run_stage("run-spot", spec)
    nodes.interrupt_spot(after_seconds=600)  # the next Spot node given a job: motion correction's
    agent.submit("run-spot", motion)
    job_uid = agent.status("run-spot", motion.id).stages[0].jobs[0].uid
    (node,) = [n for n in nodes.nodes if job_uid in n.jobs]
    assert node.spot
    started = max(node.ready_at, clock.now())
    assert node.notice_at == started + 600
    assert node.interrupted_at == node.notice_at + SPOT_NOTICE_SECONDS
    clock.advance(max(0.0, node.notice_at - clock.now()) + 1)  # under notice: still there
    assert node.instance_type in [i["instance_type"] for i in nodes.instances(clock.now())]
    assert agent.status("run-spot", motion.id).stages[0].state == "running"
    clock.advance(SPOT_NOTICE_SECONDS)  # reclaimed
    listed = nodes.instances(clock.now())
    assert all(i["launched_at"] != node.launched_at for i in listed), listed
    status = agent.status("run-spot", motion.id).stages[0]
    assert status.state == "failed"
    (lost,) = [j for j in status.jobs if j.uid == job_uid]
    assert lost.status == "failed"
    assert "Spot instance interrupted" in (lost.error or "")
    (line,) = [b for b in nodes.bill() if job_uid in b["jobs"]]
    assert line["spot"] is True
    assert line["terminated_at"] == node.interrupted_at  # billed up to the moment EC2 took it
