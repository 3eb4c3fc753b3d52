"""Pipeline presets: loading, planning with a manifest, overrides, and every cryoSPARC name."""

from __future__ import annotations

import re
from typing import Any

import pytest
from cryopilot.core.errors import ManifestError
from cryopilot.domain.manifest import Manifest, manifest_from_dict
from cryopilot.domain.placement import lane_nodes, plan
from cryopilot.domain.presets import Preset, expand, job_types, load_preset, preset_names
from cryopilot.domain.reference import PIXEL_SIZE_TOLERANCE, SAME_PIXEL_SIZE, ReferenceInputs
from cryopilot.protocol.stage import Resample
from cryopilot_sim.clock import VirtualClock
from cryopilot_sim.cryosparc_standin import STAGE_OF_TYPE, CryoSparcStandIn, load_profiles

from tests.conftest import cgrp_reference

DATA_DIR = "/fsx/datasets/CGRP-2026-11/"
REFERENCE = cgrp_reference()


def manifest(kind: str = "movies", **extra: Any) -> Manifest:
    doc: dict[str, Any] = {
        "dataset": "CGRP-2026-11",
        "input": {"kind": kind, "glob": "movies/*.tif"},
        "acquisition": {"pixel_size_A": 0.83, "voltage_kV": 300, "cs_mm": 2.7, "total_dose_e_per_A2": 60},
        "particle": {"diameter_A": 120},
    }
    doc.update(extra)
    return manifest_from_dict(doc)


def test_both_presets_load() -> None:
    assert preset_names() == ["micrographs", "movies", "repeat"]
    movies = load_preset("movies")
    assert [s.id for s in movies.stages] == [
        "import",
        "motion",
        "ctf",
        "pick",
        "extract",
        "class2d",
        "select2d",
        "abinit",
        "hetero",
        "reextract",
        "nurefine",
    ]
    mics = load_preset("micrographs")
    assert "motion" not in [s.id for s in mics.stages]
    assert mics.stages[0].job_type == "import_micrographs"


def test_unknown_preset_names_the_known_ones() -> None:
    with pytest.raises(ManifestError, match="micrographs, movies, repeat"):
        load_preset("tomography")
    with pytest.raises(ManifestError, match="unknown preset"):
        plan(manifest(pipeline={"preset": "nope"}), data_dir=DATA_DIR)


def test_movies_plan_lanes_gpus_and_manifest_values() -> None:
    stages = {s.id: s for s in plan(manifest(symmetry="C2"), data_dir=DATA_DIR)}
    assert list(stages)[-3:] == ["hetero5", "reextract", "nurefine"]
    expect = {
        "import": ("gpu8", 0),  # a worker job: on a lane, the one motion correction uses next
        "motion": ("gpu8", 8),
        "ctf": ("gpu8", 8),
        "pick": ("gpu1", 1),
        "extract": ("gpu8", 8),
        "class2d": ("gpu4", 4),  # the preset's placement: see test_placement_*
        "select2d": (None, 0),
        "abinit": ("gpu1", 1),
        "hetero1": ("gpu1", 1),
        "reextract": ("gpu8", 8),
        "nurefine": ("gpu1", 1),
    }
    for sid, (lane, gpus) in expect.items():
        assert (stages[sid].lane, stages[sid].gpus) == (lane, gpus), sid
        if "compute_num_gpus" in stages[sid].params:
            assert stages[sid].params["compute_num_gpus"] == gpus
    imp = stages["import"].params
    assert imp["blob_paths"] == DATA_DIR + "movies/*.tif"
    assert imp["psize_A"] == 0.83
    assert imp["accel_kv"] == 300
    assert imp["total_dose_e_per_A2"] == 60
    assert "gainref_path" not in imp  # no gain reference in the manifest: parameter dropped
    assert stages["pick"].params["diameter"] == 120
    box = stages["extract"].params["box_size_pix"]
    assert box % 2 == 0
    assert box >= 1.5 * 120 / 0.83
    assert stages["nurefine"].params["refine_symmetry"] == "C2"
    assert stages["select2d"].decision is not None
    assert stages["select2d"].decision.kind == "select_2d_classes"
    assert stages["hetero3"].decision is not None
    assert stages["hetero3"].decision.kind == "choose_hetero_class"
    assert stages["motion"].time_limit_seconds == 8 * 3600
    # hetero rounds chain: round k takes round k-1's chosen class; re-extraction takes the last round's
    assert [(i.stage, i.output) for i in stages["hetero2"].inputs] == [
        ("hetero1", "particles_class_{chosen}"),
        ("hetero1", "volume_class_*"),
    ]
    assert ("hetero5", "particles_class_{chosen}") in [
        (i.stage, i.output) for i in stages["reextract"].inputs
    ]
    assert ("hetero5", "volume_class_{chosen}") in [(i.stage, i.output) for i in stages["nurefine"].inputs]


