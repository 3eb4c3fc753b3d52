"""The Spot policy: which stages are safe for Spot, and the range Spot may save."""

from __future__ import annotations

import pytest
from cryopilot.domain.catalogue import Catalogue
from cryopilot.domain.spot_policy import SAFE_MAX_SECONDS, safe_stages, savings_range
from cryopilot.protocol.stage import PlannedStage


def _stage(stage_id: str, lane: str | None, gpus: int, expected: int | None) -> PlannedStage:
    return PlannedStage(
        id=stage_id,
        title=stage_id,
        job_type="x",
        lane=lane,  # type: ignore[arg-type]
        gpus=gpus,
        params={},
        inputs=[],
        time_limit_seconds=86400,
        expected_seconds=expected,
    )


def test_short_gpu_stages_are_safe_but_never_the_final_refinement() -> None:
    plan = [
        _stage("import", None, 0, 600),
        _stage("motion", "gpu8", 8, 2 * 3600),
        _stage("class2d", "gpu8", 4, SAFE_MAX_SECONDS),
        _stage("select2d", None, 0, 60),
        _stage("abinit", "gpu1", 1, SAFE_MAX_SECONDS + 1),  # too long
        _stage("unknown", "gpu1", 1, None),  # no estimate: not safe
        _stage("nurefine", "gpu1", 1, 600),  # short, but the final refinement
    ]
    assert safe_stages(plan) == ["motion", "class2d"]
    assert safe_stages([]) == []


def test_the_catalogue_gives_spot_as_a_sourced_range_of_the_on_demand_price() -> None:
    share = Catalogue.load().spot
    assert share is not None
    assert share.source.startswith("https://aws.amazon.com/ec2/spot/")
    assert 0 < share.low < share.high <= 1
    low, high = share.usd_per_hour(20.0)
    assert (low, high) == pytest.approx((20.0 * share.low, 20.0 * share.high))
    least, most = savings_range({"motion": 100.0, "class2d": 50.0}, share)
    assert least == pytest.approx(150.0 * (1 - share.high))
    assert most == pytest.approx(150.0 * (1 - share.low))
    assert least <= most
