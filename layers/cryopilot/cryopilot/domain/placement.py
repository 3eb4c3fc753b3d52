"""Which queue each GPU stage runs on: the preset's placement rule, weighed with the estimate.

:func:`place` is cryopilot's rule on a layout (the cheapest queue per stage that keeps the pipeline
within the white paper's time), :func:`compare` sets it beside the white paper's layout, and
:func:`plan` makes a manifest's stages (:func:`cryopilot.domain.presets.expand`) and gives each GPU
stage without a pinned lane the queue its preset's placement picks, with the stage's expected time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cryopilot.core.errors import ManifestError
from cryopilot.core.naming import REPEATED_STAGE, profile_stage_id
from cryopilot.core.queues import GPU8_QUEUE, GPU_QUEUES
from cryopilot.core.spot import on_demand_queue, spot_queue
from cryopilot.domain import spot_policy
from cryopilot.domain.catalogue import PROFILE_FOR_PRESET, Catalogue
from cryopilot.domain.estimate import (
    HEAD_QUEUE,
    Estimate,
    Layout,
    Plan,
    estimate,
    plan_for_profile,
    plan_from_stages,
)
from cryopilot.domain.manifest import Manifest
from cryopilot.domain.presets import PlacementDef, Preset, expand, load_preset
from cryopilot.domain.reference import ReferenceInputs
from cryopilot.protocol.stage import PlannedStage

__all__ = ["compare", "lane_nodes", "place", "place_stages", "plan"]


def place(
    profile_or_plan: str | Plan,
    layout: Layout,
    catalogue: Catalogue | None = None,
    *,
    tolerance_percent: float = 0.0,
    **kwargs: Any,
) -> Estimate:
    """cryopilot's placement: ``layout``'s queues with the run's time budget set to the plan's
    pipeline time on the white paper's layout (every stage on one reference instance held for the
    run) plus ``tolerance_percent``. The estimate's rows say which queue each stage gets.

    ``catalogue`` defaults to the shipped one; ``kwargs`` go to :func:`estimate` (region,
    create/delete/launch/idle durations).
    """
    cat = catalogue if catalogue is not None else Catalogue.load()
    plan = plan_for_profile(profile_or_plan) if isinstance(profile_or_plan, str) else profile_or_plan
    reference = estimate(plan, Layout.whitepaper(plan.reference_instance_type), cat, **kwargs)
    budget = reference.run_seconds * (1.0 + tolerance_percent / 100.0)
    return estimate(plan, layout.model_copy(update={"time_budget_seconds": budget}), cat, **kwargs)


def compare(
    profile: str, catalogue: Catalogue | None = None, *, preset: str | None = None, **kwargs: Any
) -> tuple[Estimate, Estimate]:
    """(white-paper layout, cryopilot layout) estimates of a Table 1 profile, the second placed
    by :func:`place` on the default cluster's queues.

    ``preset``: another preset on the profile's dataset (``repeat``), timed as
    :func:`~cryopilot.domain.estimate.plan_for_profile` says. ``kwargs`` go to :func:`estimate`
    (region, create/delete/launch/idle durations).
    """
    cat = catalogue if catalogue is not None else Catalogue.load()
    the_plan = plan_for_profile(profile, preset)
    return (
        estimate(the_plan, Layout.whitepaper(), cat, **kwargs),
        place(the_plan, Layout.cryopilot(), cat, **kwargs),
    )


def plan(
    manifest: Manifest,
    *,
    data_dir: str,
    queue_types: dict[str, str] | None = None,
    gpu8_fallback_types: Sequence[str] = (),
    catalogue: Catalogue | None = None,
    reference: ReferenceInputs | None = None,
) -> list[PlannedStage]:
    """The manifest's stages (:func:`cryopilot.domain.presets.expand`), placed (:func:`place_stages`).

    ``reference``: the campaign reference of a repeat run (the preset's ``${reference.<field>}``
    values), as :func:`~cryopilot.domain.presets.expand` takes it.

    ``queue_types`` (queue → instance type; default: the cluster's defaults) and ``catalogue``
    (prices and speeds; default: the shipped one) are what the placement weighs;
    ``gpu8_fallback_types`` (the capacity fallback's types) may run gpu8's jobs too.
    """
    preset = load_preset(manifest.preset_name)
    cat = catalogue if catalogue is not None else Catalogue.load()
    stages = expand(manifest, data_dir=data_dir, reference=reference)
    placed = place_stages(stages, preset, manifest, queue_types, cat)
    check_gpus_fit_lanes(placed, manifest, lane_nodes(queue_types, gpu8_fallback_types, cat))
    if manifest.pipeline.capacity == "spot-where-safe":
        safe = set(spot_policy.safe_stages(placed))
        placed = [
            s.model_copy(update={"lane": spot_queue(s.lane)}) if s.id in safe and s.lane else s
            for s in placed
        ]
    return placed


#: The cryoSPARC parameter that says how many GPUs a job uses.
GPU_PARAM = "compute_num_gpus"


def lane_nodes(
    queue_types: dict[str, str] | None,
    gpu8_fallback_types: Sequence[str] = (),
    catalogue: Catalogue | None = None,
) -> dict[str, tuple[str, int]]:
    """The smallest node a job of each GPU queue may get: (instance type, GPUs per node).

    A queue runs its configured type (``queue_types``, else the cluster's default); gpu8 may also
    run any of ``gpu8_fallback_types``, which the capacity fallback picks when its type has no
    capacity. GPUs come from the catalogue, as the cluster's lanes do (``clusterconfig.queue_gpus``).
    """
    cat = catalogue if catalogue is not None else Catalogue.load()
    defaults = Layout.cryopilot().queues
    nodes: dict[str, tuple[str, int]] = {}
    for queue in GPU_QUEUES:
        types = [(queue_types or {}).get(queue) or defaults[queue]]
        if queue == GPU8_QUEUE:
            types += [t for t in gpu8_fallback_types if t not in types]
        sizes = [(t, cat.queue_gpus(queue, t)) for t in types]
        nodes[queue] = min(sizes, key=lambda size: size[1])
    return nodes


def check_gpus_fit_lanes(
    stages: list[PlannedStage], manifest: Manifest, nodes: dict[str, tuple[str, int]]
) -> None:
    """A stage's ``compute_num_gpus`` must not exceed the GPUs per node of the lane it runs on (a
    cryoSPARC job runs on one node; ``nodes`` from :func:`lane_nodes`): :class:`ManifestError`
    naming the override that sets it, the lane, its instance type and GPUs per node."""
    overrides = manifest.pipeline.overrides
    for stage in stages:
        gpus = stage.params.get(GPU_PARAM)
        node = nodes.get(on_demand_queue(stage.lane or ""))
        if not isinstance(gpus, int) or node is None or gpus <= node[1]:
            continue
        instance_type, per_node = node
        base = profile_stage_id(stage.id)
        key = next(
            (k for k in (stage.id, base, REPEATED_STAGE) if GPU_PARAM in overrides.get(k, {})),
            None,
        )
        where = f"pipeline.overrides.{key}.{GPU_PARAM}" if key else f"preset {manifest.preset_name}"
        raise ManifestError(
            f"{where}: {gpus} GPUs, but stage {stage.id} runs on lane {stage.lane}"
            f" ({instance_type}, {per_node} GPUs per node)"
        )


def place_stages(
    planned: list[PlannedStage],
    preset: Preset,
    manifest: Manifest,
    queue_types: dict[str, str] | None,
    catalogue: Catalogue | None = None,
) -> list[PlannedStage]:
    """Give every GPU stage without a pinned lane the queue the preset's placement picks, and every
    stage its expected time (launch wait included)."""
    unplaced = [s for s in planned if s.gpus > 0 and s.lane is None]
    if not unplaced:
        return planned
    cat = catalogue if catalogue is not None else Catalogue.load()
    lanes: dict[str, str]
    if manifest.pipeline.layout == "whitepaper":
        lanes = {s.id: GPU8_QUEUE for s in unplaced}
        est = estimate(
            plan_from_stages(planned, PROFILE_FOR_PRESET.get(preset.name, "cgrp")),
            Layout.whitepaper(),
            cat,
        )
    else:
        if preset.placement is None:
            raise ManifestError(f"preset {preset.name}: GPU stages without a lane and no placement")
        est = _placement_estimate(planned, preset.name, preset.placement, queue_types, cat)
        lanes = {r.stage: r.queue for r in est.rows if r.queue != HEAD_QUEUE}
    expected = {r.stage: round(r.wait_seconds + r.wall_seconds) for r in est.rows}
    return [
        s.model_copy(update={"lane": lanes.get(s.id, s.lane), "expected_seconds": expected.get(s.id)})
        for s in planned
    ]


def _placement_estimate(
    planned: list[PlannedStage],
    preset_name: str,
    rule: PlacementDef,
    queue_types: dict[str, str] | None,
    catalogue: Catalogue,
) -> Estimate:
    """The preset's placement ``rule`` applied to ``planned``."""
    types = dict(queue_types or {})
    defaults = Layout.cryopilot().queues
    queues = {q: types.get(q) or defaults[q] for q in rule.queues if q in GPU_QUEUES}
    pins = {profile_stage_id(s.id): (s.lane,) for s in planned if s.lane is not None}
    layout = Layout(
        name="cryopilot",
        description="the preset's placement",
        queues=queues,
        by_stage=pins,
    )
    profile = PROFILE_FOR_PRESET.get(preset_name, "cgrp")
    return place(
        plan_from_stages(planned, profile), layout, catalogue, tolerance_percent=rule.tolerance_percent
    )