def test_gain_reference_is_joined_to_the_data_dir() -> None:
    m = manifest(
        acquisition={
            "pixel_size_A": 0.83,
            "voltage_kV": 300,
            "cs_mm": 2.7,
            "total_dose_e_per_A2": 60,
            "gain_reference": "gain/g.mrc",
        }
    )
    imp = plan(m, data_dir="/fsx/datasets/X")[0]
    assert imp.params["gainref_path"] == "/fsx/datasets/X/gain/g.mrc"


def test_micrographs_plan_uses_symmetry_and_short_abinit() -> None:
    stages = {s.id: s for s in plan(manifest("micrographs", symmetry="C3"), data_dir=DATA_DIR)}
    assert list(stages) == [
        "import",
        "ctf",
        "pick",
        "extract",
        "class2d",
        "select2d",
        "abinit",
        "hetero1",
        "reextract",
        "nurefine",
    ]
    assert stages["ctf"].inputs[0].output == "imported_micrographs"
    assert stages["nurefine"].params["refine_symmetry"] == "C3"
    assert stages["abinit"].params["abinit_num_final_iters"] < 300


def test_overrides_apply_per_stage_and_per_round() -> None:
    m = manifest(
        pipeline={
            "overrides": {
                "class2d": {"class2D_K": 200},
                "hetero": {"rounds": 3, "multirefine_force_hard_class": True},
                "hetero2": {"multirefine_res_init": 12.0},
                "motion": {"compute_num_gpus": 4},
            }
        }
    )
    stages = {s.id: s for s in plan(m, data_dir=DATA_DIR)}
    assert stages["class2d"].params["class2D_K"] == 200
    assert [s for s in stages if s.startswith("hetero")] == ["hetero1", "hetero2", "hetero3"]
    assert all(stages[f"hetero{k}"].params["multirefine_force_hard_class"] is True for k in (1, 2, 3))
    assert stages["hetero2"].params["multirefine_res_init"] == 12.0
    assert "multirefine_res_init" not in stages["hetero1"].params
    assert "rounds" not in stages["hetero1"].params
    assert stages["motion"].params["compute_num_gpus"] == 4


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"motionn": {"compute_num_gpus": 2}}, "motionn"),
        ({"class2d": {"class2d_K": 10}}, "class2d_K"),
        ({"hetero7x": {"multirefine_N": 128}}, "hetero7x"),
        ({"hetero2": {"rounds": 3}}, "rounds"),
        ({"hetero": {"rounds": 0}}, "rounds"),
    ],
)
def test_unknown_stage_or_parameter_is_rejected(overrides: dict[str, Any], named: str) -> None:
    with pytest.raises(ManifestError, match=re.escape(named)):
        plan(manifest(pipeline={"overrides": overrides}), data_dir=DATA_DIR)


def test_override_of_a_stage_the_preset_lacks_is_rejected() -> None:
    with pytest.raises(ManifestError, match="motion"):
        plan(
            manifest("micrographs", pipeline={"overrides": {"motion": {"compute_num_gpus": 8}}}),
            data_dir=DATA_DIR,
        )


