"""Campaigns end to end, through the state machine on one local stack: the first run of a campaign
that succeeds becomes its reference (recorded, its files kept under the campaign's prefix), a later
run of the campaign takes that reference (its cluster gets the reference's data repository
association), its "done" mail compares it with the reference and the campaign, the campaign page
and ``cryopilot campaign`` list every run."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from cryopilot_ops import ops
from cryopilot_sim.clock import VirtualClock
from cryopilot_sim.harness import LocalCloud
from cryosparc import mrc

from tests.conftest import EVENTS

# one worker builds the campaign (a full run, then its repeat) that every test here reads
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("campaigns")]

CAMPAIGN = "CGRP-RAMP1"
CGRP = yaml.safe_load((EVENTS / "manifests" / "cgrp.yaml").read_text())
DATA = {"movies/m0001.tif": b"\x00" * 64, "movies/m0002.tif": b"\x01" * 64, "gain/gain_ref.mrc": b"g" * 32}


def _manifest(dataset: str, compound: str, **extra: Any) -> str:
    """The CGRP manifest of a campaign's compound, naming no preset (the campaign decides)."""
    doc = copy.deepcopy(CGRP)
    del doc["pipeline"]
    doc.update(dataset=dataset, campaign=CAMPAIGN, compound=compound, **extra)
    return yaml.safe_dump(doc, sort_keys=False)


def _solved_elsewhere(cloud: LocalCloud, run_id: str) -> dict[str, Any]:
    """A reference "solved elsewhere": the first run's map, mask and class averages, uploaded to a
    folder of the input bucket, named by ``reference.map`` with its pixel size: 0.84 Å, 1.2 % off
    the data's 0.83 (another session's calibration), so the run resamples it."""
    s3 = cloud.client("s3")
    files = {f["kind"]: f for f in (cloud.run_record(run_id) or {})["results"]["files"]}
    folder = f"s3://{cloud.input_bucket}/references/CGRP/"
    named = {}
    for kind, field in (("map", "map"), ("mask", "mask"), ("class_averages", "templates")):
        body = s3.get_object(Bucket=cloud.results_bucket, Key=files[kind]["key"])["Body"].read()
        s3.put_object(Bucket=cloud.input_bucket, Key=f"references/CGRP/{files[kind]['name']}", Body=body)
        named[field] = folder + files[kind]["name"]
    return {**named, "pixel_size_A": 0.84}


@dataclass
class Campaign:
    cloud: LocalCloud
    first: dict[str, Any]
    second: dict[str, Any]
    wrong: dict[str, Any]
    elsewhere: dict[str, Any]


def _run(cloud: LocalCloud, folder: str, manifest: str) -> dict[str, Any]:
    """Drop a dataset and wait for the one execution it starts."""
    before = {e["executionArn"] for e in cloud.executions()}
    cloud.drop_dataset(folder, manifest, DATA)
    cloud.drain_events()
    (new,) = [e for e in cloud.executions() if e["executionArn"] not in before]
    return cloud.wait_for_execution(new["executionArn"], timeout=300)


def _start_coarse(cloud: LocalCloud, name: str, doc: dict[str, Any]) -> dict[str, Any]:
    """A manual start of ``doc`` (its data uploaded first) polling its stages at most every 30 min,
    for the runs whose stages' timeline does not matter here; the finished execution."""
    s3 = cloud.client("s3")
    for rel, body in DATA.items():
        s3.put_object(Bucket=cloud.input_bucket, Key=f"datasets/{doc['dataset']}/{rel}", Body=body)
    start = {
        "manifest_inline": doc,
        "data_s3_uri": f"s3://{cloud.input_bucket}/datasets/{doc['dataset']}/",
        "settings": {"min_poll_seconds": 1800, "max_poll_seconds": 14400},
    }
    arn = cloud.client("stepfunctions").start_execution(
        stateMachineArn=cloud.state_machine_arn, name=name, input=json.dumps(start)
    )["executionArn"]
    return cloud.wait_for_execution(arn, timeout=300)


