"""The storage model (``cryopilot.domain.storage``): what a run's FSx file system holds, its size
rounded to what FSx accepts, its throughput tier, the MaxFsxTiB limit and its cost."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from cryopilot.core.errors import StorageLimitError
from cryopilot.domain import billing, storage
from cryopilot.domain.catalogue import Catalogue, CostingError, get_profile
from cryopilot.domain.manifest import manifest_from_dict
from cryopilot.domain.presets import expand

MANIFESTS = Path(__file__).resolve().parents[2] / "events" / "manifests"
GIB = 1024**3


def _manifest(name: str, **extra: object) -> object:
    doc = yaml.safe_load((MANIFESTS / name).read_text())
    doc.update(extra)
    return manifest_from_dict(doc)


@pytest.mark.parametrize(
    ("need", "capacity"),
    [(1, 1200), (1200, 1200), (1201, 2400), (2400, 2400), (2401, 4800), (4234, 4800), (9601, 12000)],
)
def test_capacity_is_a_size_persistent_2_accepts(need: int, capacity: int) -> None:
    assert storage.fsx_capacity_gib(need) == capacity


def test_every_line_of_the_cgrp_dataset() -> None:
    plan = storage.plan_storage(storage.inputs_for_profile(get_profile("cgrp")))
    lines = {x.what: x.bytes for x in plan.lines}
    assert lines == {
        "raw data": 1_600_000_000_000,
        "motion-corrected micrographs": 5600 * 2 * 94_300_000,
        "exposure side files": 5600 * 4_000_000,
        "particle stacks (extraction)": 6_300_000 * 100 * 100 * 4,
        "particle stacks (re-extraction)": 3_150_000 * 200 * 200 * 4,
    }
    assert plan.need_gib == -(-sum(lines.values()) * 5 // 4 // GIB)  # 25 % headroom, rounded up
    assert plan.capacity_gib == 4800
    assert plan.throughput_mb_per_tib == 250
    assert "extraction moves" in plan.throughput_rule


def test_the_manifest_and_its_jobs_drive_the_model() -> None:
    manifest = _manifest("glp1r.yaml")
    stages = expand(manifest, data_dir="/fsx/data/")
    data = storage.DataSize(bytes=10**12, objects=3001, files=3000)
    plan = storage.plan_for_manifest(manifest, stages, data)
    lines = {x.what: x for x in plan.lines}
    assert lines["raw data"].bytes == 10**12
    assert lines["raw data"].basis == "measured under the data prefix"
    assert lines["motion-corrected micrographs"].bytes == 3000 * 2 * 94_300_000
    # the manifest's particles; the first extraction stores the Fourier-cropped box the preset sets
    assert lines["particle stacks (extraction)"].basis == "4,800,000 × 106² px × 4 B"
    # without the hint: the movies preset's white-paper dataset (CGRP, 6.3 M)
    bare = _manifest("glp1r.yaml", storage={})
    plan = storage.plan_for_manifest(bare, expand(bare, data_dir="/fsx/data/"), data)
    assert plan.lines[3].basis == "6,300,000 × 106² px × 4 B"

    hinted = _manifest(
        "glp1r.yaml",
        storage={"expected_particles": 4_800_000, "micrograph_mb": 50, "reextract_fraction": 0.2},
        pipeline={"preset": "movies", "overrides": {"extract": {"output_f16": True}}},
    )
    plan = storage.plan_for_manifest(hinted, expand(hinted, data_dir="/fsx/data/"), data)
    lines = {x.what: x for x in plan.lines}
    assert lines["motion-corrected micrographs"].bytes == 3000 * 2 * 50_000_000
    assert lines["particle stacks (extraction)"].bytes == 4_800_000 * 106**2 * 2  # float16
    assert lines["particle stacks (re-extraction)"].bytes == 960_000 * 210**2 * 4


def test_micrographs_are_not_written_when_the_input_is_micrographs() -> None:
    plan = storage.plan_storage(storage.inputs_for_profile(get_profile("spike")))
    assert "motion-corrected micrographs" not in {x.what for x in plan.lines}
    assert plan.capacity_gib == 1200


def test_the_throughput_rule_picks_the_smallest_tier_that_keeps_up_and_a_stack_may_fix_it() -> None:
    inputs = storage.inputs_for_profile(get_profile("cgrp"))
    slow = storage.plan_storage(replace(inputs, extract_seconds=10 * 3600))
    assert slow.throughput_mb_per_tib == 125
    fast = storage.plan_storage(replace(inputs, extract_seconds=60))
    assert fast.throughput_mb_per_tib == 1000  # the most FSx offers, even if it is not enough
    fixed = storage.plan_storage(inputs, throughput=1000)
    assert (fixed.throughput_mb_per_tib, fixed.throughput_rule) == (
        1000,
        "fixed by the stack (FsxThroughputPerTiB = 1000)",
    )
    with pytest.raises(ValueError, match="one of"):
        storage.plan_storage(inputs, throughput=300)


def test_a_plan_above_max_fsx_tib_is_refused_in_one_line() -> None:
    plan = storage.plan_storage(storage.inputs_for_profile(get_profile("cgrp")))
    storage.check_limit(plan, 4.6875)  # 4800 GiB exactly
    with pytest.raises(StorageLimitError) as caught:
        storage.check_limit(plan, 4)
    assert str(caught.value) == (
        f"storage: the run needs an FSx file system of 4,800 GiB ({plan.need_gib:,} GiB modelled with"
        " headroom), above this stack's MaxFsxTiB of 4 TiB"
    )


def test_fsx_is_priced_per_gb_month_by_tier_from_the_catalogue() -> None:
    cat = Catalogue.load()
    rates = [cat.fsx_price("PERSISTENT_2", t).usd_per_gb_month for t in storage.THROUGHPUT_TIERS]
    assert rates == sorted(rates)  # dearer with every tier
    assert len(set(rates)) == 4
    for t in storage.THROUGHPUT_TIERS:
        assert cat.fsx_price("PERSISTENT_2", t).source.startswith("https://")
    # 1200 GiB for a 730-hour month at 125 MB/s/TiB is the month's rate
    assert billing.storage_cost(1200, 0.145, 730) == pytest.approx(174.0)
    assert billing.storage_cost(4800, 0.21, 36.5) == pytest.approx(4800 * 0.21 / 20)
    with pytest.raises(CostingError, match="no FSx for Lustre price"):
        cat.fsx_price("SCRATCH_2", 125)