def test_every_name_in_every_preset_is_in_the_standin_register() -> None:
    register = CryoSparcStandIn(VirtualClock(), "cgrp").register
    assert len(preset_names()) == 3
    for name in preset_names():
        kind = "micrographs" if name == "micrographs" else "movies"
        reference = REFERENCE if name == "repeat" else None
        stages = plan(manifest(kind, pipeline={"preset": name}), data_dir=DATA_DIR, reference=reference)
        job_type_of: dict[str, str] = {}
        for stage in stages:
            spec = register.get(stage.job_type)
            assert spec is not None, (name, stage.id, stage.job_type)
            assert not set(stage.params) - set(spec.params), (name, stage.id)
            assert set(spec.required_params) <= set(stage.params), (name, stage.id)
            for conn in stage.inputs:
                assert conn.input in spec.inputs, (name, stage.id, conn.input)
                assert conn.stage in job_type_of, (
                    f"{name}: {stage.id} reads {conn.stage}, not planned before it"
                )
                out = conn.output.replace("{chosen}", "0").replace("*", "0")
                assert register[job_type_of[conn.stage]].has_output(out), (name, stage.id, conn.output)
            # only interactive jobs run on the master; every other job on a lane (a worker)
            assert (stage.lane is None) == spec.interactive, (name, stage.id)
            if stage.lane is not None:
                assert stage.gpus <= {"gpu8": 8, "gpu4": 4, "gpu1": 1}[stage.lane]
            job_type_of[stage.id] = stage.job_type


def test_whitepaper_layout_puts_every_gpu_stage_on_gpu8() -> None:
    doc = manifest().model_dump(mode="json")
    doc["pipeline"]["layout"] = "whitepaper"
    stages = plan(Manifest.model_validate(doc), data_dir=DATA_DIR)
    assert {s.lane for s in stages if s.gpus} == {"gpu8"}
    assert {s.id: s.lane for s in stages if not s.gpus} == {"import": "gpu8", "select2d": None}


def test_placement_follows_the_queue_types_it_is_given() -> None:
    # With a slow single-GPU type the 1-GPU stages cannot keep the white paper's pace there: the
    # rule moves them to a faster queue rather than lengthen the run.
    slow = plan(manifest(), data_dir=DATA_DIR, queue_types={"gpu1": "g6.2xlarge"})
    fast = plan(manifest(), data_dir=DATA_DIR)
    assert {s.lane for s in fast if s.gpus == 1} == {"gpu1"}
    assert {s.lane for s in slow if s.gpus == 1} != {"gpu1"}


def test_register_rejects_names_it_does_not_have() -> None:
    register = job_types()
    assert register["homo_abinit"].has_output("volume_class_2")
    assert not register["homo_abinit"].has_output("volume_class_x")
    assert not register["nonuniform_refine_new"].has_output("map")
    assert "compute_num_gpus" not in register["select_2D"].params


def test_register_low_pass_defaults_are_the_sources_ones() -> None:
    """The initial low-pass defaults as the scipion-em-cryosparc2 protocols send them."""
    register = job_types()
    assert register["nonuniform_refine_new"].params["refine_res_init"]["default"] == 30
    assert register["hetero_refine"].params["multirefine_res_init"]["default"] == 20


def test_register_entries_cite_sources_and_match_profiles() -> None:
    for name, spec in job_types().items():
        assert spec.source.strip(), name
        assert name in STAGE_OF_TYPE
    stages = set(load_profiles()["stage_gpus"])
    assert set(STAGE_OF_TYPE.values()) | {"reextract"} == stages
    # GPUs per stage agree with Table 1
    gpus = load_profiles()["stage_gpus"]
    for stage in plan(manifest(), data_dir=DATA_DIR):
        base = stage.id.rstrip("0123456789")
        assert stage.gpus == gpus[base], stage.id


def test_the_lanes_the_agent_speaks_are_the_queue_registry() -> None:
    """protocol.stage.Lane (what the head node accepts) names the same queues as core.queues."""
    from typing import get_args

    from cryopilot.core.queues import GPU_QUEUES, LANES, NOMINAL_QUEUE_GPUS, SPOT_QUEUES
    from cryopilot.protocol.stage import Lane

    assert get_args(Lane) == LANES == GPU_QUEUES + SPOT_QUEUES
    assert tuple(NOMINAL_QUEUE_GPUS) == LANES