@pytest.fixture(scope="module")
def campaign() -> Iterator[Campaign]:
    """Two compounds of one campaign dropped one after the other: the first makes the reference,
    the second repeats from it. Then, started by hand with coarse polls (their timelines do not
    matter here): a run outside any campaign from a map named in its manifest, and a third
    compound whose reference is another protein (the cryoSPARC stand-in's model of a wrong
    reference, for the clusters made from then on)."""
    with LocalCloud(clock=VirtualClock(), profile="cgrp") as cloud:
        first = _run(cloud, "CGRP-CP-0001", _manifest("CGRP-CP-0001", "CP-0001"))
        second = _run(cloud, "CGRP-CP-0002", _manifest("CGRP-CP-0002", "CP-0002"))
        elsewhere_doc = copy.deepcopy(CGRP)
        del elsewhere_doc["pipeline"]
        reference = _solved_elsewhere(cloud, first["name"])
        elsewhere_doc.update(dataset="CGRP-ELSEWHERE", compound="CP-9000", reference=reference)
        elsewhere = _start_coarse(cloud, "CGRP-ELSEWHERE-manual", elsewhere_doc)
        cloud.cryosparc_setup.append(lambda cs: cs.wrong_reference("/fsx/reference/*"))
        wrong = _start_coarse(
            cloud, "CGRP-CP-0003-manual", yaml.safe_load(_manifest("CGRP-CP-0003", "CP-0003"))
        )
        yield Campaign(cloud, first, second, wrong, elsewhere)


def _mail(cloud: LocalCloud, run_id: str, event: str = "succeeded") -> dict[str, Any]:
    (mail,) = [
        m
        for m in cloud.mails()
        if m["attributes"].get("run_id") == run_id and m["attributes"].get("event") == event
    ]
    return mail


def test_the_first_run_that_succeeds_becomes_the_campaigns_reference(campaign: Campaign) -> None:
    cloud = campaign.cloud
    run_id = campaign.first["name"]
    assert campaign.first["status"] == "SUCCEEDED", (cloud.run_record(run_id) or {}).get("error")
    record = cloud.run_record(run_id)
    assert record is not None
    assert (record["campaign"], record["compound"]) == (CAMPAIGN, "CP-0001")
    assert record["preset"] == "movies"
    assert "has no reference yet" in record["preset_reason"]
    assert record.get("reference") is None

    from cryopilot.adapters import campaigns, runs

    item = campaigns.get(runs.store(), CAMPAIGN)
    assert item is not None
    assert item["reference_run_id"] == run_id
    ref = item["reference"]
    assert ref["folder_uri"] == f"s3://{cloud.results_bucket}/campaigns/{CAMPAIGN}/reference/"
    assert ref["pixel_size_A"] > 0
    assert ref["resolution_A"] == record["resolution_A"]
    assert ref["particles"] > 0
    # the map, its mask and the selected class averages are kept under the campaign's prefix
    s3 = cloud.client("s3")
    listing = s3.list_objects_v2(Bucket=cloud.results_bucket, Prefix=f"campaigns/{CAMPAIGN}/reference/")
    kept = {o["Key"].rsplit("/", 1)[1] for o in listing.get("Contents", [])}
    assert {ref["map"], ref["mask"], ref["templates"], ref["selected"], "reference.json"} <= kept, kept
    assert ref["box_pix"] > 0
    assert any(d.startswith("select2d: ") for d in ref["decisions"]), ref["decisions"]
    exported = {f["kind"]: f for f in record["results"]["files"]}
    for kind, name in (("map", ref["map"]), ("class_averages", ref["templates"])):
        head = s3.head_object(Bucket=cloud.results_bucket, Key=f"campaigns/{CAMPAIGN}/reference/{name}")
        assert head["ContentLength"] == exported[kind]["size"]

    mail = _mail(cloud, run_id)
    assert "(CP-0001)" in mail["subject"]
    assert f"Compound: CP-0001 (campaign {CAMPAIGN})" in mail["message"]


