"""The campaign rules: the reference's pixel size, the preset a campaign run takes, a repeat run's
verdict against its reference, and how its "done" mail says it."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import yaml
from cryopilot.adapters import campaigns
from cryopilot.adapters.runs import RunStore
from cryopilot.core.errors import CampaignReferenceError
from cryopilot.domain import mails
from cryopilot.domain.campaign import (
    PIXEL_SIZE_TOLERANCE,
    ReferenceSource,
    check_pixel_size,
    check_resample_box,
    choose_preset,
    judge_repeat,
    mrc_box,
    mrc_pixel_size,
)
from cryopilot.domain.manifest import manifest_from_dict
from cryopilot.domain.record import RunRecord
from cryopilot.domain.reference import MAX_RESAMPLE_BOX, RepeatThresholds
from moto import mock_aws

from tests.conftest import EVENTS

SPIKE = yaml.safe_load((EVENTS / "manifests" / "spike.yaml").read_text())
REF = ReferenceSource(
    kind="campaign",
    folder_uri="s3://results/campaigns/RBD/reference/",
    map="J9_map.mrc",
    pixel_size_A=0.83,
    resolution_A=2.8,
    particles=400_000,
    run_id="RBD-CP-1-abc",
    campaign="RBD",
    compound="CP-1",
)


@pytest.mark.parametrize("data_pixel", [0.83, 0.83 * (1 + PIXEL_SIZE_TOLERANCE), 0.83 * 0.985])
def test_a_pixel_size_within_the_tolerance_is_accepted(data_pixel: float) -> None:
    check_pixel_size(REF, data_pixel, where="campaign RBD")


def test_a_pixel_size_beyond_the_tolerance_is_refused_in_one_line() -> None:
    with pytest.raises(CampaignReferenceError) as err:
        check_pixel_size(REF, 0.83 * 1.03, where="campaign RBD")
    assert str(err.value).startswith(
        "campaign RBD: the reference's pixel size 0.83 Å differs from the data's"
    )
    assert "\n" not in str(err.value)


def test_a_campaign_run_with_a_reference_and_no_preset_takes_repeat() -> None:
    movies = manifest_from_dict({**SPIKE, "campaign": "RBD", "input": {"kind": "movies", "glob": "m/*.tif"}})
    assert choose_preset(movies, REF)[0] == "repeat"
    assert choose_preset(movies, None)[0] == "movies"
    manifest = manifest_from_dict({**SPIKE, "campaign": "RBD"})
    name, why = choose_preset(manifest, REF)  # micrographs: the repeat preset starts from movies
    assert name == "micrographs"
    assert "the repeat preset starts from raw movies" in why
    forced = manifest_from_dict({**SPIKE, "campaign": "RBD", "pipeline": {"preset": "micrographs"}})
    name, why = choose_preset(forced, REF)
    assert name == "micrographs"
    assert "the manifest asks for this preset" in why


def test_a_repeat_run_worse_than_its_reference_is_flagged() -> None:
    thresholds = RepeatThresholds()
    assert judge_repeat(3.2, 390_000, REF, thresholds).ok  # within 0.5 Å, 97 % of the particles
    worse = judge_repeat(4.1, 100_000, REF, thresholds)
    assert [p.split(":")[0] for p in worse.problems] == ["the map did not improve", "low particle yield"]
    assert worse.resolution_loss_A == pytest.approx(1.3)
    assert worse.particle_yield == 0.25
    assert not judge_repeat(None, None, REF, thresholds).ok


def test_the_done_mail_of_a_worse_repeat_run_says_so_plainly() -> None:
    verdict = judge_repeat(7.5, 380_000, REF, RepeatThresholds())
    run = RunRecord(
        run_id="RBD-CP-2-def",
        dataset="RBD-CP-2",
        compound="CP-2",
        campaign="RBD",
        status="SUCCEEDED",
        resolution_A=7.5,
        started_epoch=0.0,
        export_finished_at=3600.0,
        repeat_verdict=verdict.model_dump(mode="json"),
    )
    context = mails.CampaignContext(
        reference_run=REF.run_id,
        reference_compound="CP-1",
        others=1,
        median_resolution_A=2.8,
        median_time_to_structure_seconds=7200.0,
    )
    mail = mails.succeeded(
        run, [], region="us-east-1", results_bucket="results", now=3600.0, campaign=context
    )
    assert mail.subject.startswith("[cryopilot] RBD-CP-2 (CP-2) done, map did NOT improve: 7.50 Å")
    assert (
        "Compared with the reference (run RBD-CP-1-abc, compound CP-1): resolution 7.50 Å against 2.80 Å"
        in mail.body
    )
    assert "WARNING: the map did not improve: 7.50 Å is 4.70 Å worse than the reference's 2.80 Å" in mail.body
    assert "This run is NOT a success against its reference" in mail.body
    assert (
        "Campaign median of 1 other run(s) that succeeded: resolution 2.80 Å (this run +4.70 Å)" in mail.body
    )


# ------------------------------------------------------------------ the reference's promotion
@pytest.fixture
def aws() -> Iterator[tuple[RunStore, Any]]:
    with mock_aws():
        ddb = boto3.resource("dynamodb", region_name="us-east-1")
        table = ddb.create_table(
            TableName="campaign-test",
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
        )
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="results")
        yield RunStore(table), s3


def _finished(run_id: str, s3: Any) -> dict[str, Any]:
    files = []
    for kind, name in (("map", "J9_map.mrc"), ("mask", "J9_mask.mrc"), ("class_averages", "J5_avg.mrcs")):
        key = f"runs/{run_id}/results/{name}"
        s3.put_object(Bucket="results", Key=key, Body=kind.encode())
        files.append({"kind": kind, "name": name, "key": key, "size": len(kind)})
    return {
        "run_id": run_id,
        "campaign": "RBD",
        "compound": "CP-1",
        "results": {"files": files},
        "map_pixel_size_A": 0.83,
        "map_box_pix": 400,
        "resolution_A": 2.8,
        "stages": {"nurefine": {"num_particles": 1000, "completed_at": 5.0}},
        "decisions": [{"stage_id": "hetero1", "summary": "kept class 0"}],
    }


def _kept(s3: Any) -> set[str]:
    listing = s3.list_objects_v2(Bucket="results", Prefix="campaigns/RBD/reference/")
    return {o["Key"].rsplit("/", 1)[1] for o in listing.get("Contents", [])}


def test_the_first_run_is_promoted_once_and_a_retry_copies_again(aws: tuple[RunStore, Any]) -> None:
    store, s3 = aws
    first = campaigns.promote(store, s3, "results", _finished("RBD-1", s3))
    assert first is not None
    assert (first.run_id, first.particles, first.box_pix) == ("RBD-1", 1000, 400)
    assert first.decisions == ["hetero1: kept class 0"]
    assert _kept(s3) == {"J9_map.mrc", "J9_mask.mrc", "J5_avg.mrcs", "reference.json"}
    # a retried report step of the same run (its copy cut short) copies again
    s3.delete_object(Bucket="results", Key="campaigns/RBD/reference/J9_map.mrc")
    assert campaigns.promote(store, s3, "results", _finished("RBD-1", s3)) is not None
    assert "J9_map.mrc" in _kept(s3)
    # another run of the campaign does not replace the reference
    assert campaigns.promote(store, s3, "results", _finished("RBD-2", s3)) is None
    assert campaigns.reference_of(store, "RBD").run_id == "RBD-1"  # type: ignore[union-attr]


def test_a_run_worse_than_the_reference_its_manifest_named_never_becomes_the_campaigns(
    aws: tuple[RunStore, Any],
) -> None:
    """The first run of a campaign given a reference by its manifest (``reference: <run id>`` or a
    map solved elsewhere) whose map did worse than it is not the campaign's reference: nothing is
    claimed, nothing copied, and the next run that succeeds without a problem becomes it."""
    store, s3 = aws
    worse = judge_repeat(7.5, 1000, REF, RepeatThresholds())
    assert worse.problems
    run = {**_finished("RBD-1", s3), "repeat_verdict": worse.model_dump(mode="json")}
    assert campaigns.promote(store, s3, "results", run) is None
    assert campaigns.reference_of(store, "RBD") is None
    assert _kept(s3) == set()
    # a run compared with its reference and found no worse is promoted as any other
    fine = judge_repeat(2.9, 390_000, REF, RepeatThresholds())
    run = {**_finished("RBD-2", s3), "repeat_verdict": fine.model_dump(mode="json")}
    assert campaigns.promote(store, s3, "results", run) is not None
    assert campaigns.reference_of(store, "RBD").run_id == "RBD-2"  # type: ignore[union-attr]


def _header(nx: int, ny: int, nz: int, order: str = "<", stamp: bytes = b"\x44\x44\x00\x00") -> bytes:
    header = bytearray(1024)
    struct.pack_into(f"{order}3i", header, 0, nx, ny, nz)
    header[212:216] = stamp
    return bytes(header)


def test_a_maps_box_is_read_from_its_mrc_header() -> None:
    assert mrc_box(_header(400, 400, 400), where="reference.map") == 400
    assert mrc_box(_header(256, 256, 256, ">", b"\x11\x11\x00\x00"), where="reference.map") == 256
    assert mrc_box(_header(64, 64, 64, "<", b"\x00" * 4), where="reference.map") == 64  # no stamp
    with pytest.raises(
        CampaignReferenceError, match="the map is 400 x 400 x 200 pixels; a reference map is a cube"
    ):
        mrc_box(_header(400, 400, 200), where="reference.map")
    with pytest.raises(CampaignReferenceError, match="less than an MRC header"):
        mrc_box(b"MRC?", where="reference.map")


def test_a_map_that_would_be_resampled_must_fit_the_head_nodes_bound() -> None:
    big = REF.model_copy(update={"box_pix": MAX_RESAMPLE_BOX + 2})
    check_resample_box(big, 0.83, where="campaign RBD")  # the data's pixel size: not resampled
    check_resample_box(REF.model_copy(update={"box_pix": MAX_RESAMPLE_BOX}), 0.84, where="campaign RBD")
    with pytest.raises(CampaignReferenceError) as err:
        check_resample_box(big, 0.84, where="campaign RBD")
    assert str(err.value) == (
        "campaign RBD: the map is 514 pixels a side and its pixel size 0.83 Å is 1.2% from the data's"
        " 0.84 Å: it would be resampled, which the head node does for maps of at most 512 pixels;"
        " give the map at the data's pixel size"
    )


def test_the_pixel_size_an_mrc_header_gives() -> None:
    header = bytearray(1024)
    struct.pack_into("<3i", header, 0, 110, 110, 40)
    struct.pack_into("<3i", header, 28, 110, 110, 40)
    struct.pack_into("<f", header, 40, 110 * 1.645)
    assert mrc_pixel_size(bytes(header)) == pytest.approx(1.645)
    big = bytearray(1024)
    struct.pack_into(">3i", big, 28, 110, 110, 40)
    struct.pack_into(">f", big, 40, 110 * 1.645)
    big[212:214] = b"\x11\x11"
    assert mrc_pixel_size(bytes(big)) == pytest.approx(1.645)
    assert mrc_pixel_size(bytes(1024)) is None  # unset
    assert mrc_pixel_size(b"short") is None


def test_the_class_averages_pixel_size_is_read_from_their_header(aws: tuple[RunStore, Any]) -> None:
    """2D classes of Fourier-cropped particles are coarser than the map: their own header says
    so. A header without a pixel size (a stack made elsewhere) is taken at the map's."""
    _, s3 = aws
    header = bytearray(1024)
    struct.pack_into("<3i", header, 0, 110, 110, 12)
    struct.pack_into("<3i", header, 28, 110, 110, 12)
    struct.pack_into("<f", header, 40, 110 * 1.644909)
    s3.put_object(
        Bucket="results", Key="campaigns/RBD/reference/J5_avg.mrcs", Body=bytes(header) + b"\0" * 64
    )
    ref = REF.model_copy(update={"templates": "J5_avg.mrcs"})
    read = campaigns.read_templates_pixel_size(s3, ref, where="campaign RBD")
    assert read.templates_pixel_size_A == pytest.approx(1.644909)
    assert read.inputs().templates_pixel_size_A == read.templates_pixel_size_A
    s3.put_object(Bucket="results", Key="campaigns/RBD/reference/J5_avg.mrcs", Body=bytes(1024))
    assert campaigns.read_templates_pixel_size(s3, ref, where="x").templates_pixel_size_A == 0.83
    assert campaigns.read_templates_pixel_size(s3, REF, where="x") == REF  # no class averages
    s3.delete_object(Bucket="results", Key="campaigns/RBD/reference/J5_avg.mrcs")
    with pytest.raises(CampaignReferenceError, match=r"^campaign RBD: the class averages s3://results/"):
        campaigns.read_templates_pixel_size(s3, ref, where="campaign RBD")
