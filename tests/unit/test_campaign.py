"""The campaign rules: the reference's pixel size, the preset a campaign run takes, a repeat run's
verdict against its reference, and how its "done" mail says it."""

from __future__ import annotations

import pytest
import yaml
from cryopilot.core.errors import CampaignReferenceError
from cryopilot.domain import mails
from cryopilot.domain.campaign import (
    PIXEL_SIZE_TOLERANCE,
    ReferenceSource,
    check_pixel_size,
    choose_preset,
    judge_repeat,
)
from cryopilot.domain.manifest import RepeatThresholds, manifest_from_dict
from cryopilot.domain.record import RunRecord

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