def test_a_later_run_repeats_from_the_campaigns_reference(campaign: Campaign) -> None:
    cloud = campaign.cloud
    first, run_id = campaign.first["name"], campaign.second["name"]
    assert campaign.second["status"] == "SUCCEEDED", (cloud.run_record(run_id) or {}).get("error")
    record = cloud.run_record(run_id)
    assert record is not None
    source = record["reference"]["source"]
    assert (source["kind"], source["run_id"]) == ("campaign", first)
    inputs = record["reference"]["inputs"]
    assert inputs["map_path"] == f"/fsx/reference/{source['map']}"
    assert inputs["pixel_size_A"] == source["pixel_size_A"]
    assert record["reference"]["association_uri"] == source["folder_uri"]
    assert record["preset"] == "repeat"
    assert record["preset_reason"].startswith(
        f"the run has a reference (campaign {CAMPAIGN}'s reference, run {first})"
    )
    # no ab initio (nor blob picking or 2D classification): the reference's files are imported
    job_types = {t for stage in record["stages"].values() for t in stage["job_types"]}
    assert "homo_abinit" not in job_types
    assert {"import_volumes", "import_templates", "template_picker_gpu", "hetero_refine"} <= job_types
    first_types = {t for st in (cloud.run_record(first) or {})["stages"].values() for t in st["job_types"]}
    assert "homo_abinit" in first_types

    # the cluster's FSx links the reference's folder at /fsx/reference
    (create,) = [
        r.body
        for r in cloud.pcluster.requests_for("create_cluster")
        if r.status < 300 and r.body.get("clusterName") == record["cluster_name"]
    ]
    config = yaml.safe_load(create["clusterConfiguration"])
    (fsx,) = [s for s in config["SharedStorage"] if s["StorageType"] == "FsxLustre"]
    dras = {d["Name"]: d for d in fsx["FsxLustreSettings"]["DataRepositoryAssociations"]}
    assert dras["reference"]["DataRepositoryPath"] == source["folder_uri"]
    assert dras["reference"]["FileSystemPath"] == "/reference"
    # and its files appear there (the local stand-in of the head node's FSx mount)
    shown = os.listdir(os.path.join(cloud.fsx_mount(record["cluster_name"]), "reference"))
    assert {source["map"], source["mask"], source["templates"]} <= set(shown), shown

    # its mails name its compound; the "done" mail compares it with the reference and the campaign
    started = _mail(cloud, run_id, "started")
    assert started["subject"].startswith("[cryopilot] CGRP-CP-0002 (CP-0002) started:")
    assert "(preset repeat: the run has a reference" in started["message"]
    mail = _mail(cloud, run_id)
    assert "(CP-0002)" in mail["subject"]
    body = mail["message"]
    assert f"Compared with the reference (run {first}, compound CP-0001): resolution" in body
    assert "Campaign median of 1 other run(s) that succeeded: resolution" in body
    verdict = record["repeat_verdict"]
    assert verdict["reference_resolution_A"] == source["resolution_A"]
    assert verdict["resolution_A"] == record["resolution_A"]
    assert verdict["problems"] == [], verdict  # the right reference: within the thresholds
    report = cloud.client("s3").get_object(Bucket=cloud.results_bucket, Key=f"runs/{run_id}/report/report.md")
    text = report["Body"].read().decode()
    assert "**Compound:** CP-0002" in text
    assert f"**Campaign:** {CAMPAIGN}" in text
    assert "**Preset:** repeat (the run has a reference" in text
    assert "did NOT improve" not in mail["subject"]
    assert "WARNING" not in body


def test_a_wrong_reference_ends_with_a_mail_that_says_the_map_did_not_improve(campaign: Campaign) -> None:
    cloud = campaign.cloud
    run_id = campaign.wrong["name"]
    assert campaign.wrong["status"] == "SUCCEEDED", (cloud.run_record(run_id) or {}).get("error")
    record = cloud.run_record(run_id)
    assert record is not None
    assert record["preset"] == "repeat"
    verdict = record["repeat_verdict"]
    assert verdict["resolution_loss_A"] > 0.5
    mail = _mail(cloud, run_id)
    assert mail["subject"].startswith("[cryopilot] CGRP-CP-0003 (CP-0003) done, map did NOT improve")
    assert "WARNING: the map did not improve:" in mail["message"]
    assert "This run is NOT a success against its reference" in mail["message"]
    # the campaign's reference is still the first run
    from cryopilot.adapters import campaigns, runs

    assert (campaigns.get(runs.store(), CAMPAIGN) or {})["reference_run_id"] == campaign.first["name"]


