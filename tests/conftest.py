"""Shared fixtures. Every test runs with fake AWS credentials and no route to a real endpoint."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
EVENTS = ROOT / "events"

os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "SAM_CLI_TELEMETRY": "0",
        # Every local stack enforces IAM: each function runs with its own role's policies, as SAM
        # generates them (cryopilot_sim.iam); a missing permission fails the test that needs it.
        "CRYOPILOT_IAM": "enforce",
    }
)


def make_cluster_request(run_id: str = "cgrp-20260101T000000-1a2b", **overrides: Any) -> Any:
    """A ``ClusterRequest`` for one run of the ``cgrp`` dataset; ``overrides`` replace its fields."""
    from cryopilot.core.naming import cluster_name_for
    from cryopilot.domain.clusterconfig.params import ClusterRequest

    values: dict[str, Any] = {
        "run_id": run_id,
        "dataset": "cgrp",
        "cluster_name": cluster_name_for(run_id),
        "data_s3_uri": "s3://cryopilot-input-123456789012/datasets/cgrp/",
        "results_s3_uri": f"s3://cryopilot-results-123456789012/runs/{run_id}/",
        "stack_name": "cryopilot-prod",
    }
    values.update(overrides)
    return ClusterRequest(**values)


def cgrp_reference() -> Any:
    """A CGRP campaign's reference as Validate gives it to the plan: the first run's files on FSx."""
    from cryopilot.domain.reference import ReferenceInputs

    return ReferenceInputs(
        run_id="cgrp-first",
        map_path="/fsx/reference/cgrp-first/map.mrc",
        mask_path="/fsx/reference/cgrp-first/mask.mrc",
        templates_path="/fsx/reference/cgrp-first/templates_selected.mrcs",
        pixel_size_A=0.83,
        templates_pixel_size_A=round(0.83 * 218 / 110, 6),  # 2D classes of particles cropped to 110
        box_pix=218,
        resolution_A=2.8,
    )


@pytest.fixture
def manifest_text() -> str:
    return (EVENTS / "manifests" / "cgrp.yaml").read_text()


@pytest.fixture(autouse=True)
def _fresh_settings() -> Iterator[None]:
    from cryopilot.adapters import aws
    from cryopilot.adapters.settings import get_settings

    get_settings.cache_clear()
    aws.reset()
    yield
    get_settings.cache_clear()
    aws.reset()


#: Modules each of whose tests starts a local stack (or runs the benchmark): seconds per test. They
#: are marked ``slow`` here, with the modules that say so themselves (``pytestmark``); the fast tier
#: (``make test-fast``: ``-m "not slow"``) leaves them out.
SLOW_MODULES = {"test_bench.py", "test_bad_input.py", "test_start_run.py"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Refuse to run a grouped test outside its group.

    Tests marked `xdist_group` share one expensive resource (a venv, a virtual clock) and must
    run in one worker. pytest-xdist honours the mark by renaming the test; a pytest release that
    changes how node ids are stored silently undoes that, and the tests then race each other.
    """
    groups = [mark.args[0] for mark in item.iter_markers("xdist_group") if mark.args]
    grouped = groups and hasattr(item.config, "workerinput") and item.config.getvalue("loadgroup")
    if grouped and not item.nodeid.endswith("@" + "_".join(sorted(groups))):
        pytest.fail(
            f"xdist_group {groups} not honoured for {item.nodeid}: the pinned pytest and "
            "pytest-xdist disagree on how node ids are stored",
            pytrace=False,
        )
