"""Spot where it is safe: which stages of a plan may run on Spot, and what that may save.

The rule (the manifest's ``pipeline.capacity: spot-where-safe``): a GPU stage is **safe** for Spot when

* the plan expects it to take at most :data:`SAFE_MAX_SECONDS` (node wait and wall time: the
  placement's ``expected_seconds``), so an interruption loses at most that much work and its one
  re-run on On-Demand at most doubles a short stage; and
* it is not the final refinement (the plan's last GPU stage): the run's result, and in the white
  paper's datasets its longest stage.

Every other stage runs On-Demand. A stage lost to a Spot interruption is resubmitted on On-Demand,
once. Spot prices move, so what Spot saves is a range: the catalogue's Spot share of the On-Demand
price (:class:`cryopilot.domain.catalogue.SpotShare`, with its source).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

from cryopilot.core.naming import profile_stage_id
from cryopilot.domain.catalogue import SpotShare
from cryopilot.domain.estimate import Estimate
from cryopilot.protocol.stage import PlannedStage

Capacity = Literal["on-demand", "spot-where-safe"]

#: Longest expected stage (seconds) the policy puts on Spot.
SAFE_MAX_SECONDS = 4 * 3600


def safe_stages(plan: Sequence[PlannedStage]) -> list[str]:
    """Ids of the stages of ``plan`` that may run on Spot, in plan order (see the module's rule)."""
    gpu = [s for s in plan if s.lane is not None and s.gpus > 0]
    final = gpu[-1].id if gpu else None
    return [
        s.id
        for s in gpu
        if s.id != final and s.expected_seconds is not None and s.expected_seconds <= SAFE_MAX_SECONDS
    ]


def savings_range(on_demand_usd: Mapping[str, float], share: SpotShare) -> tuple[float, float]:
    """(least, most) USD that running the stages of ``on_demand_usd`` (stage → its On-Demand cost)
    on Spot saves: their cost × (1 − the dearest share) to × (1 − the cheapest)."""
    total = sum(on_demand_usd.values())
    return total * (1 - share.high), total * (1 - share.low)


def estimate_lines(plan: Sequence[PlannedStage], placed: Estimate, share: SpotShare) -> list[str]:
    """What ``cryopilot estimate`` adds for ``capacity: spot-where-safe``: the stages on Spot and
    the range of the run's cost (``placed``: the cryopilot layout's estimate of the plan)."""
    ids = safe_stages(plan)
    safe = set(ids) | {profile_stage_id(s) for s in ids}  # the estimate's rows: either id
    costs = {r.stage: r.cost_usd for r in placed.rows if r.stage in safe}
    if not costs:
        return ["capacity: spot-where-safe: no stage is safe for Spot (all On-Demand)"]
    least, most = savings_range(costs, share)
    return [
        f"capacity: spot-where-safe: on Spot first: {', '.join(sorted(costs))}"
        f" (the rule: expected under {SAFE_MAX_SECONDS // 3600} h, never the final refinement)",
        f"  their run time costs ${sum(costs.values()):,.2f} On-Demand;"
        f" Spot at {share.low:.0%}–{share.high:.0%} of On-Demand saves ${least:,.2f}–${most:,.2f}:"
        f" the cryopilot layout costs ${placed.cost_usd - most:,.2f}–${placed.cost_usd - least:,.2f}",
        f"  Spot prices: {share.source} ({'verified' if share.verified else 'NOT verified'});"
        " an interrupted stage runs again On-Demand (not in this range)",
    ]