# --- override values: their parameter's type, range and path rules (job_types.yaml) -------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"motion": {"compute_num_gpus": "lots"}},
            "motion.compute_num_gpus: must be an integer (got 'lots')",
        ),
        ({"motion": {"compute_num_gpus": 2.0}}, "motion.compute_num_gpus: must be an integer (got 2.0)"),
        ({"motion": {"compute_num_gpus": True}}, "motion.compute_num_gpus: must be an integer (got True)"),
        ({"motion": {"compute_num_gpus": 0}}, "motion.compute_num_gpus: must be from 1 to 8 (got 0)"),
        ({"motion": {"compute_num_gpus": 1000}}, "motion.compute_num_gpus: must be from 1 to 8 (got 1000)"),
        (
            {"hetero": {"multirefine_res_init": "20"}},
            "hetero.multirefine_res_init: must be a number (got '20')",
        ),
        ({"hetero": {"multirefine_res_init": 0.5}}, "hetero.multirefine_res_init: must be from 1 to 100"),
        ({"class2d": {"compute_use_ssd": "no"}}, "class2d.compute_use_ssd: must be true or false (got 'no')"),
        ({"class2d": {"compute_use_ssd": 0}}, "class2d.compute_use_ssd: must be true or false (got 0)"),
        (
            {"import": {"blob_paths": "/etc/*"}},
            "import.blob_paths: must be relative to the manifest's folder",
        ),
        ({"import": {"blob_paths": None}}, "import.blob_paths: must be set"),
        ({"import": {"gainref_path": "../../../etc/passwd"}}, "import.gainref_path: must not contain '..'"),
        ({"import": {"gainref_path": "gain/../../x.mrc"}}, "import.gainref_path: must not contain '..'"),
        ({"import": {"defect_path": "s3://other-bucket/secret"}}, "import.defect_path: must be relative"),
        ({"import": {"defect_path": "file:///etc/passwd"}}, "import.defect_path: must be relative"),
        (
            {"import": {"defect_path": "gain/x\nrm -rf /"}},
            "import.defect_path: must not contain control characters",
        ),
        ({"import": {"defect_path": 3}}, "import.defect_path: must be text (got 3)"),
        ({"nurefine": {"refine_symmetry": "C0"}}, "nurefine.refine_symmetry: must be a point group"),
        ({"abinit": {"abinit_symmetry": "C121"}}, "abinit.abinit_symmetry: must be a point group"),
        ({"nurefine": {"refine_relax_symmetry": "a b"}}, "nurefine.refine_relax_symmetry: must match"),
    ],
)
def test_an_override_value_must_fit_its_parameter(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ManifestError) as info:
        plan(manifest(pipeline={"overrides": overrides}), data_dir=DATA_DIR)
    assert str(info.value).startswith("pipeline.overrides.")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_path_overrides_are_joined_to_the_data_dir_and_null_restores_the_default() -> None:
    m = manifest(
        pipeline={
            "overrides": {
                "import": {"gainref_path": "gain/other.mrc", "defect_path": "gain/defects.txt"},
                "class2d": {"class2D_window_inner_A": None},
            }
        }
    )
    stages = {s.id: s for s in plan(m, data_dir=DATA_DIR)}
    assert stages["import"].params["gainref_path"] == DATA_DIR + "gain/other.mrc"
    assert stages["import"].params["defect_path"] == DATA_DIR + "gain/defects.txt"
    assert "class2D_window_inner_A" not in stages["class2d"].params


def test_gpus_are_bounded_by_the_lane_the_stage_runs_on() -> None:
    # class2d is placed on gpu4 (4 GPUs per node): 4 fits, 8 does not; on the white paper's
    # layout every GPU stage is on gpu8, where 8 fits
    ok = {
        s.id: s
        for s in plan(
            manifest(pipeline={"overrides": {"class2d": {"compute_num_gpus": 4}}}), data_dir=DATA_DIR
        )
    }
    assert (ok["class2d"].lane, ok["class2d"].params["compute_num_gpus"]) == ("gpu4", 4)
    with pytest.raises(
        ManifestError,
        match=re.escape(
            "pipeline.overrides.class2d.compute_num_gpus: 8 GPUs, "
            "but stage class2d runs on lane gpu4 (g6e.12xlarge, 4 GPUs per node)"
        ),
    ):
        plan(manifest(pipeline={"overrides": {"class2d": {"compute_num_gpus": 8}}}), data_dir=DATA_DIR)
    wide = manifest(pipeline={"layout": "whitepaper", "overrides": {"class2d": {"compute_num_gpus": 8}}})
    assert {s.id: s for s in plan(wide, data_dir=DATA_DIR)}["class2d"].params["compute_num_gpus"] == 8


