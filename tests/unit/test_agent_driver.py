"""The agent's reading of cryoSPARC's job documents (cryosparc-tools' ``Job`` model), without a server."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from cryopilot_agent.driver import job_info, last_error, particle_files, run_started_at
from cryosparc.models.job import Job
from cryosparc.models.job_spec import Output

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def job_model(**fields: Any) -> Job:
    """A job document with the fields cryosparc-tools' ``Job`` requires, and ``fields``."""
    doc: dict[str, Any] = {
        "uid": "J7",
        "uid_num": 7,
        "project_uid": "P1",
        "project_uid_num": 1,
        "job_dir": "J7",
        "job_dir_size_last_updated": T0.isoformat(),
        "status_num": 0,
        "build_errors": [],
        "spec": {
            "type": "nonuniform_refine_new",
            "ui_tile_width": 1,
            "ui_tile_height": 1,
            "resource_spec": {"cpu": 4, "gpu": 1, "ram": 4},
        },
    }
    doc.update(fields)
    return Job.model_validate(doc)


def at(seconds: float) -> str:
    return datetime.fromtimestamp(T0.timestamp() + seconds, UTC).isoformat()


def test_the_error_reported_is_the_last_that_is_not_a_warning() -> None:
    job = job_model(
        status="failed",
        errors_run=[
            {"message": "CUDA out of memory", "warning": False},
            {"message": "Could not write the thumbnail", "warning": True},
        ],
    )
    assert last_error(job) == "CUDA out of memory"
    assert job_info(job).error == "CUDA out of memory"
    only_warnings = job_model(status="completed", errors_run=[{"message": "slow disk", "warning": True}])
    assert last_error(only_warnings) is None
    assert last_error(job_model(status="completed")) is None


@pytest.mark.parametrize(
    ("status", "times", "expected"),
    [
        ("launched", {"started_at": at(0)}, None),  # submitted to its lane, waiting for its node
        ("started", {"started_at": at(0), "launched_at": at(400)}, None),
        ("running", {"started_at": at(0), "launched_at": at(400), "running_at": at(430)}, 430),
        ("completed", {"started_at": at(0), "launched_at": at(400), "running_at": at(430)}, 430),
        ("completed", {"started_at": at(0)}, 0),  # ran, but no running_at recorded
        ("killed", {"started_at": at(0)}, None),  # killed while it waited for its node
        ("failed", {"started_at": at(0), "running_at": at(430)}, 430),
    ],
)
def test_a_job_starts_when_its_main_process_runs(
    status: str, times: dict[str, str], expected: float | None
) -> None:
    job = job_model(status=status, **times)
    start = run_started_at(job)
    assert (None if start is None else start.timestamp() - T0.timestamp()) == expected
    reported = job_info(job).started_at
    assert reported == (None if expected is None else T0.timestamp() + expected)


def result(name: str, metafiles: list[str], *, passthrough: bool) -> dict[str, Any]:
    versions = list(range(len(metafiles)))
    return {
        "name": name,
        "dtype": name,
        "versions": versions,
        "metafiles": metafiles,
        "num_items": [10] * len(metafiles),
        "passthrough": passthrough,
    }


def test_particle_files_are_each_latest_file_of_the_output_main_first() -> None:
    """As tools' tests/conftest.py shows an output: computed slots share one file per version,
    passed-through slots share the passthrough file (or have none yet); the order of the results
    says nothing."""
    iterations = ["J9/J9_000_particles.cs", "J9/J9_004_particles.cs", "J9/J9_008_particles.cs"]
    output = Output.model_validate(
        {
            "type": "particle",
            "title": "Particles",
            "results": [
                result("location", ["J9/J9_passthrough_particles.cs"], passthrough=True),
                result("blob", iterations, passthrough=False),
                result("pick_stats", [], passthrough=True),
                result("ctf", iterations, passthrough=False),
                result("pick_stats", ["J9/J9_passthrough_particles.cs"], passthrough=True),
                result("alignments3D", ["J9/J9_008_alignments.cs"], passthrough=False),
            ],
        }
    )
    assert particle_files(output) == [
        ("particles", "J9/J9_008_particles.cs"),
        ("particles", "J9/J9_008_alignments.cs"),
        ("particles_passthrough", "J9/J9_passthrough_particles.cs"),
    ]
    only_passed = Output.model_validate(
        {
            "type": "particle",
            "title": "Particles",
            "results": [result("location", ["J9/p.cs"], passthrough=True)],
        }
    )
    assert particle_files(only_passed) == [("particles_passthrough", "J9/p.cs")]


def test_a_planned_path_on_fsx_is_found_where_this_node_mounts_it() -> None:
    """Planned paths are the cluster's (below the configuration's FSx MountDir); the agent reads
    them where its node mounts the file system: the same directory on a head node."""
    from cryopilot.domain.clusterconfig.mounts import FSX_MOUNT_DIR
    from cryopilot_agent.driver import CLUSTER_FSX_MOUNT, Driver

    assert CLUSTER_FSX_MOUNT == FSX_MOUNT_DIR
    # and the largest map it resamples is the one Validate lets through
    from cryopilot.domain.reference import MAX_RESAMPLE_BOX
    from cryopilot_agent.resample import MAX_BOX

    assert MAX_BOX == MAX_RESAMPLE_BOX
    head_node = Driver(None, project_root="/fsx/projects")  # type: ignore[arg-type]
    assert head_node.on_this_node("/fsx/reference/map.mrc") == "/fsx/reference/map.mrc"
    elsewhere = Driver(None, project_root="/fsx/projects", fsx_mount="/mnt/lustre")  # type: ignore[arg-type]
    assert elsewhere.on_this_node("/fsx/reference/map.mrc") == "/mnt/lustre/reference/map.mrc"
    assert elsewhere.on_this_node("/fsxother/map.mrc") == "/fsxother/map.mrc"
    assert elsewhere.on_this_node("/shared/map.mrc") == "/shared/map.mrc"


def test_a_stage_is_sent_without_the_fields_it_leaves_at_their_default() -> None:
    """An agent of the previous version (its PlannedStage without ``resample``, extra fields
    forbidden) still takes every stage that does not resample; one that does reaches the agent
    whole."""
    import base64

    from cryopilot.protocol.stage import PlannedStage, Resample
    from cryopilot.steps.stage import submit_argv
    from cryopilot_agent.cli import decode_spec
    from pydantic import ConfigDict, create_model

    stage = PlannedStage(
        id="import_reference",
        title="Import reference map",
        job_type="import_volumes",
        lane="gpu8",
        gpus=0,
        params={"volume_blob_path": "/fsx/reference/map.mrc", "volume_psize": 0.84},
        inputs=[],
        time_limit_seconds=3600,
    )
    fields = {name: (f.annotation, f) for name, f in PlannedStage.model_fields.items() if name != "resample"}
    previous = create_model(  # type: ignore[call-overload]
        "PreviousPlannedStage", __config__=ConfigDict(extra="forbid"), **fields
    )
    sent = submit_argv("run-1", stage)[-1]
    assert previous.model_validate_json(base64.b64decode(sent)).model_dump() == {
        k: v for k, v in stage.model_dump().items() if k != "resample"
    }
    assert decode_spec(sent) == stage
    resampled = stage.model_copy(
        update={
            "resample": Resample(path="volume_blob_path", pixel_size="volume_psize", from_A=0.84, to_A=0.83)
        }
    )
    assert decode_spec(submit_argv("run-1", resampled)[-1]) == resampled