def test_the_campaign_page_and_the_cli_list_every_run(campaign: Campaign) -> None:
    cloud = campaign.cloud
    s3 = cloud.client("s3")
    page = s3.get_object(Bucket=cloud.results_bucket, Key=f"campaigns/{CAMPAIGN}/campaign.md")["Body"].read()
    text = page.decode()
    assert "CP-0001" in text
    assert "CP-0002" in text
    assert "(reference)" in text
    png = s3.get_object(Bucket=cloud.results_bucket, Key=f"campaigns/{CAMPAIGN}/campaign.png")["Body"].read()
    assert png.startswith(b"\x89PNG")

    shown = ops.campaign_view(cloud.operator_stack(), CAMPAIGN)
    lines = shown.splitlines()
    assert lines[0].startswith(f"campaign {CAMPAIGN}: 3 run(s), 3 succeeded, median resolution")
    rows = [ln for ln in lines if ln.startswith("CP-000")]
    assert [r.split()[0] for r in rows] == ["CP-0001", "CP-0002", "CP-0003"]
    assert "(reference)" in rows[0]
    assert "⚠" in rows[2]
    assert any(ln.startswith("  CP-0003: the map did not improve") for ln in lines)
    for run in (campaign.first["name"], campaign.second["name"]):
        assert f"{run}: map s3://{cloud.results_bucket}/runs/{run}/results/" in shown
    with pytest.raises(ops.OperatorError, match="no campaign NOPE"):
        ops.campaign_view(cloud.operator_stack(), "NOPE")


def test_a_map_solved_elsewhere_is_the_reference_of_a_run_outside_any_campaign(campaign: Campaign) -> None:
    cloud = campaign.cloud
    run_id = campaign.elsewhere["name"]
    assert campaign.elsewhere["status"] == "SUCCEEDED", (cloud.run_record(run_id) or {}).get("error")
    record = cloud.run_record(run_id)
    assert record is not None
    assert record["campaign"] is None
    assert record["preset"] == "repeat"
    source = record["reference"]["source"]
    assert (source["kind"], source["folder_uri"]) == ("map", f"s3://{cloud.input_bucket}/references/CGRP/")
    assert record["reference"]["inputs"]["templates_path"] == f"/fsx/reference/{source['templates']}"
    job_types = {t for stage in record["stages"].values() for t in stage["job_types"]}
    assert "homo_abinit" not in job_types
    mount = cloud.fsx_mount(record["cluster_name"])
    shown = os.listdir(os.path.join(mount, "reference"))
    assert {source["map"], source["mask"], source["templates"]} <= set(shown), shown
    # 1.2 % off the data's pixel size: the map and mask were resampled into the project, and
    # imported at 0.83 Å
    assert source["pixel_size_A"] == 0.84
    cs = cloud.cryosparc_by_cluster[record["cluster_name"]]
    for stage, name in (("import_reference", source["map"]), ("import_decoy", source["mask"])):
        job = cs.job_by_title(run_id, f"cryopilot:{stage}")
        assert job is not None, stage
        assert job.status == "completed", stage
        assert job.params["volume_psize"] == 0.83
        path = job.params["volume_blob_path"]
        assert path.endswith(f"/cryopilot_resampled/{stage}_{name}"), path
        header, _ = mrc.read(os.path.join(mount, path.removeprefix("/fsx/")))
        assert header.xlen / header.nx == pytest.approx(0.83)
    # the class averages at their own pixel size, read from their header: the first run classified
    # particles Fourier-cropped to about half their box, so about twice the map's
    job = cs.job_by_title(run_id, "cryopilot:import_templates")
    assert job is not None
    assert job.params["templates_blob_path"] == f"/fsx/reference/{source['templates']}"
    header, _ = mrc.read(os.path.join(mount, "reference", source["templates"]))
    assert job.params["templates_psize"] == pytest.approx(header.xlen / header.nx, abs=1e-5)
    assert 1.9 * 0.83 < job.params["templates_psize"] < 2.1 * 0.83
    assert record["reference"]["inputs"]["templates_pixel_size_A"] == job.params["templates_psize"]
    # compared with the map (whose resolution and particles it does not know): no false alarm
    assert record["repeat_verdict"]["problems"] == []
    assert "Compared with the reference: resolution" in _mail(cloud, run_id)["message"]