def test_gpus_are_bounded_by_the_instance_types_the_lane_may_run() -> None:
    # the deployment's gpu8 type, and any of its capacity-fallback types, bound gpu8's jobs: the
    # catalogue's GPUs of the smallest, as the cluster's lanes get them (clusterconfig.queue_gpus)
    four = {"gpu8": "g5.12xlarge", "gpu4": "g6e.12xlarge", "gpu1": "p5.4xlarge"}
    rule = "8 GPUs, but stage ctf runs on lane gpu8 (g5.12xlarge, 4 GPUs per node)"
    eight = manifest("micrographs", pipeline={"overrides": {"ctf": {"compute_num_gpus": 8}}})
    with pytest.raises(ManifestError, match=re.escape(f"pipeline.overrides.ctf.compute_num_gpus: {rule}")):
        plan(eight, data_dir=DATA_DIR, gpu8_fallback_types=["g6e.48xlarge", "g5.12xlarge"])
    # the white paper's layout runs every GPU stage on gpu8, whatever type the deployment gave it
    whitepaper = {"layout": "whitepaper", "overrides": {"ctf": {"compute_num_gpus": 8}}}
    with pytest.raises(ManifestError, match=re.escape(f"pipeline.overrides.ctf.compute_num_gpus: {rule}")):
        plan(manifest("micrographs", pipeline=whitepaper), data_dir=DATA_DIR, queue_types=four)
    # the preset's own 8 GPUs: the message names the preset
    with pytest.raises(ManifestError, match=re.escape(f"preset micrographs: {rule}")):
        plan(manifest("micrographs"), data_dir=DATA_DIR, gpu8_fallback_types=["g5.12xlarge"])
    # 8-GPU fallback types, and a type the catalogue does not list (its queue's nominal 8), fit
    assert plan(eight, data_dir=DATA_DIR, gpu8_fallback_types=["p5.48xlarge", "p6-b200.48xlarge"])
    assert lane_nodes(None) == {
        "gpu8": ("p4d.24xlarge", 8),
        "gpu4": ("g6e.12xlarge", 4),
        "gpu1": ("p5.4xlarge", 1),
    }
    assert lane_nodes(four, ["p5.48xlarge"])["gpu8"] == ("g5.12xlarge", 4)


def test_every_register_parameter_says_what_an_override_may_be() -> None:
    for name, spec in job_types().items():
        for param, pspec in spec.params.items():
            assert pspec["type"] in ("integer", "number", "boolean", "string"), (name, param)
            if pspec["type"] in ("integer", "number"):
                assert pspec["min"] <= pspec["max"], (name, param)
            if pspec["type"] == "string":
                assert pspec.get("format") in ("path", "symmetry") or pspec.get("pattern"), (name, param)


# --- the repeat preset and its reference ----------------------------------------------------------


def repeat_plan(**extra: Any) -> dict[str, Any]:
    return {
        s.id: s
        for s in plan(
            manifest(pipeline={"preset": "repeat", **extra}), data_dir=DATA_DIR, reference=REFERENCE
        )
    }


def test_repeat_preset_skips_blob_picking_2d_and_ab_initio() -> None:
    stages = repeat_plan()
    assert list(stages) == [
        "import_reference",
        "import_decoy",
        "import_templates",
        "import",  # last of the imports: motion correction reads it next
        "motion",
        "ctf",
        "pick",
        "extract",
        "hetero1",
        "hetero2",
        "reextract",
        "nurefine",
    ]
    types = {s.job_type for s in stages.values()}
    assert not types & {"blob_picker_gpu", "class_2D_new", "select_2D", "homo_abinit"}
    assert stages["pick"].job_type == "template_picker_gpu"
    assert [s.decision.kind for s in stages.values() if s.decision] == ["choose_hetero_class"] * 2
    # the same rule and numbers as the full pipeline's
    full = {s.id: s for s in plan(manifest(), data_dir=DATA_DIR)}
    assert stages["hetero1"].decision == full["hetero1"].decision


