"""The white paper's datasets on the cluster's file systems: the old sizing runs out of space, the
storage model's does not.

Each run is the real agent (through cryosparc-tools) driving the cryoSPARC stand-in, whose jobs
write their bytes (``cryopilot_sim.cryosparc_bytes``: the storage model's per-item sizes, the jobs'
own counts) onto the volumes of the cluster configuration the controller's own code builds:

* old sizing: the request without the model (FSx 1,200 GiB) and cryoSPARC's projects on ``/shared``
  (the 500 GiB EBS volume), as cryopilot ran before;
* new sizing: FSx sized by the storage model from the dataset as Validate measures it (the profile's
  bytes and movies), projects on ``/fsx/projects``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from cryopilot.core.naming import cluster_name_for
from cryopilot.domain import storage
from cryopilot.domain.catalogue import get_profile
from cryopilot.domain.clusterconfig.build import build_cluster_config
from cryopilot.domain.clusterconfig.params import ClusterParams, ClusterRequest
from cryopilot.domain.manifest import Manifest, manifest_from_dict
from cryopilot.domain.placement import plan
from cryopilot.protocol.stage import PlannedStage
from cryopilot_sim.clock import VirtualClock
from cryopilot_sim.cryosparc_standin import CryoSparcStandIn
from cryopilot_sim.filesystems import GIB, Volumes

from tests.integration.test_agent_standin import EMAIL, PASSWORD, Agent

pytestmark = pytest.mark.slow

MANIFESTS = Path(__file__).resolve().parents[2] / "events" / "manifests"
OLD_PROJECT_ROOT = "/shared/cryosparc/projects"
NEW_PROJECT_ROOT = "/fsx/projects"
#: Simulated time between two status polls: the stages take hours; fewer polls, a faster test.
STEP_SECONDS = 4 * 3600.0

PARAMS = ClusterParams(
    region="us-east-1",
    head_node_subnet_id="subnet-0123456789abcdef0",
    compute_subnet_ids=["subnet-0aaaaaaaaaaaaaaa1"],
    licence_secret_arn="arn:aws:secretsmanager:us-east-1:123456789012:secret:cryosparc-AbCdEf",
    bootstrap_s3_uri="s3://cryopilot-artifacts/headnode/",
    results_s3_uri="s3://cryopilot-results/",
)


def _manifest(profile: str) -> Manifest:
    """The example manifest, with two heterogeneous-refinement rounds (rounds write no stacks)."""
    doc = yaml.safe_load((MANIFESTS / f"{profile}.yaml").read_text())
    doc["pipeline"].setdefault("overrides", {})["hetero"] = {"rounds": 2}
    return manifest_from_dict(doc)


def _request(run_id: str, **fsx: int) -> ClusterRequest:
    return ClusterRequest(
        run_id=run_id,
        dataset=run_id,
        cluster_name=cluster_name_for(run_id),
        data_s3_uri="s3://cryopilot-input/datasets/x/",
        results_s3_uri=f"s3://cryopilot-results/runs/{run_id}/",
        stack_name="cryopilot",
        **fsx,
    )


def _run(profile: str, stages: list[PlannedStage], request: ClusterRequest, project_root: str) -> dict:
    """Every stage in turn until one does not complete; the stages' states and the volumes."""
    clock = VirtualClock()
    config = build_cluster_config(request, PARAMS).to_dict()
    with CryoSparcStandIn(clock, profile, email=EMAIL, password=PASSWORD) as cs:
        cs.volumes = Volumes.from_cluster_config(config)
        agent = Agent(cs.base_url, clock)
        agent.env["CRYOPILOT_PROJECT_ROOT"] = project_root
        states: dict[str, str] = {}
        errors: dict[str, str | None] = {}
        for spec in stages:
            agent.submit(request.run_id, spec)
            st = agent.status(request.run_id, spec.id).stages[0]
            while st.state in ("queued", "running"):
                clock.advance(STEP_SECONDS)
                st = agent.status(request.run_id, spec.id).stages[0]
            states[spec.id] = st.state
            errors[spec.id] = st.jobs[0].error if st.jobs else None
            if st.state != "completed":
                break
        return {"states": states, "errors": errors, "volumes": cs.volumes}


@pytest.mark.parametrize("profile", ["cgrp", "glp1r"])
def test_the_old_sizing_runs_out_of_space_and_the_storage_model_does_not(profile: str) -> None:
    manifest = _manifest(profile)
    stages = plan(manifest, data_dir="/fsx/data/")
    prof = get_profile(profile)

    old = _run(profile, stages, _request(f"{profile}-old"), OLD_PROJECT_ROOT)
    assert old["volumes"].by_name("fsx").capacity_bytes == 1200 * GIB
    assert old["states"]["motion"] == "failed"
    assert "No space left on device" in (old["errors"]["motion"] or "")
    assert list(old["states"]) == ["import", "motion"]

    measured = storage.DataSize(
        bytes=round(prof.size_tb * 10**12), objects=prof.movies + 1, files=prof.movies
    )
    fsx = storage.plan_for_manifest(manifest, stages, measured)
    request = _request(
        f"{profile}-new",
        fsx_storage_gib=fsx.capacity_gib,
        fsx_throughput_mb_per_tib=fsx.throughput_mb_per_tib,
    )
    new = _run(profile, stages, request, NEW_PROJECT_ROOT)
    assert set(new["states"].values()) == {"completed"}, new["states"]
    assert list(new["states"]) == [s.id for s in stages]
    volume = new["volumes"].by_name("fsx")
    assert volume.capacity_bytes == fsx.capacity_gib * GIB == 4800 * GIB
    # the raw data, the micrographs and both particle stacks are on FSx; /shared got none of it
    assert volume.peak > prof.size_tb * 10**12
    assert volume.peak <= volume.capacity_bytes
    assert new["volumes"].by_name("shared").peak == 0


def test_a_glp1r_run_through_the_state_machine_gets_the_fsx_its_data_needs() -> None:
    """The whole chain on the local stack: the GLP-1R dataset's listing (5,700 movies, 1.9 TB) is
    measured by Validate, the cluster is created with the model's FSx, the stand-in's jobs write
    their bytes onto it, and the run succeeds (``bench.run_one`` raises if it does not)."""
    from cryopilot_sim import bench

    r = bench.run_one("glp1r", "cryopilot")
    assert r["status"] == "SUCCEEDED"
    assert (r["fsx_capacity_gib"], r["fsx_throughput_mb_per_tib"]) == (4800, 250)
    assert 1.9e12 / GIB < r["fsx_peak_gib"] <= r["fsx_capacity_gib"]
    assert r["fsx_cost_usd"] > 0
