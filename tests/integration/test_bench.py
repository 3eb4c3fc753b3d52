"""`make bench` on the smallest profile: both layouts through the real state machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryopilot.domain.billing import NODE_LIFETIMES
from cryopilot.domain.catalogue import Catalogue
from cryopilot_sim import bench

pytestmark = pytest.mark.xdist_group("bench")

REQUIRED = {
    "time_to_structure_h",
    "gpu_hours_paid",
    "gpu_hours_busy",
    "gpu_utilization",
    "idle_gpu_hours",
    "cost_usd",
    "max_gap_s",
    "mean_gap_s",
    "delete_lag_s",
    "transitions",
    "lambda_invocations",
}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "results.json"
    assert bench.main(["--profiles", "spike", "--out", str(out)]) == 0
    return json.loads(Path(out).read_text())


def test_results_file_has_every_figure_per_profile_and_layout(results: dict) -> None:
    assert set(results["results"]) == {"spike/whitepaper", "spike/cryopilot"}
    for r in results["results"].values():
        assert set(r) >= REQUIRED, REQUIRED - set(r)
        assert r["status"] == "SUCCEEDED"
        assert r["transitions"] > 0
        assert r["lambda_invocations"] > 0
        assert r["gpu_hours_paid"] == pytest.approx(sum(n["hours"] * n["gpus"] for n in r["nodes"]))
        assert r["gpu_utilization"] == pytest.approx(r["gpu_hours_busy"] / r["gpu_hours_paid"])
        assert r["idle_gpu_hours"] == pytest.approx(r["gpu_hours_paid"] - r["gpu_hours_busy"])
        assert 0 <= r["delete_lag_s"] <= 60
        assert r["max_gap_s"] >= r["mean_gap_s"] >= 0
    assert {t["check"].split(":")[0] for t in results["targets"]} >= {"spike", "spike/cryopilot"}


def test_whitepaper_layout_holds_one_p4d_for_the_run(results: dict) -> None:
    wp = results["results"]["spike/whitepaper"]
    assert wp["queues"] == ["gpu8"]
    assert [(n["instance_type"], n["static"]) for n in wp["nodes"]] == [("p4d.24xlarge", True)]
    # a node held for the run is paid while the master-only stages and the polls go on
    assert wp["gpu_utilization"] < 0.5
    # the Table 1 stages' time is reproduced up to the node's launch and the polls' reaction time
    table1_h = 341 / 60
    assert wp["table1_stages_h"] == pytest.approx(table1_h, rel=0.03)


def test_cryopilot_layout_uses_the_placed_queues_and_costs_less(results: dict) -> None:
    wp, cp = results["results"]["spike/whitepaper"], results["results"]["spike/cryopilot"]
    assert set(cp["queues"]) == {"gpu8", "gpu4", "gpu1"}
    assert not any(n["static"] for n in cp["nodes"])
    cat = Catalogue.load()
    for node in cp["nodes"]:
        assert node["cost_usd"] == pytest.approx(node["hours"] * cat.price(node["instance_type"]))
    assert cp["cost_usd"] < wp["cost_usd"]
    assert cp["gpu_utilization"] > wp["gpu_utilization"]


def test_the_run_records_bill_of_the_nodes_that_ran_matches_the_simulated_bill(results: dict) -> None:
    """The controller lists the cluster's nodes (describeClusterInstances) and bills each from its
    launch to its end; the simulated Slurm nodes are billed from their own launches and idle
    timeouts. They agree within 1 %, and the bench checks it."""
    for key, r in results["results"].items():
        assert r["record_cost_basis"] == NODE_LIFETIMES, key
        assert r["record_nodes_listed"] == len(r["nodes"]), key
        assert r["record_cost_usd"] == pytest.approx(r["compute_cost_usd"], rel=0.01), key
        assert r["record_gpu_hours_paid"] == pytest.approx(r["gpu_hours_paid"], rel=0.01), key
        # the stages' own run time leaves launch and idle out
        assert r["record_stage_cost_usd"] < r["record_cost_usd"], key
    agreement = [t for t in results["targets"] if "node bill within 1 %" in t["check"]]
    assert len(agreement) == 2, agreement
    assert all(t["met"] for t in agreement), agreement


def test_the_fsx_file_system_is_sized_used_and_paid_for(results: dict) -> None:
    """Validate sizes FSx from the dataset's listing (the spike's 2,500 micrographs, 160 GB); the
    stand-in's jobs write their bytes onto it; its cost is part of the run's."""
    cat = Catalogue.load()
    for key, r in results["results"].items():
        assert r["fsx_capacity_gib"] == 1200, key
        assert r["fsx_throughput_mb_per_tib"] == 1000, key
        # the lazily loaded micrographs and both particle stacks, never more than the file system
        assert 160e9 / 1024**3 < r["fsx_peak_gib"] <= r["fsx_capacity_gib"], key
        rate = cat.fsx_price("PERSISTENT_2", 1000).usd_per_gb_month
        assert r["fsx_usd_per_gb_month"] == rate
        hours = r["head_node_cost_usd"] / cat.price("m6i.2xlarge")  # the cluster's life
        assert r["fsx_cost_usd"] == pytest.approx(1200 * rate * hours / 730), key
        parts = r["compute_cost_usd"] + r["head_node_cost_usd"] + r["fsx_cost_usd"]
        assert r["cost_usd"] == pytest.approx(parts), key
        # the run record's own figure: from the cluster's request to the report, plus the
        # catalogue's deletion time; the bench's cluster life ends at the run's finish (the done
        # mail), before the deletion, so the record's is the larger by about those 10 minutes
        record = r["record_storage_cost_usd"]
        assert r["fsx_cost_usd"] < record < r["fsx_cost_usd"] * 1.03, key


def test_the_spot_layout_is_the_placement_with_spot_where_safe_and_its_ratio_a_range() -> None:
    import yaml

    _folder, text, _files = bench._manifest("cgrp", "spot-where-safe")
    pipeline = yaml.safe_load(text)["pipeline"]
    assert (pipeline["layout"], pipeline["capacity"]) == ("cryopilot", "spot-where-safe")
    results = {
        "cgrp/whitepaper": {"cost_usd": 200.0},
        "cgrp/cryopilot": {"cost_usd": 70.0},
        "cgrp/spot-where-safe": {"cost_usd_range": [40.0, 70.0], "spot_stages": ["ctf", "motion"]},
    }
    (line,) = bench._spot_ratios(results)
    assert "cgrp: spot-where-safe costs 20.0%–35.0% of the white paper's layout" in line
    assert "stages on Spot: ctf, motion" in line
    assert line.endswith("cryopilot (On-Demand) 35.0%")