def test_repeat_preset_takes_the_references_files_box_and_pixel_size() -> None:
    stages = repeat_plan()
    ref, decoy, templates = stages["import_reference"], stages["import_decoy"], stages["import_templates"]
    assert ref.params == {
        "volume_blob_path": REFERENCE.map_path,
        "volume_out_name": "map",
        "volume_psize": 0.83,
    }
    assert decoy.params["volume_blob_path"] == REFERENCE.mask_path
    # the class averages at their own pixel size (Fourier-cropped particles), not the map's
    assert templates.params == {
        "templates_blob_path": REFERENCE.templates_path,
        "templates_psize": REFERENCE.templates_pixel_size_A,
    }
    assert REFERENCE.templates_pixel_size_A == pytest.approx(0.83 * 218 / 110)
    assert {s.lane for s in (ref, decoy, templates)} == {"gpu8"}  # worker jobs, on motion's queue
    # template picking at the reference's box: its templates feed the picker, extraction uses its box
    assert [(i.input, i.stage, i.output) for i in stages["pick"].inputs] == [
        ("micrographs", "ctf", "exposures"),
        ("templates", "import_templates", "imported_templates"),
    ]
    assert stages["extract"].params["box_size_pix"] == 218
    assert stages["extract"].params["bin_size_pix"] == 110
    assert stages["reextract"].params["box_size_pix"] == 218
    # hetero seeded with the low-passed reference (class 0) and the decoy; fewer rounds
    assert [(i.input, i.stage, i.output) for i in stages["hetero1"].inputs] == [
        ("particles", "extract", "particles"),
        ("volume", "import_reference", "imported_volume_1"),
        ("volume", "import_decoy", "imported_volume_1"),
    ]
    assert 20 <= stages["hetero1"].params["multirefine_res_init"] <= 30
    # non-uniform refinement from the low-passed reference, not from a hetero class
    assert [(i.input, i.stage, i.output) for i in stages["nurefine"].inputs] == [
        ("particles", "reextract", "particles"),
        ("volume", "import_reference", "imported_volume_1"),
    ]
    assert 20 <= stages["nurefine"].params["refine_res_init"] <= 30


def test_a_reference_at_the_datas_pixel_size_is_imported_as_it_is() -> None:
    stages = repeat_plan()
    assert all(s.resample is None for s in stages.values())
    # 0.05 % off (SAME_PIXEL_SIZE) is the same pixel size
    near = REFERENCE.model_copy(update={"pixel_size_A": 0.83 * (1 + SAME_PIXEL_SIZE)})
    planned = plan(manifest(pipeline={"preset": "repeat"}), data_dir=DATA_DIR, reference=near)
    assert all(s.resample is None for s in planned)
    # presets without a reference file resample nothing
    assert all(s.resample is None for s in plan(manifest(), data_dir=DATA_DIR))


@pytest.mark.parametrize("ref_pixel", [0.84, 0.82, 0.8305])
def test_a_reference_a_little_off_the_datas_pixel_size_is_resampled_before_its_import(
    ref_pixel: float,
) -> None:
    off = REFERENCE.model_copy(update={"pixel_size_A": ref_pixel})
    planned = plan(manifest(pipeline={"preset": "repeat"}), data_dir=DATA_DIR, reference=off)
    stages = {s.id: s for s in planned}
    assert {s.id for s in planned if s.resample is not None} == {"import_reference", "import_decoy"}
    for sid in ("import_reference", "import_decoy"):
        stage = stages[sid]
        wanted = Resample(path="volume_blob_path", pixel_size="volume_psize", from_A=ref_pixel, to_A=0.83)
        assert stage.resample == wanted
        assert stage.params["volume_psize"] == ref_pixel  # the file's; the agent gives the job the new one
    # the class averages are imported at their own pixel size, not resampled
    assert stages["import_templates"].params["templates_psize"] == REFERENCE.templates_pixel_size_A
    # the box is the reference's: the resampled files keep it
    assert stages["extract"].params["box_size_pix"] == REFERENCE.box_pix
    # the projections option makes its templates from the resampled map: nothing else to resample
    projected = plan(
        manifest(pipeline={"preset": "repeat", "options": {"templates": "projections"}}),
        data_dir=DATA_DIR,
        reference=off,
    )
    assert {s.id for s in projected if s.resample is not None} == {"import_reference", "import_decoy"}


