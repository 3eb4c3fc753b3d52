"""A manifest's limits (``limits.max_hours``, ``limits.max_cost_usd``), checked at Validate and
before and during every stage.

Pure arithmetic on what the run has spent and the estimate of what is left, priced by
:mod:`cryopilot.domain.billing` like every other cost figure: the stages left are Table 1's times
of the preset's white-paper dataset on the queues' nodes (whole nodes, the catalogue's GPU speed
factors), their run time only (no launch, no idle), as in the estimate (``Catalogue.stage_seconds``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cryopilot.core.errors import RunLimitError
from cryopilot.core.naming import REPEATED_STAGE, profile_stage_id
from cryopilot.domain import billing
from cryopilot.domain.catalogue import (
    PROFILE_FOR_PRESET,
    REFERENCE_INSTANCE_TYPE,
    Catalogue,
    CostingError,
    load_profiles,
)
from cryopilot.protocol.stage import PlannedStage


def remaining_cost(
    stages_left: Sequence[PlannedStage],
    *,
    preset: str | None,
    nodes: Mapping[str, billing.NodeType],
    catalogue: Catalogue,
) -> float:
    """Estimated cost of ``stages_left`` on ``nodes`` (queue → node; a queue without a node, such
    as the head node's stages, costs nothing here, and neither does a stage without GPUs: the
    import's few minutes on the node the next stage uses, left out as the estimate leaves them)."""
    profile = load_profiles().get(PROFILE_FOR_PRESET.get(str(preset), "cgrp"))
    if profile is None:
        return 0.0
    total = 0.0
    for stage in stages_left:
        node = nodes.get(stage.lane) if stage.lane and stage.gpus else None
        kind = profile_stage_id(stage.id)
        if node is None or kind not in profile.minutes:
            continue
        minutes = profile.minutes[kind] / (profile.hetero_rounds if kind == REPEATED_STAGE else 1)
        try:
            seconds = catalogue.stage_seconds(kind, minutes, node.instance_type, REFERENCE_INSTANCE_TYPE)
        except CostingError:
            continue
        job = billing.Job(went=0.0, start=0.0, end=seconds, nodes=node.nodes_for(int(stage.gpus or 1)))
        total += billing.run_time_cost(node, job)
    return total


def check_hours(limits: Mapping[str, Any], started_epoch: float | None, now: float) -> None:
    """:class:`RunLimitError` once the run has run longer than ``limits.max_hours``."""
    max_hours = limits.get("max_hours")
    if max_hours and started_epoch:
        hours = (now - float(started_epoch)) / 3600
        if hours > float(max_hours):
            raise RunLimitError(
                f"the run has run {hours:.1f} h, past its limit of {max_hours:g} h (limits.max_hours)"
            )


def check_cost(
    limits: Mapping[str, Any],
    costs_so_far: Mapping[str, float],
    stages_left: Sequence[PlannedStage],
    *,
    preset: str | None,
    nodes: Mapping[str, billing.NodeType],
    catalogue: Catalogue,
) -> None:
    """:class:`RunLimitError` when the cost so far plus the estimate for the stages left would
    exceed ``limits.max_cost_usd``."""
    max_cost = limits.get("max_cost_usd")
    if not max_cost:
        return
    so_far = sum(float(v) for v in costs_so_far.values())
    left = remaining_cost(stages_left, preset=preset, nodes=nodes, catalogue=catalogue)
    if so_far + left > float(max_cost):
        raise RunLimitError(
            f"the estimated cost ${so_far + left:,.0f} (${so_far:,.0f} so far, ${left:,.0f} for the "
            f"{len(stages_left)} stages left) would exceed limits.max_cost_usd ${float(max_cost):,.0f}"
        )