def test_a_pixel_size_override_beyond_the_tolerance_is_refused_not_resampled() -> None:
    with pytest.raises(ManifestError) as err:
        repeat_plan(overrides={"import_reference": {"volume_psize": 0.9}})
    assert str(err.value) == (
        "preset repeat: import_reference.volume_psize: 0.9 Å is 8.4% from the data's 0.83 Å; at most 2%"
        " can be resampled"
    )
    assert PIXEL_SIZE_TOLERANCE == 0.02


def test_a_preset_that_resamples_a_parameter_it_does_not_have_is_refused() -> None:
    raw = load_preset("repeat").model_dump()
    raw["stages"][0]["resample"] = {"path": "volume_path", "pixel_size": "volume_psize", "to": "${x}"}
    with pytest.raises(ValueError, match="resample names 'volume_path', which is not one of its params"):
        Preset.model_validate(raw)


def test_repeat_preset_overrides_and_a_forced_full_run() -> None:
    stages = repeat_plan(overrides={"hetero": {"rounds": 1, "multirefine_res_init": 20}})
    assert [s for s in stages if s.startswith("hetero")] == ["hetero1"]
    assert stages["hetero1"].params["multirefine_res_init"] == 20
    # a manifest that asks for the full pipeline gets it, reference or not
    full = plan(manifest(pipeline={"preset": "movies"}), data_dir=DATA_DIR, reference=REFERENCE)
    assert "abinit" in [s.id for s in full]


def test_expand_resolves_reference_values_and_refuses_them_without_a_reference() -> None:
    m = manifest(pipeline={"preset": "repeat"})
    stages = {s.id: s for s in expand(m, data_dir=DATA_DIR, reference=REFERENCE)}
    assert stages["import_reference"].params["volume_blob_path"] == REFERENCE.map_path
    assert stages["import_reference"].params["volume_psize"] == 0.83  # a number stays a number
    with pytest.raises(ManifestError) as info:
        expand(m, data_dir=DATA_DIR)
    assert str(info.value) == (
        "pipeline.preset: preset repeat needs a campaign reference (import_reference.volume_blob_path"
        " is ${reference.map_path}) and this run has none; a full run is pipeline: {preset: movies}"
    )
    with pytest.raises(ManifestError, match="needs a campaign reference"):
        plan(m, data_dir=DATA_DIR)
    # a reference without a field the preset needs: the field is named
    bare = ReferenceInputs(map_path="/fsx/reference/x/map.mrc", pixel_size_A=0.83)
    with pytest.raises(ManifestError) as info:
        expand(m, data_dir=DATA_DIR, reference=bare)
    assert str(info.value) == (
        "preset repeat: import_decoy.volume_blob_path: ${reference.mask_path}: "
        "the run's reference has no mask_path"
    )
    no_box = REFERENCE.model_copy(update={"box_pix": None})
    with pytest.raises(
        ManifestError, match=re.escape("${reference.box_pix}: the run's reference has no box_pix")
    ):
        expand(m, data_dir=DATA_DIR, reference=no_box)
    # the other presets do not need one, and ignore one they are given
    assert expand(manifest(), data_dir=DATA_DIR, reference=REFERENCE) == expand(manifest(), data_dir=DATA_DIR)


def test_which_presets_need_a_reference_and_the_one_a_full_run_would_leave() -> None:
    from cryopilot.domain.presets import assumed_reference, needs_reference

    assert [n for n in preset_names() if needs_reference(n)] == ["repeat"]
    m = manifest()
    ref = assumed_reference(m, "/fsx/reference/c1/")
    full = {s.id: s for s in expand(m, data_dir=DATA_DIR)}
    assert (ref.pixel_size_A, ref.box_pix) == (0.83, full["extract"].params["box_size_pix"])
    assert ref.map_path == "/fsx/reference/c1/map.mrc"
    repeat = {
        s.id: s for s in expand(manifest(pipeline={"preset": "repeat"}), data_dir=DATA_DIR, reference=ref)
    }
    assert repeat["extract"].params["box_size_pix"] == full["extract"].params["box_size_pix"]
    assert repeat["extract"].params["bin_size_pix"] == full["extract"].params["bin_size_pix"]


def test_repeat_templates_default_to_the_references_class_averages() -> None:
    """The issue asks for the reference's selected 2D class averages: the default route, by
    Import Templates (whose parameter and output names are unverified: see job_types.yaml)."""
    stages = repeat_plan()
    assert "create_templates" not in stages
    assert stages["import_templates"].job_type == "import_templates"
    assert [(i.stage, i.output) for i in stages["pick"].inputs if i.input == "templates"] == [
        ("import_templates", "imported_templates")
    ]
    assert repeat_plan(options={"templates": "class_averages"}).keys() == stages.keys()


def test_repeat_templates_from_projections_of_the_reference_map() -> None:
    """``pipeline.options.templates: projections``: Create Templates projects the imported
    reference map (input volume, output templates, as CryoWizard drives it); no Import Templates."""
    stages = repeat_plan(options={"templates": "projections"})
    assert list(stages)[:4] == ["import_reference", "import_decoy", "create_templates", "import"]
    assert "import_templates" not in stages
    create = stages["create_templates"]
    assert (create.job_type, create.lane, create.gpus, create.params) == ("create_templates", "gpu8", 0, {})
    assert [(i.input, i.stage, i.output) for i in create.inputs] == [
        ("volume", "import_reference", "imported_volume_1")
    ]
    assert [(i.input, i.stage, i.output) for i in stages["pick"].inputs] == [
        ("micrographs", "ctf", "exposures"),
        ("templates", "create_templates", "templates"),
    ]
    spec = job_types()["create_templates"]
    assert "custom-workflow" in spec.source or "tools-workflow" in spec.source
    assert "cryowizard" in spec.source


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"templates": "blobs"},
            "pipeline.options.templates: must be one of class_averages, projections (got 'blobs')",
        ),
        (
            {"picker": "topaz"},
            "pipeline.options.picker: preset repeat has no option 'picker' (options: templates)",
        ),
    ],
)
def test_a_preset_option_it_does_not_have_is_refused_in_one_line(options: dict, message: str) -> None:
    with pytest.raises(ManifestError) as info:
        repeat_plan(options=options)
    assert str(info.value) == message
    # the full pipeline has no options at all
    with pytest.raises(ManifestError, match=r"preset movies has no option 'templates' \(options: none\)"):
        plan(manifest(pipeline={"options": {"templates": "projections"}}), data_dir=DATA_DIR)


def test_an_override_of_a_stage_the_run_will_not_have_is_refused_not_ignored() -> None:
    # a stage the options leave out
    with pytest.raises(ManifestError) as info:
        repeat_plan(
            options={"templates": "projections"},
            overrides={"import_templates": {"templates_psize": 0.83}},
        )
    assert str(info.value) == (
        "pipeline.overrides.import_templates: stage 'import_templates' of preset repeat runs only with"
        " pipeline.options templates: class_averages; this run has templates: projections"
    )
    # a round past the last one
    with pytest.raises(ManifestError) as info:
        repeat_plan(overrides={"hetero3": {"multirefine_res_init": 20}})
    assert str(info.value) == (
        "pipeline.overrides.hetero3: this run has 2 round(s) of hetero (hetero1 to hetero2;"
        " hetero.rounds sets how many)"
    )
    # with a third round asked for, the same override applies
    stages = repeat_plan(overrides={"hetero": {"rounds": 3}, "hetero3": {"multirefine_res_init": 20}})
    assert stages["hetero3"].params["multirefine_res_init"] == 20
